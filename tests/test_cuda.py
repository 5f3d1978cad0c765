"""QAT on a CUDA device: training runs there, and eval mode there computes the chip's integers exactly.

Skipped without a GPU (CI has none). Eval-mode arithmetic is exact by construction (float64 tensors holding
integers), so a model trained on the GPU must give the same eval outputs, bit for bit, on the GPU and on the
host, export the same integers, and verify against the C simulator with the GPU-side eval values.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lnn_core as lnn
from lnn_core.quant.quantizers import ActQuantizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Net(nn.Module):
    """Conv-BN-ReLU (folded), a residual add, cat, max and average pooling, a standalone BatchNorm, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        z = F.relu(y + self.b2(self.c2(y)))
        u = self.pool(F.relu(self.dw(torch.cat([y, z], 1))))
        u = F.adaptive_avg_pool2d(self.bn(u), 1)
        return self.fc(torch.flatten(u, 1))


def _train_on_gpu(host):
    torch.manual_seed(0)
    model = lnn.init(Net(), host=host).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator(device="cuda").manual_seed(0)
    model.train()
    for _ in range(20):
        x = torch.randn(32, 3, 16, 16, device="cuda", generator=gen)
        y = torch.randint(0, 10, (32,), device="cuda", generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_eval_on_gpu_equals_eval_on_host_bit_for_bit(host):
    model = _train_on_gpu(host)
    x = torch.randn(64, 3, 16, 16, device="cuda") * 3
    with torch.no_grad():
        y_gpu = model(x)
    cpu_model = copy.deepcopy(model).cpu()
    with torch.no_grad():
        y_cpu = cpu_model(x.cpu())
    assert y_gpu.device.type == "cuda"
    assert torch.equal(y_gpu.cpu(), y_cpu)
    gpu_exps = {n: m.current() for n, m in model.named_modules() if isinstance(m, ActQuantizer)}
    cpu_exps = {n: m.current() for n, m in cpu_model.named_modules() if isinstance(m, ActQuantizer)}
    assert gpu_exps == cpu_exps and len(gpu_exps) >= 8


def test_gpu_model_exports_the_host_integers_and_verifies(host):
    model = _train_on_gpu(host)
    x = torch.randn(1, 3, 16, 16, device="cuda")
    g_gpu = lnn.to_ir(model, x, host=host)
    g_cpu = lnn.to_ir(copy.deepcopy(model).cpu(), x.cpu(), host=host)
    assert sorted(g_gpu.initializers) == sorted(g_cpu.initializers)
    for name, arr in g_gpu.initializers.items():
        assert arr.dtype == g_cpu.initializers[name].dtype and (arr == g_cpu.initializers[name]).all(), name
    assert next(model.parameters()).device.type == "cuda"  # export left the model where it was
    report = lnn.verify(model, x, host=host)  # the GPU-side eval values against the C simulator
    assert report.ok, report.table()


class Text(nn.Module):
    """Token ids -> embedding (padding row, sparse gradients) -> LayerNorm -> Linear over the sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16, padding_idx=0, sparse=True)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16 * 6, 4)

    def forward(self, ids):
        return self.fc(self.ln(self.emb(ids)).flatten(1))


def test_an_embedding_trained_on_gpu_evaluates_and_verifies_as_on_the_host(host):
    torch.manual_seed(0)
    model = lnn.init(Text(), host=host).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator(device="cuda").manual_seed(0)
    model.train()
    for _ in range(20):
        ids = torch.randint(0, 50, (32, 6), device="cuda", generator=gen)
        y = torch.randint(0, 4, (32,), device="cuda", generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(ids), y).backward()
        assert model.emb.weight.grad.is_sparse
        opt.step()
    model.eval()
    ids = torch.randint(0, 50, (64, 6), device="cuda", generator=gen)
    with torch.no_grad():
        y_gpu = model(ids)
        y_cpu = copy.deepcopy(model).cpu()(ids.cpu())
    assert y_gpu.device.type == "cuda" and torch.equal(y_gpu.cpu(), y_cpu)
    report = lnn.verify(model, ids[:4], host=host)
    assert report.ok, report.table()


class PackedTagger(nn.Module):
    """Padded batch + lengths (on the GPU, as a user keeps them) -> pack -> LSTM (h0, c0) -> pad -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.rnn = nn.LSTM(6, 8, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x, lengths, h0, c0):
        packed = nn.utils.rnn.pack_padded_sequence(torch.tanh(self.fc(x)), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        y, _ = self.rnn(packed, (h0, c0))
        return self.head(nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.size(1))[0])


def test_a_packed_lstm_trained_on_gpu_evaluates_and_verifies_as_on_the_host(host):
    torch.manual_seed(0)
    model = lnn.init(PackedTagger(), host=host).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()

    def batch(n):
        return (torch.randn(n, 9, 5, device="cuda"), torch.randint(1, 10, (n,), device="cuda"),
                torch.randn(2, n, 8, device="cuda") * 0.3, torch.randn(2, n, 8, device="cuda"))

    for _ in range(5):
        opt.zero_grad()
        model(*batch(16)).square().mean().backward()
        opt.step()
    model.eval()
    args = batch(32)
    with torch.no_grad():
        y_gpu = model(*args)
        y_cpu = copy.deepcopy(model).cpu()(*(a.cpu() for a in args))
    assert y_gpu.device.type == "cuda" and torch.equal(y_gpu.cpu(), y_cpu)
    x, lengths, h0, c0 = args
    report = lnn.verify(model, (x[:1], lengths[:1], h0[:, :1], c0[:, :1]), host=host)
    assert report.ok, report.table()
