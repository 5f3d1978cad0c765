"""A QuantConfig ``by_path`` pattern or ``by_type`` key that matches no layer is an error at lnn.init naming it
(issue 11 item 9): a typo used to leave the layers it meant at the defaults, silently."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lnn_core as lnn
from lnn_core.errors import ConfigError


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 10))

    def forward(self, x):
        return self.head(torch.relu(self.stem(x)))


def _init(host, **config):
    return lnn.init(Net(), config=lnn.QuantConfig(**config), host=host)


@pytest.mark.parametrize("pattern, floated", [("stem", {"stem"}), ("head.1", {"head.1"}), ("head.*", {"head.1"}),
                                               ("*", {"stem", "head.1"})])
def test_patterns_that_match_a_layer_are_applied(host, pattern, floated):
    model = _init(host, by_path={pattern: {"float": True}})
    assert {"stem", "head.1"} & set(model.lnn.ops) == {"stem", "head.1"} - floated


@pytest.mark.parametrize("key", ["Conv2d", "builtin.Conv2d", nn.Conv2d])
def test_type_keys_that_match_a_layer_are_applied(host, key):
    assert {"stem", "head.1"} & set(_init(host, by_type={key: {"float": True}}).lnn.ops) == {"head.1"}


def test_a_misspelled_path_is_an_error_naming_it_and_the_closest_layer(host):
    with pytest.raises(ConfigError) as exc:
        _init(host, by_path={"stme": {"act_bits": 16}})
    err = exc.value
    assert err.headline == "QuantConfig: by_path pattern 'stme' matches no quantized layer of model 'Net'"
    # the graph input's quantizer (q_input_x) is configurable too, so it is among the valid paths
    assert (err.option, err.value) == ("by_path", "stme") and set(err.valid) == {"q_input_x", "stem", "head.1"}
    assert err.details["layers"].startswith("stem")
    assert err.hint.startswith("did you mean 'stem'?")


def test_a_container_path_points_at_its_layers(host):
    with pytest.raises(ConfigError) as exc:
        _init(host, by_path={"head": {"float": True}})
    assert exc.value.value == "head" and "'head.*'" in exc.value.hint and "head.1" in exc.value.hint


def test_a_wildcard_matching_nothing_is_an_error(host):
    with pytest.raises(ConfigError, match=r"by_path pattern 'backbone\.\*\.conv' matches no quantized layer"):
        _init(host, by_path={"backbone.*.conv": {"act_bits": 16}})


def test_a_type_key_matching_nothing_is_an_error_naming_it(host):
    with pytest.raises(ConfigError) as exc:
        _init(host, by_type={"Conv2D": {"act_bits": 16}})
    err = exc.value
    assert err.headline == "QuantConfig: by_type key 'Conv2D' matches no quantized layer of model 'Net'"
    assert (err.option, err.value) == ("by_type", "Conv2D") and "Conv2d" in err.valid
    assert err.hint == "did you mean 'Conv2d'?"
    with pytest.raises(ConfigError, match="by_type key 'LSTM'") as exc:
        _init(host, by_type={"LSTM": {"float": True}})  # a real type the model does not have
    assert "builtin.Conv2d" in exc.value.details["types"]


def test_every_unmatched_entry_is_listed(host):
    with pytest.raises(ConfigError) as exc:
        _init(host, by_path={"stem": {"act_bits": 16}, "nope": {}, "nope2": {}}, by_type={"Lin": {}})
    assert exc.value.unmatched == [("by_path", "nope"), ("by_path", "nope2"), ("by_type", "Lin")]
    assert "by_path['nope2'], by_type['Lin']" in str(exc.value)


def test_check_matches_alone():
    cfg = lnn.QuantConfig(by_path={"a.*": {}}, by_type={"Linear": {}})
    cfg.check_matches([("a.b", "builtin.Linear", "Linear")])
    with pytest.raises(ConfigError, match="by_path pattern 'a.\\*'"):
        cfg.check_matches([("b", "builtin.Linear", None)])
