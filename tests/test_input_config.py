"""A graph input's quantizer is configured like a layer: ``by_path`` (``q_input_<name>``) and ``by_type``
(``core.Quant`` / ``Quant``) set its bits and observer. A streaming model pins its state input to the exponent of
the state output that feeds it, so the state round-trips between calls without a requantization."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lnn_core as lnn
from lnn_core.errors import ConfigError


class Step(nn.Module):
    """One step of a recurrence: ``h_n = tanh(fc(x) + rec(h))``, ``y = out(h_n)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.rec, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_n = torch.tanh(self.fc(x) + self.rec(h))
        return self.out(h_n), h_n


def _train(model: nn.Module, steps: int = 4, scale: float = 0.1) -> None:
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        model(torch.randn(4, 6, generator=gen), torch.randn(4, 8, generator=gen) * scale)


def test_a_pinned_state_input_keeps_its_exponent_whatever_the_data(host):
    config = lnn.QuantConfig(by_path={"q_input_h": lnn.LayerConfig(act_observer=lnn.FixedExponent.with_args(n=7))})
    model = lnn.init(Step(), config=config, host=host)
    _train(model, scale=0.01)  # data that would choose a much larger exponent
    q_h = model.get_submodule("q_input_h").out_q
    q_x = model.get_submodule("q_input_x").out_q
    assert isinstance(q_h.observer, lnn.FixedExponent) and q_h.observer.n == 7
    assert not isinstance(q_x.observer, lnn.FixedExponent)  # the other input keeps the recipe's rule
    model.eval()
    assert q_h.eval_exponent() == 7
    # the state output (tanh, int8 at 2^-7 on the chip) and the state input now share one exponent: eval's output
    # fed back as the next input is quantized without rounding
    x, h = torch.randn(1, 6), torch.zeros(1, 8)
    _, h1 = model(x, h)
    assert torch.equal(q_h(h1), h1)


def test_without_the_pin_the_input_follows_its_data(host):
    model = lnn.init(Step(), host=host)
    _train(model, scale=0.01)
    model.eval()
    assert model.get_submodule("q_input_h").out_q.eval_exponent() > 7


@pytest.mark.parametrize("key", ["core.Quant", "Quant"])
def test_by_type_reaches_every_input_quantizer(host, key):
    config = lnn.QuantConfig(by_type={key: lnn.LayerConfig(act_observer=lnn.FixedExponent.with_args(n=5))})
    model = lnn.init(Step(), config=config, host=host)
    for name in ("q_input_x", "q_input_h"):
        assert model.get_submodule(name).out_q.observer == lnn.FixedExponent(n=5)
    assert not isinstance(model.get_submodule("fc").out_q.observer, lnn.FixedExponent)


def test_a_misspelled_input_path_is_refused_with_the_right_spelling(host):
    config = lnn.QuantConfig(by_path={"q_input_hh": lnn.LayerConfig(act_observer=lnn.FixedExponent)})
    with pytest.raises(ConfigError) as err:
        lnn.init(Step(), config=config, host=host)
    assert err.value.option == "by_path" and err.value.value == "q_input_hh"
    assert "q_input_h" in err.value.valid and "did you mean 'q_input_h'" in str(err.value)


def test_input_bits_outside_the_recipe_are_refused_naming_the_input(host):
    config = lnn.QuantConfig(by_path={"q_input_x": lnn.LayerConfig(act_bits=4)})
    with pytest.raises(ConfigError) as err:
        lnn.init(Step(), config=config, host=host)
    assert "q_input_x" in str(err.value).splitlines()[0] and err.value.option == "act_bits" and err.value.value == 4
