"""``lnn.verify`` on random recurrent models: every shared tensor, training side (eval) against the C simulator.

A seeded generator (its own seeds, apart from ``test_verify_random.py``'s) builds small sequence models: a front end
(features read as they come, time first or batch first; a Linear with ReLU or tanh; or a Conv2d + BatchNorm + ReLU
over ``[N, 1, T, F]`` read as a sequence), then one or two recurrent modules (``nn.GRU`` / ``nn.LSTM``, 1 or 2
layers, either direction, ``batch_first`` either way, hidden sizes 1..24), and a head: a Linear on every step, on
the last step, or on the final state ``h_n[-1]``. After a few QAT steps some models get their recurrent weights
scaled up (saturated gates and states; the GRU's input weights stay within its right-shift contract), and the
inputs hold values far outside the int8 range. Every model must be bit-exact tensor by tensor, with each recurrent
module's output among the compared tensors, and the seeds must draw every kind.
"""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest
import torch
from torch import nn

import lnn_core as lnn

#: 40 generated models by default; the opt-in ``tox -e campaign`` runs many more (``LNN_RANDOM_RNN_MODELS``)
N_MODELS = int(os.environ.get("LNN_RANDOM_RNN_MODELS", "40"))
SEED_BASE = 7000


class RecNet(nn.Module):
    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        d = spec["d"]
        if spec["front"] == "conv":
            self.conv = nn.Conv2d(1, spec["ch"], 3, padding=1)
            self.bn = nn.BatchNorm2d(spec["ch"])
            d = spec["ch"] * spec["f"]
        elif spec["front"] in ("relu", "tanh"):
            self.fc = nn.Linear(d, spec["d2"])
            d = spec["d2"]
        self.rnns = nn.ModuleList()
        for kind, hid, layers, bidir in spec["rnns"]:
            self.rnns.append(getattr(nn, kind)(d, hid, num_layers=layers, bidirectional=bidir,
                                               batch_first=spec["batch_first"]))
            d = hid * (2 if bidir else 1)
        hid = spec["rnns"][-1][1]
        self.head = nn.Linear(hid if spec["head"] == "state" else d, spec["out"])

    def forward(self, x):
        return self._run(x, None, None)

    def _run(self, x, lengths, hx):
        """The model; with ``lengths`` the first recurrent module reads a packed sequence (padded back to T after
        it), with ``hx`` it starts from that state."""
        s = self.spec
        if s["front"] == "conv":
            x = torch.relu(self.bn(self.conv(x)))  # [N, C, T, F]
            x = x.permute(0, 2, 1, 3).flatten(2)  # [N, T, C * F]
            if not s["batch_first"]:
                x = x.transpose(0, 1)
        elif s["front"] == "relu":
            x = torch.relu(self.fc(x))
        elif s["front"] == "tanh":
            x = torch.tanh(self.fc(x))
        state = None
        for i, rnn in enumerate(self.rnns):
            if i == 0 and lengths is not None:
                t_len = x.shape[1 if s["batch_first"] else 0]
                packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=s["batch_first"],
                                                           enforce_sorted=False)
                y, state = rnn(packed, hx)
                x = nn.utils.rnn.pad_packed_sequence(y, batch_first=s["batch_first"], total_length=t_len)[0]
            else:
                x, state = rnn(x, hx if i == 0 else None)
        if s["head"] == "state":
            h = state[0] if s["rnns"][-1][0] == "LSTM" else state
            return self.head(h[-1])
        if s["head"] == "last":
            return self.head(x[:, -1] if s["batch_first"] else x[-1])
        return self.head(x)


class RecNetPacked(RecNet):
    def forward(self, x, lengths):
        return self._run(x, lengths, None)


class RecNetState(RecNet):  # a GRU's h0
    def forward(self, x, h0):
        return self._run(x, None, h0)


class RecNetLSTMState(RecNet):
    def forward(self, x, h0, c0):
        return self._run(x, None, (h0, c0))


class RecNetPackedState(RecNet):
    def forward(self, x, lengths, h0):
        return self._run(x, lengths, h0)


