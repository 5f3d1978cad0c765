"""Embedding (``nn.Embedding``, ``F.embedding``) and integer graph inputs end to end: every spelling becomes the QAT
module, eval returns the table's integers exactly, training computes them with straight-through (also sparse)
gradients, the token ids stay an integer input that is never quantized, both dialects, ``lnn.verify`` bit-exact on
every tensor (the acceptance text classifier after QAT steps, a model mixing a float and a token input), the CLI's
``--input-dtype`` and ``lnn run`` on integer ``.npy`` files, and clear errors for float token ids, ids outside the
table and ``max_norm``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lnn_core as lnn
from lnn_core.cli import main
from lnn_core.errors import ConfigError, HardwareLimitError, LnnError, SimulatorError
from lnn_core.exporter import to_ir
from lnn_core.quant.qmodule import QuantStub
from lnn_core.quant.rewrite import UnsupportedOpWarning
from lnn_ops_builtin.embedding import QEmbedding

V, E, L = 37, 16, 6


class TextClassifier(nn.Module):
    """The acceptance model: embedding -> LayerNorm over the last dim -> one position (slicing) and the flattened
    sequence -> Linear heads."""

    def __init__(self, vocab: int = V, dim: int = E, length: int = L, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.ln = nn.LayerNorm(dim)
        self.seq = nn.Linear(dim * length, classes)
        self.first = nn.Linear(dim, classes)

    def forward(self, tokens):
        h = self.ln(self.emb(tokens))
        return self.seq(h.flatten(1)) + self.first(h[:, 0:1].flatten(1))


class Functional(nn.Module):
    """``F.embedding`` on a parameter of the model, with the gradient-only options."""

    def __init__(self, **options) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(V, E))
        self.options = options
        self.fc = nn.Linear(E, 3)

    def forward(self, tokens):
        return self.fc(F.embedding(tokens, self.table, **self.options))


class Mixed(nn.Module):
    """A float input and a token input: ``emb(tokens) + fc(feats)``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 8)
        self.fc = nn.Linear(5, 8)

    def forward(self, feats, tokens):
        return torch.relu(self.emb(tokens) + self.fc(feats))


