"""The memory picture's x axes carry the layer names, short enough to read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lnn_backend_csk60xx.planner import MemoryPlan
from lnn_backend_csk60xx.report import _label_steps, short_label

PART = st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)


@given(st.lists(PART, min_size=1, max_size=8), st.integers(8, 30))
def test_short_label_fits_and_keeps_the_end_of_the_path(parts, width):
    name = ".".join(parts)
    label = short_label(name, width)
    assert len(label) <= width
    if len(name) <= width:
        assert label == name
    elif len(parts[-1]) + 1 <= width:
        assert label.endswith(parts[-1]) and label.startswith("\u2026")  # the last module name survives


def test_axis_labels_are_layer_names_at_most_60():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    names = [f"backbone.stage{i // 10}.block{i % 10}.conv" for i in range(130)]
    plan = MemoryPlan({}, {}, [], 64, len(names), {}, names)
    fig, ax = plt.subplots()
    _label_steps(ax, plan)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    ticks = list(ax.get_xticks())
    plt.close(fig)
    assert 1 < len(labels) <= 60 and labels[0] == short_label(names[0])
    assert all(lab == short_label(names[int(t)]) for lab, t in zip(labels, ticks))