class RecNetPackedLSTMState(RecNet):
    def forward(self, x, lengths, h0, c0):
        return self._run(x, lengths, (h0, c0))


def _model(spec: dict) -> RecNet:
    lstm = spec["rnns"][0][0] == "LSTM"
    cls = {(False, False): RecNet, (True, False): RecNetPacked,
           (False, True): RecNetLSTMState if lstm else RecNetState,
           (True, True): RecNetPackedLSTMState if lstm else RecNetPackedState}[(spec["packed"], spec["state"])]
    return cls(spec)


def spec_for(seed: int) -> dict:
    r = random.Random(SEED_BASE + seed)
    kinds = ("GRU", "LSTM")
    rnns = []
    for _ in range(r.choice((1, 1, 2))):
        rnns.append((kinds[(seed + len(rnns)) % 2] if r.random() < 0.7 else r.choice(kinds), r.randint(1, 24),
                     r.choice((1, 1, 2)), r.random() < 0.4))
    front = ("plain", "relu", "tanh", "conv")[seed % 4]
    return {"front": front, "d": r.randint(1, 12), "d2": r.randint(2, 16), "ch": r.randint(2, 6),
            "f": r.randint(2, 6), "t": r.randint(1, 12), "batch_first": r.random() < 0.5,
            "head": ("steps", "last", "state")[(seed // 4) % 3], "out": r.randint(1, 6), "rnns": rnns,
            "scale": r.choice((1.0, 1.0, 2.5, 6.0)), "batch": r.randint(1, 4),
            # drawn last, so that the draws above stay those of the seeds before packing was generated
            "packed": (seed % 5) in (1, 3), "state": (seed % 3) == 2, "length_seed": r.randint(0, 1 << 30)}


def _shape(spec: dict, batch: int) -> tuple[int, ...]:
    if spec["front"] == "conv":
        return (batch, 1, spec["t"], spec["f"])
    return (batch, spec["t"], spec["d"]) if spec["batch_first"] else (spec["t"], batch, spec["d"])


def _gru_first(spec: dict) -> bool:
    """A GRU reads the model's features (or a conv's ReLU) directly: its Q11 alignment only shifts right
    (``n_i + n_iw >= 11``), so its input and input weights must stay small."""
    return spec["rnns"][0][0] == "GRU" and spec["front"] in ("plain", "conv")


def _input(spec: dict, batch: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(*_shape(spec, batch), generator=g)
    if _gru_first(spec):
        return x * 0.5
    x = x * 2
    x.view(-1)[:: max(1, x.numel() // 3)] *= 40  # far outside the int8 range of the input quantizer
    return x


def _inputs(spec: dict, batch: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The model's inputs: features, then the lengths (1..T, any order) of a packed model, then the first recurrent
    module's initial state ``[layers * dirs, B, H]`` (h0, and c0 for an LSTM)."""
    out = [_input(spec, batch, g)]
    if spec["packed"]:
        out.append(torch.randint(1, spec["t"] + 1, (batch,), generator=g))
    if spec["state"]:
        kind, hid, layers, bidir = spec["rnns"][0]
        shape = (layers * (2 if bidir else 1), batch, hid)
        out.append(torch.randn(*shape, generator=g) * 0.4)
        if kind == "LSTM":
            out.append(torch.randn(*shape, generator=g) * 2)
    return tuple(out)


def build(seed: int, host) -> tuple[nn.Module, tuple[torch.Tensor, ...], dict]:
    spec = spec_for(seed)
    torch.manual_seed(SEED_BASE + seed)
    g = torch.Generator().manual_seed(seed)
    m = lnn.init(_model(spec), host=host)
    if _gru_first(spec):
        with torch.no_grad():
            for name, p in _rnns(m, spec)[0].named_parameters():
                if name.startswith("weight_ih"):
                    p.mul_(0.2)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    m.train()
    for _ in range(2):
        loss = m(*_inputs(spec, 4, g)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if spec["scale"] != 1.0:  # saturated gates and states; a GRU's W_ih stays within n_i + n_iw >= 11
        with torch.no_grad():
            for rnn in _rnns(m, spec):
                for name, p in rnn.named_parameters():
                    if rnn.kind == "LSTM" or "weight_hh" in name or "bias" in name:
                        p.mul_(spec["scale"])
    m.eval()
    _gru_in_contract(m, spec)
    return m, _inputs(spec, 1, g), spec


def _gru_in_contract(m: nn.Module, spec: dict) -> None:
    """Halve a GRU's input (hidden) weights until its Q11 alignments shift right (``n_i + n_iw >= 11``, ``n_o + n_hw
    >= 11``): the chip's contract, refused at export otherwise (``csk60xx.gru.in_alignment``), so not a model for a
    bit-exactness test. Halving a matrix raises its exponent by one. A model that the training above left inside
    the contract (every seed of the default run) is not touched."""
    for rnn in _rnns(m, spec):
        if rnn.kind != "GRU":
            continue
        for _ in range(24):
            params = rnn.integer_params()
            low_i = any(p["n_i"] + p["n_iw"] < 11 for p in params)
            low_h = any(p["n_o"] + p["n_hw"] < 11 for p in params)
            if not (low_i or low_h):
                break
            with torch.no_grad():
                for name, w in rnn.named_parameters():
                    if (low_i and name.startswith("weight_ih")) or (low_h and name.startswith("weight_hh")):
                        w.mul_(0.5)


def _rnns(m: nn.Module, spec: dict) -> list[nn.Module]:
    return [m.get_submodule(f"rnns.{i}") for i in range(len(spec["rnns"]))]


@pytest.mark.parametrize("seed", range(N_MODELS))
def test_random_recurrent_model_is_bit_exact(seed, host):
    m, x, spec = build(seed, host)
    for rnn in _rnns(m, spec):  # a GRU outside the chip's right-shift contract is refused at export: not generated
        if rnn.kind == "GRU":
            assert all(p["n_i"] + p["n_iw"] >= 11 and p["n_o"] + p["n_hw"] >= 11 for p in rnn.integer_params()), spec
    report = lnn.verify(m, x, host=host)
    assert report.ok, f"{spec}\n{report.table()}"
    compared = [t.name for t in report.tensors if t.mismatches == 0]
    for i in range(len(spec["rnns"])):  # each recurrent module's output (y, or a cat of nodes) really was compared
        assert any(name.startswith(f"rnns.{i}.") for name in compared), (i, spec, compared)


def _kinds(spec: dict) -> set[str]:
    kinds = {f"{kind}Int" for kind, _, _, _ in spec["rnns"]}
    kinds |= {"reverse"} if any(bidir for *_, bidir in spec["rnns"]) else set()
    kinds |= {f"batch_first={int(spec['batch_first'])}", f"head={spec['head']}", f"front={spec['front']}"}
    kinds |= {"stacked"} if any(layers > 1 for _, _, layers, _ in spec["rnns"]) or len(spec["rnns"]) > 1 else set()
    kinds |= {"packed"} if spec["packed"] else set()
    kinds |= {"initial state"} if spec["state"] else set()
    kinds |= {"packed with initial state"} if spec["packed"] and spec["state"] else set()
    kinds |= {"stacked initial state"} if spec["state"] and (spec["rnns"][0][2] > 1 or spec["rnns"][0][3]) else set()
    return kinds | ({"saturated"} if spec["scale"] > 1 else set())


def test_the_generator_draws_every_recurrent_kind():
    """The seeds above cover every kind (each model's recurrent outputs are compared in its own test)."""
    drawn = Counter(k for seed in range(N_MODELS) for k in _kinds(spec_for(seed)))
    want = {"GRUInt", "LSTMInt", "reverse", "batch_first=0", "batch_first=1", "head=steps", "head=last",
            "head=state", "front=plain", "front=relu", "front=tanh", "front=conv", "stacked", "saturated", "packed",
            "initial state", "packed with initial state", "stacked initial state"}
    assert want <= set(drawn), drawn