def tokens(*shape: int, vocab: int = V, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def qat(model: nn.Module, make_inputs, steps: int = 6, host=None, sparse: bool = False) -> nn.Module:
    """``lnn.init`` and a few QAT steps on random data; returns the model in eval mode."""
    q = lnn.init(model, host=host)
    opt = (torch.optim.SGD if sparse else torch.optim.Adam)(q.parameters(), lr=0.01)
    for step in range(steps):
        out = q(*make_inputs(step))
        loss = out.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return q.eval()


# -- spellings and the QAT module ------------------------------------------------------------------------------

SPELLINGS = {
    "nn.Embedding": lambda: nn.Sequential(OrderedDict(emb=nn.Embedding(V, E), fc=nn.Linear(E, 3))),
    "nn.Embedding padding_idx": lambda: nn.Sequential(OrderedDict(emb=nn.Embedding(V, E, padding_idx=2),
                                                                  fc=nn.Linear(E, 3))),
    "nn.Embedding scale_grad_by_freq": lambda: nn.Sequential(OrderedDict(
        emb=nn.Embedding(V, E, scale_grad_by_freq=True), fc=nn.Linear(E, 3))),
    "nn.Embedding sparse": lambda: nn.Sequential(OrderedDict(emb=nn.Embedding(V, E, sparse=True),
                                                             fc=nn.Linear(E, 3))),
    "nn.Embedding.from_pretrained": lambda: nn.Sequential(OrderedDict(
        emb=nn.Embedding.from_pretrained(torch.randn(V, E)), fc=nn.Linear(E, 3))),
    "F.embedding": lambda: Functional(),
    "F.embedding padding_idx=-1": lambda: Functional(padding_idx=-1),
    "F.embedding sparse": lambda: Functional(sparse=True),
    "F.embedding scale_grad_by_freq": lambda: Functional(scale_grad_by_freq=True),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_spelling_is_the_qat_module_and_verifies_after_qat(spelling, host):
    model = SPELLINGS[spelling]()
    q = lnn.init(model, host=host)
    embs = [m for m in q.modules() if isinstance(m, QEmbedding)]
    assert len(embs) == 1 and q.lnn.ops[embs[0].path] == "builtin.Embedding"
    assert not any(isinstance(m, QuantStub) for m in q.modules()), "token ids must not be quantized"
    if "padding_idx" in spelling:
        assert embs[0].padding_idx == (V - 1 if "-1" in spelling else 2)
    sparse = "sparse" in spelling
    q = qat(model, lambda s: (tokens(3, L, seed=s),), host=host, sparse=sparse)
    report = lnn.verify(q, tokens(2, L, seed=99), host=host)
    assert report.ok, report.table()
    assert any(t.name.startswith(("emb", "q_embedding")) for t in report.tensors), [t.name for t in report.tensors]


def test_sparse_gradients_stay_sparse_and_padding_rows_get_none(host):
    q = lnn.init(nn.Sequential(OrderedDict(emb=nn.Embedding(V, E, sparse=True, padding_idx=1), fc=nn.Linear(E, 3))),
                 host=host)
    q.train()
    q(torch.tensor([[1, 4, 4, 7]])).sum().backward()
    g = q.emb.weight.grad
    assert g.is_sparse
    dense = g.to_dense()
    assert dense[4].abs().sum() > 0 and dense[1].abs().sum() == 0 and dense[5].abs().sum() == 0


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_eval_is_the_tables_integers_and_training_computes_them(scale, host):
    model = nn.Sequential(OrderedDict(emb=nn.Embedding(V, E), fc=nn.Linear(E, 3)))
    with torch.no_grad():
        model.emb.weight.mul_(scale)
    q = lnn.init(model, host=host)
    ids = tokens(4, L)
    w = q.emb.weight.detach().double()
    n = int(np.floor(np.log2(127 / w.abs().max().item())))
    table = torch.floor(w * 2.0**n + 0.5).clamp(-128, 127)
    q.train()
    train_out = q.emb(ids)
    q.eval()
    with torch.no_grad():
        eval_out = q.emb(ids)
    assert q.emb.out_q.eval_exponent() == n
    assert torch.equal(eval_out.double() * 2.0**n, table[ids])
    assert torch.equal(train_out.detach(), eval_out)  # no output requantization: training sees the chip's values
    assert int(q.emb.out_q.exponent) == n  # what this step's consumers read


def test_a_stage_one_weight_clamp_is_the_table_that_trains_and_exports(host):
    """The stage-1 clamp (``ConstrainConfig.weight_factor``) travels with the checkpoint: stage 2 quantizes the
    clamped table in training, eval and the export alike (linger's clamp_weight)."""
    model = nn.Sequential(OrderedDict(emb=nn.Embedding(V, E), fc=nn.Linear(E, 3)))
    with torch.no_grad():
        model.emb.weight[3, 0] = 40.0  # an outlier that the clamp cuts
    stage1 = lnn.constrain(model, config=lnn.ConstrainConfig(weight_factor=2.0), host=host)
    stage1(tokens(2, L))
    q = lnn.init(model, host=host)
    q.load_state_dict(stage1.state_dict())
    w = q.emb.weight.detach().double()
    c = min(2.0 * w.abs().mean().item(), w.abs().max().item())
    clamped = w.clamp(-c, c)
    n = int(np.floor(np.log2(127 / clamped.abs().max().item())))
    graph = to_ir(q.eval(), tokens(2, L), host=host)
    table = graph.initializers[next(n_.inputs[0] for n_ in graph.nodes if n_.op_type == "Gather")]
    assert graph.tensors["emb_1"].exponent == n and table[3, 0] == table.max()  # the outlier sits at the clamp
    assert np.array_equal(table, torch.floor(clamped * 2.0**n + 0.5).clamp(-128, 127).numpy().astype(np.int8))
    assert lnn.verify(q, tokens(2, L, seed=4), host=host).ok


def test_the_token_input_stays_an_integer_input_in_both_dialects(host):
    q = qat(Mixed(), lambda s: (torch.rand(2, L, 5), tokens(2, L, seed=s)), host=host)
    feats, ids = torch.rand(2, L, 5), tokens(2, L, seed=5)
    graph = to_ir(q, (feats, ids), input_names=["feats", "tokens"], host=host)
    assert graph.tensors["tokens"].dtype == "int64" and graph.tensors["tokens"].exponent is None
    assert [n.op_type for n in graph.nodes if "tokens" in n.inputs] == ["Gather"]
    proto = lnn.export(q, (feats, ids), dialect="csk60xx", input_names=["feats", "tokens"], host=host)
    gather = next(n for n in proto.graph.node if n.op_type == "Gather")
    attrs = {a.name for a in gather.attribute}
    assert gather.domain == "thinker" and attrs == {"scale_w", "scale_o", "parameter_bits", "o_bits"}
    assert proto.graph.input[1].type.tensor_type.elem_type == 7  # INT64, as torch gives it (and linger writes)
    report = lnn.verify(q, (feats, ids), host=host)
    assert report.ok, report.table()


def test_qdq_gather_is_exact_in_onnxruntime(host):
    """QDQ writes the embedding as the standard Gather on the int8 table: the lookup (and the Linear after it)
    agree with eval on every element."""
    model = nn.Sequential(OrderedDict(emb=nn.Embedding(V, E), fc=nn.Linear(E, 3)))
    q = qat(model, lambda s: (tokens(3, L, seed=s),), host=host)
    ids = tokens(8, L, seed=3)
    proto = lnn.export(q, ids, dialect="qdq", input_names=["tokens"], host=host)
    assert [n.op_type for n in proto.graph.node if "tokens" in n.input] == ["Gather"]
    sess = ort.InferenceSession(proto.SerializeToString())
    for dtype in (np.int64,):
        out = sess.run(None, {"tokens": ids.numpy().astype(dtype)})[0]
        with torch.no_grad():
            assert np.array_equal(out, q(ids).numpy())


def test_the_acceptance_text_classifier_is_bit_exact_after_qat(host):
    q = qat(TextClassifier(), lambda s: (tokens(8, L, seed=s),), steps=10, host=host)
    for seed in range(3):
        report = lnn.verify(q, tokens(4, L, seed=100 + seed), host=host)
        assert report.ok, report.table()
        kinds = {t.name.split("_")[0].split(".")[0] for t in report.tensors}
        assert {"emb", "ln", "seq", "first"} <= kinds, kinds
    graph = to_ir(q, tokens(4, L), host=host)
    assert [n.op_type for n in graph.nodes].count("Gather") == 1
    proto = lnn.export(q, tokens(4, L), dialect="qdq", dynamic_batch=True, host=host)  # LayerNorm: not exact
    sess = ort.InferenceSession(proto.SerializeToString())
    ids = tokens(64, L, seed=7)
    with torch.no_grad():
        ref = q(ids).numpy()
    out = sess.run(None, {sess.get_inputs()[0].name: ids.numpy()})[0]
    agree = float(np.mean(out == ref))
    print(f"text classifier, QDQ in onnxruntime vs eval: {100 * agree:.1f}% of outputs equal "
          f"(max difference {np.abs(out - ref).max():g})")
    assert agree > 0.5


# -- bad input -------------------------------------------------------------------------------------------------


def test_float_token_ids_are_refused_naming_the_embedding(host):
    q = lnn.init(nn.Sequential(OrderedDict(emb=nn.Embedding(V, E))), host=host)
    with pytest.raises(LnnError) as info:
        q(torch.rand(2, L))
    err = info.value
    assert err.module == "emb" and err.actual == "torch.float32" and err.limit == "int64 or int32"
    assert str(err).startswith("embedding 'emb': its indices are float32")
    with pytest.raises(LnnError) as info:  # the same for export / verify with float example inputs
        lnn.verify(q, torch.rand(2, L), host=host)
    assert info.value.module == "emb"


def test_an_index_outside_the_table_is_an_error_on_both_sides(host):
    q = lnn.init(nn.Sequential(OrderedDict(emb=nn.Embedding(V, E), fc=nn.Linear(E, 3))), host=host)
    q = lnn.calibrate(q, [tokens(4, L)]).eval()
    with pytest.raises(IndexError):  # torch's own refusal
        q(torch.tensor([[V]]))
    from lnn_backend_csk60xx.pipeline import pack_onnx
    from lnn_backend_csk60xx.simulator import Simulator

    sim = Simulator(pack_onnx(lnn.export(q, tokens(1, L), dialect="csk60xx", input_names=["tokens"], host=host)))
    with pytest.raises(SimulatorError) as info:
        sim.run([np.array([[0, 1, 2, V, 4, 5]])])
    assert info.value.op_name == "emb" and f"index {V} at position 3" in str(info.value)


def test_token_ids_computed_inside_the_model_are_a_clear_export_error(host):
    class Viewed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(V, E)

        def forward(self, ids):
            return self.emb(ids.view(-1, 3))

    q = lnn.init(Viewed(), host=host).eval()
    with pytest.raises(LnnError) as info:
        lnn.export(q, tokens(2, L), dialect="csk60xx", host=host)
    err = info.value
    assert err.module == "emb" and err.limit == "a graph input" and err.actual == "view"
    assert str(err).startswith("embedding 'emb': its indices are computed inside the model (view)")


def test_max_norm_is_refused_at_init_and_options_that_only_change_gradients_are_not(host):
    with pytest.raises(HardwareLimitError) as info:
        lnn.init(Functional(max_norm=1.0), host=host)
    v = info.value.violations[0]
    assert (v.rule_id, v.op_name, v.limit, v.actual) == ("csk60xx.gather.max_norm", "q_embedding", "max_norm None",
                                                         "max_norm 1")
    for options in ({"padding_idx": 3}, {"scale_grad_by_freq": True}, {"sparse": True}):
        lnn.init(Functional(**options), host=host)


def test_an_embedding_table_computed_at_run_time_stays_a_float_op(host):
    class Computed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(V, E))
            self.fc = nn.Linear(E, 3)

        def forward(self, ids):
            return self.fc(F.embedding(ids, self.table * 2))

    with pytest.warns(UnsupportedOpWarning, match="op F.embedding .* has no quantized form"):
        q = lnn.init(Computed(), host=host)
    assert not any(isinstance(m, QEmbedding) for m in q.modules())


# -- the command line ------------------------------------------------------------------------------------------


@pytest.fixture
def textmod(tmp_path, monkeypatch):
    (tmp_path / "textmods.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Text(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        f"        self.emb = nn.Embedding({V}, 16)\n        self.ln = nn.LayerNorm(16)\n"
        f"        self.fc = nn.Linear(16 * {L}, 3)\n\n"
        "    def forward(self, tokens):\n        return self.fc(self.ln(self.emb(tokens)).flatten(1))\n\n"
        "class Mixed(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        f"        self.emb = nn.Embedding({V}, 8)\n        self.fc = nn.Linear(5, 8)\n\n"
        "    def forward(self, feats, tokens):\n        return self.emb(tokens) + self.fc(feats)\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _calibration_files() -> tuple[list[str], list[str]]:
    """``--calibrate`` options (integer token ids, float features) for the Text and Mixed models."""
    rng = np.random.default_rng(0)
    np.save("cal_ids.npy", rng.integers(0, V, (8, L)))
    np.save("cal_feats.npy", rng.random((8, L, 5), dtype=np.float32))
    return ["--calibrate", "cal_ids.npy"], ["--calibrate", "cal_feats.npy", "--calibrate", "cal_ids.npy"]


def test_cli_verify_export_check_take_integer_inputs(textmod, host, capsys):
    text_cal, mixed_cal = _calibration_files()
    assert main(["verify", "textmods:Text", "--input-shape", f"2,{L}", "--input-dtype", "int64", *text_cal],
                host=host) == 0
    assert "bit-exact" in capsys.readouterr().out
    assert main(["verify", "textmods:Mixed", "--input-shape", f"2,{L},5", "--input-shape", f"2,{L}",
                 "--input-dtype", "tokens=int64", *mixed_cal], host=host) == 0
    assert main(["verify", "textmods:Mixed", "--input-shape", f"2,{L},5", "--input-shape", f"2,{L}",
                 "--input-dtype", "1=int32", *mixed_cal], host=host) == 0
    assert main(["check", "textmods:Mixed", "--input-shape", f"2,{L},5", "--input-shape", f"2,{L}",
                 "--input-dtype", "tokens=int64"], host=host) == 0
    assert "fits: yes" in capsys.readouterr().out
    assert main(["export", "textmods:Mixed", "--input-shape", f"2,{L},5", "--input-shape", f"2,{L}",
                 "--input-dtype", "tokens=int64", "-o", "m.onnx", *mixed_cal], host=host) == 0
    assert main(["check", "m.onnx"], host=host) == 0  # the file declares the token input's dtype
    assert main(["pack", "m.onnx", "-o", "m.bin"], host=host) == 0
    np.save("feats.npy", np.random.rand(2, L, 5).astype(np.float32))
    np.save("ids.npy", np.array([[0, 1, 2, 3, 4, V - 1]] * 2))
    np.save("ids_float.npy", np.zeros((2, L), np.float32))
    np.save("ids_out.npy", np.array([[0, 1, 2, 3, 4, V]] * 2))
    capsys.readouterr()
    assert main(["run", "m.bin", "feats.npy", "ids.npy", "-o", "out.npy"], host=host) == 0
    assert np.load("out.npy").shape == (2, L, 8)
    assert main(["run", "m.bin", "feats.npy", "ids_float.npy", "-o", "out.npy"], host=host) == 2
    assert "input 'tokens' of the model 'm.bin' takes integers (token ids), not float32" in capsys.readouterr().err
    assert main(["run", "m.bin", "feats.npy", "ids_out.npy", "-o", "out.npy"], host=host) == 2
    assert f"index {V} at position 5 of 'tokens' is outside 0..{V - 1}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, headline", [
    (["--input-dtype", "int64"], "option --input-dtype 'int64': a bare dtype is ambiguous for a model of 2 inputs"),
    (["--input-dtype", "tokens=float16"], "option --input-dtype 'tokens=float16': dtype 'float16' is not supported"),
    (["--input-dtype", "words=int64"], "option --input-dtype 'words=int64': the model has no input 'words'"),
    (["--input-dtype", "5=int64"], "option --input-dtype '5=int64': the model has no input '5'"),
])
def test_cli_bad_input_dtypes_are_clear_errors(textmod, host, capsys, argv, headline):
    from lnn_core._model_args import build_float, parse_dtypes

    assert main(["verify", "textmods:Mixed", "--input-shape", f"2,{L},5", "--input-shape", f"2,{L}", *argv],
                host=host) == 2
    assert capsys.readouterr().err.startswith(f"ConfigError: {headline}")
    with pytest.raises(ConfigError) as info:
        parse_dtypes([argv[1]], 2, ["feats", "tokens"])
    assert info.value.option == "--input-dtype" and info.value.value == argv[1]
    assert build_float("textmods:Mixed") is not None


def test_cli_float_example_for_an_embedding_and_input_dtype_on_an_onnx_file(textmod, host, capsys):
    assert main(["verify", "textmods:Text", "--input-shape", f"2,{L}"], host=host) == 2
    assert "embedding 'emb': its indices are float32" in capsys.readouterr().err
    text_cal, _ = _calibration_files()
    assert main(["export", "textmods:Text", "--input-shape", f"2,{L}", "--input-dtype", "int64", "-o", "t.onnx",
                 *text_cal], host=host) == 0
    assert main(["check", "t.onnx", "--input-dtype", "int64"], host=host) == 2
    assert "option --input-dtype is for a PyTorch model" in capsys.readouterr().err


def test_random_token_ids_lie_below_the_smallest_table(host):
    from lnn_core._model_args import index_bound, random_inputs

    q = lnn.init(Functional(), host=host)  # F.embedding: the prepared model has a module for it
    assert index_bound(q) == V and index_bound(Functional()) == 1
    assert index_bound(lnn.init(Mixed(), host=host)) == V
    ids, feats = random_inputs(["2,400", "2,3"], ["int32", "float32"], index_high=V)
    assert ids.dtype == torch.int32 and 0 <= int(ids.min()) and int(ids.max()) == V - 1
    assert feats.dtype == torch.float32
