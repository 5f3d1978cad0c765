"""``lnn.analyse``: where quantization costs accuracy, layer by layer.

Three questions, each a report with a text table, a JSON form and a PNG (``lnn analyse weights|layers|sensitivity``):

- :func:`weights`: per layer, the range and spread of the weights and biases, the share of values the int8 grid
  saturates and the stage-1 clamps cut, and the outliers (``|w - mean| > k * std``). Needs no data.
- :func:`layers`: per layer, how far its int8 output (eval mode: the chip's integers) is from its float output
  (the same model with every layer float: ``stage="constrain"``, stage-1 clamps included), as SQNR in dB, cosine
  similarity and the largest error in LSBs of that layer's output; the first layer whose SQNR falls below a
  threshold, and the layer whose SQNR drops the most from the layer before it.
- :func:`sensitivity`: per quantized layer, the metric when only that layer runs int8 and every other layer float:
  top-1 accuracy with labels, else the SQNR of the model's output against the all-float output; ranked, the most
  harmful first. One model is switched layer by layer (no copy, no re-initialisation), so a small model takes
  seconds.

The model is one prepared by ``lnn.init`` (a float model is prepared first). Quantizers that never saw data are
calibrated on the data given first (a few training-mode passes without gradients: observers and BatchNorm statistics
change), and the report says so; otherwise nothing of the model changes: stages and quantizer switches are restored
when a function returns. Layers whose weight is not their own parameter (``F.conv2d(x, self.w)``) are left out of
:func:`weights`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from .quant.functional import qrange
from .quant.qmodule import QModule
from .quant.quantizers import ActQuantizer, quantize_bias, quantize_weight

__all__ = ["weights", "layers", "sensitivity", "WeightReport", "LayerReport", "SensitivityReport"]

_BATCH = 512


# -- shared machinery ---------------------------------------------------------------------------------------------


def _prepared(model: nn.Module) -> nn.Module:
    if getattr(model, "lnn", None) is not None:
        return model
    from .api import init

    return init(model)


def _qmodules(model: nn.Module) -> list[tuple[str, QModule]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QModule)]


def _as_tuple(x: Any) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _batches(inputs: tuple[torch.Tensor, ...], size: int = _BATCH) -> Iterator[tuple[torch.Tensor, ...]]:
    n = inputs[0].shape[0]
    for i in range(0, n, size):
        yield tuple(t[i:i + size] for t in inputs)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _uncalibrated(model: nn.Module) -> bool:
    return any(isinstance(m, ActQuantizer) and int(m.num_batches) == 0 for m in model.modules())


def _calibrate(model: nn.Module, inputs: tuple[torch.Tensor, ...], passes: int = 2) -> None:
    """Observe the activations of ``inputs`` (training mode, no gradients), as ``lnn.check`` does."""
    was = model.training
    model.train()
    try:
        with torch.no_grad():
            for _ in range(passes):
                for batch in _batches(inputs):
                    model(*batch)
    finally:
        model.train(was)


@contextmanager
def _switches(model: nn.Module) -> Iterator[None]:
    """Restore every module's stage and every quantizer's switches (and the training flag) on exit."""
    stages = [(m, m.stage) for m in model.modules() if isinstance(m, QModule)]
    quants = [(m, m.quant, m.observe) for m in model.modules() if isinstance(m, ActQuantizer)]
    was = model.training
    try:
        yield
    finally:
        for m, s in stages:
            m.stage = s
        for m, q, o in quants:
            m.quant, m.observe = q, o
        model.train(was)


def _set_int8(module: QModule, on: bool) -> None:
    """One layer int8 (the chip's integers in eval) or float (stage 1: float with its clamps)."""
    module.stage = "quant" if on else "constrain"
    for q in module.modules():
        if isinstance(q, ActQuantizer):
            q.quant = on


def _set_all(model: nn.Module, on: bool) -> None:
    for _, m in _qmodules(model):
        _set_int8(m, on)


def _on_grid_inputs(module: QModule) -> Callable[..., Any]:
    """A forward pre-hook that puts a layer's float inputs on its int8 input grid (what the chip would feed it)."""

    def hook(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        out = list(args)
        for i, q in enumerate(module.input_quantizers):
            if q is None or i >= len(out) or not isinstance(out[i], torch.Tensor) or not out[i].is_floating_point():
                continue
            n = q.current()
            lo, hi = qrange(q.bits)
            out[i] = (torch.floor(out[i].double() * 2.0**n + 0.5).clamp(lo, hi) * 2.0**-n).to(out[i].dtype)
        return tuple(out)

    return hook


def _run(model: nn.Module, inputs: tuple[torch.Tensor, ...],
         capture: list[tuple[str, QModule]] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's first output on all of ``inputs`` (eval, in batches) and, with ``capture``, each listed layer's
    first output (a layer called twice is listed as ``path#2`` for its second call)."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for path, m in capture or []:
        def hook(_mod: nn.Module, _args: Any, out: Any, path: str = path) -> None:
            t = _first_tensor(out)
            if t is not None:
                seen.setdefault(path, []).append(t.detach().float())
        handles.append(m.register_forward_hook(hook))
    outs: list[torch.Tensor] = []
    per_batch: list[dict[str, list[torch.Tensor]]] = []
    model.eval()
    try:
        with torch.no_grad():
            for batch in _batches(inputs):
                seen.clear()
                outs.append(_first_tensor(model(*batch)).detach().float())
                per_batch.append({k: list(v) for k, v in seen.items()})
    finally:
        for h in handles:
            h.remove()
    layers_out: dict[str, torch.Tensor] = {}
    if per_batch:
        for path, calls in per_batch[0].items():
            for k in range(len(calls)):
                key = path if k == 0 else f"{path}#{k + 1}"
                layers_out[key] = torch.cat([b[path][k] for b in per_batch])
    return torch.cat(outs), layers_out


def _sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    ref, test = ref.double().flatten(), test.double().flatten()
    signal, noise = float((ref ** 2).sum()), float(((ref - test) ** 2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float((a @ b) / (na * nb))


def _lsb_exponent(module: QModule) -> int | None:
    """The exponent of a layer's output (its LSB is ``2**-n``): its output quantizer's, else its input's."""
    qs = [q for q in module.out_qs if q is not None]
    try:
        if qs:
            return int(qs[0].eval_exponent())
        if module.input_quantizers and module.input_quantizers[0] is not None:
            return int(module.input_quantizers[0].current())
    except Exception:  # an op whose exponent needs its forward: no LSB figure for it
        return None
    return None


def _top1(out: torch.Tensor, labels: torch.Tensor) -> float:
    return float((out.argmax(1) == labels).double().mean()) * 100.0


def _finite(v: float | None) -> float | None:
    """JSON has no infinity: an infinite SQNR (identical tensors) is written as null."""
    return v if v is not None and math.isfinite(v) else None


def _fmt(v: Any, spec: str = ".4g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if v == math.inf else ("-inf" if v == -math.inf else format(v, spec))
    return str(v)


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    return plt


def _short(name: str, width: int = 22) -> str:
    if len(name) <= width:
        return name
    parts = name.split(".")
    for i in range(1, len(parts)):
        tail = "\u2026" + ".".join(parts[i:])
        if len(tail) <= width:
            return tail
    return "\u2026" + name[-(width - 1):]


def _label_x(ax: Any, names: Sequence[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([_short(n) for n in names], rotation=60, ha="right",
                       fontsize="x-small" if len(names) > 20 else "small")


# -- weights ------------------------------------------------------------------------------------------------------


@attrs.define
class WeightReport:
    """:func:`weights`: one row per layer with weights (``rows``: dicts, keys in :attr:`KEYS`)."""

    rows: list[dict[str, Any]]
    k: float
    values: dict[str, Any] = attrs.field(factory=dict, repr=False)  # layer -> weights in LSBs (for the PNG)

    KEYS = ("layer", "op", "shape", "w_min", "w_max", "w_std", "b_min", "b_max", "b_std", "n_w", "int8_clipped",
            "bias_clipped", "clamp_clipped", "bias_clamp_clipped", "outliers", "outlier_share")

    def table(self) -> str:
        head = ("layer", "op", "w range", "w std", "b range", "n_w", "int8 clip %", "clamp clip %", "b clamp %",
                f"outliers (>{self.k:g} std)")
        rows = [(r["layer"], r["op"], f"{_fmt(r['w_min'])} .. {_fmt(r['w_max'])}", _fmt(r["w_std"]),
                 "-" if r["b_min"] is None else f"{_fmt(r['b_min'])} .. {_fmt(r['b_max'])}", str(r["n_w"]),
                 _fmt(100 * r["int8_clipped"], ".3g"),
                 "-" if r["clamp_clipped"] is None else _fmt(100 * r["clamp_clipped"], ".3g"),
                 "-" if r["bias_clamp_clipped"] is None else _fmt(100 * r["bias_clamp_clipped"], ".3g"),
                 f"{r['outliers']} ({_fmt(100 * r['outlier_share'], '.3g')} %)") for r in self.rows]
        return _table(head, rows)

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "layers": [dict(r) for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def plot(self, path: str | Path) -> Path:
        """Per layer, the distribution of its weights in LSBs of its int8 grid (the grid ends at +-127)."""
        plt = _pyplot()
        names = [r["layer"] for r in self.rows]
        fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(names) + 3), 5.5), constrained_layout=True)
        data = [self.values[n] for n in names]
        if data:
            ax.violinplot(data, positions=range(len(data)), showextrema=True, widths=0.8)
        lo, hi = -128, 127
        ax.axhline(hi, color="red", linestyle="--", linewidth=1, label="int8 grid (+-127)")
        ax.axhline(lo, color="red", linestyle="--", linewidth=1)
        _label_x(ax, names)
        ax.set_ylabel("weight x 2^n_w (LSBs; as used: clamped, BatchNorm folded)")
        ax.set_title("weights per layer, on each layer's int8 grid")
        ax.legend(loc="upper right", fontsize="small")
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _stats(t: torch.Tensor) -> tuple[float, float, float]:
    t = t.detach().double().flatten()
    return float(t.min()), float(t.max()), float(t.std(unbiased=False)) if t.numel() else 0.0


def weights(model: nn.Module, *, k: float = 4.0) -> WeightReport:
    """Per layer: weight and bias range and std; the share of weights the int8 grid saturates (``|w| * 2**n_w``
    beyond the grid) and of biases their integer width saturates; the share the stage-1 clamps cut (weights beyond
    ``factor * mean|w|``, biases beyond the bias clamp; None where the layer has no clamp); outliers
    ``|w - mean| > k * std``. The grid is that of the weights as the layer uses them (clamped, BatchNorm folded).

    :param model: an ``lnn.init``/``lnn.constrain`` model (a float model is prepared first).
    :param k: the outlier threshold in standard deviations.
    """
    model = _prepared(model)
    rows: list[dict[str, Any]] = []
    values: dict[str, Any] = {}
    for path, m in _qmodules(model):
        w = m._parameters.get("weight")
        if not isinstance(w, torch.Tensor):
            continue
        b = m._parameters.get("bias")
        with torch.no_grad():
            if hasattr(m, "folded_weight_bias"):
                fw, fb = m.folded_weight_bias(w.detach(), b.detach() if b is not None else None)
            else:
                fw, fb = m.constrain_weight(w.detach()), m.constrain_bias(b.detach() if b is not None else None)
            w_i, n_w = quantize_weight(fw, m.weight_bits, m.recipe)
            lo, hi = qrange(m.weight_bits)
            scaled = fw.double() * 2.0**n_w
            int8_clipped = float(((scaled < lo - 0.5) | (scaled >= hi + 0.5)).double().mean())
            bias_clipped = 0.0
            if fb is not None and m.input_quantizers and m.input_quantizers[0] is not None:
                n_b = m.input_quantizers[0].current() + n_w
                blo, bhi = qrange(m.recipe.bias_bits)
                sb = fb.double() * 2.0**n_b
                bias_clipped = float(((sb < blo - 0.5) | (sb >= bhi + 0.5)).double().mean())
                quantize_bias(fb, n_b, m.recipe.bias_bits)  # the same integers the export writes
            a = w.detach().double().abs()
            factor = float(m.clamp_weight) if "weight" in m.clamps else 0.0
            clamp_clipped = None
            if factor > 0.0:
                c = min(factor * float(a.mean()), float(a.max()))
                clamp_clipped = float((a > c).double().mean())
            bias_clamp = float(m.clamp_bias) if "bias" in m.clamps else 0.0
            bias_clamp_clipped = (float((b.detach().abs() > bias_clamp).double().mean())
                                  if b is not None and bias_clamp > 0.0 else None)
            wd = w.detach().double()
            std = float(wd.std(unbiased=False))
            outliers = int(((wd - wd.mean()).abs() > k * std).sum()) if std > 0 else 0
        w_min, w_max, w_std = _stats(w)
        b_min, b_max, b_std = _stats(b) if b is not None else (None, None, None)
        rows.append({"layer": path, "op": m.op_id, "shape": list(w.shape), "w_min": w_min, "w_max": w_max,
                     "w_std": w_std, "b_min": b_min, "b_max": b_max, "b_std": b_std, "n_w": int(n_w),
                     "int8_clipped": int8_clipped, "bias_clipped": bias_clipped, "clamp_clipped": clamp_clipped,
                     "bias_clamp_clipped": bias_clamp_clipped, "outliers": outliers,
                     "outlier_share": outliers / max(w.numel(), 1)})
        values[path] = scaled.flatten().float().numpy()
    return WeightReport(rows, k, values)


# -- layers -------------------------------------------------------------------------------------------------------


@attrs.define
class LayerReport:
    """:func:`layers`: one row per layer call in execution order (keys ``layer``, ``op``, ``sqnr_db``, ``cosine``,
    ``max_abs_error``, ``max_error_lsb``, ``exponent``), the first layer below ``threshold_db``, the largest drop,
    and the whole model's agreement."""

    rows: list[dict[str, Any]]
    threshold_db: float
    first_below: str | None
    largest_drop: dict[str, Any] | None
    output: dict[str, Any]
    calibrated_here: bool = False

    def table(self) -> str:
        rows = [(r["layer"], r["op"], _fmt(r["sqnr_db"], ".1f"), _fmt(r["cosine"], ".5f"),
                 _fmt(r["max_error_lsb"], ".3g")) for r in self.rows]
        lines = [_table(("layer", "op", "SQNR dB", "cosine", "max error (LSB)"), rows)]
        out = self.output
        lines.append(f"model output: SQNR {_fmt(out['sqnr_db'], '.1f')} dB, cosine {_fmt(out['cosine'], '.5f')}"
                     + (f", top-1 float {out['top1_float']:.2f} % / int8 {out['top1_int8']:.2f} %"
                        if out.get("top1_float") is not None else ""))
        lines.append(f"first layer below {self.threshold_db:g} dB: {self.first_below or 'none'}")
        if self.largest_drop:
            d = self.largest_drop
            lines.append(f"largest drop: {d['layer']} ({_fmt(d['drop_db'], '.1f')} dB below the layer before it)")
        if self.calibrated_here:
            lines.append("note: the quantizers had seen no data; they were calibrated on the data given")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        rows = [{**r, "sqnr_db": _finite(r["sqnr_db"])} for r in self.rows]
        out = {**self.output, "sqnr_db": _finite(self.output["sqnr_db"])}
        drop = dict(self.largest_drop) if self.largest_drop else None
        if drop:
            drop["drop_db"] = _finite(drop["drop_db"])
        return {"threshold_db": self.threshold_db, "first_below": self.first_below, "largest_drop": drop,
                "output": out, "calibrated_here": self.calibrated_here, "layers": rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def plot(self, path: str | Path) -> Path:
        """SQNR per layer (bars; a finite cap stands for identical outputs) with the threshold, cosine on top."""
        plt = _pyplot()
        names = [r["layer"] for r in self.rows]
        finite = [r["sqnr_db"] for r in self.rows if math.isfinite(r["sqnr_db"])]
        cap = (max(finite) if finite else 60.0) + 10.0
        sqnr = [r["sqnr_db"] if math.isfinite(r["sqnr_db"]) else (cap if r["sqnr_db"] > 0 else 0.0)
                for r in self.rows]
        fig, (ax_cos, ax) = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(names) + 3), 7), sharex=True,
                                         constrained_layout=True, gridspec_kw={"height_ratios": [1, 2]})
        colors = ["#c44e52" if n == self.first_below else "#4c72b0" for n in names]
        ax.bar(range(len(names)), sqnr, color=colors)
        ax.axhline(self.threshold_db, color="red", linestyle="--", linewidth=1,
                   label=f"threshold {self.threshold_db:g} dB")
        ax.set_ylabel("SQNR int8 vs float (dB)")
        ax.legend(loc="upper right", fontsize="small")
        _label_x(ax, names)
        ax_cos.plot(range(len(names)), [r["cosine"] for r in self.rows], marker="o", color="#55a868")
        ax_cos.set_ylabel("cosine")
        ax_cos.set_title("float vs int8, layer by layer" + (f" (first below threshold: {self.first_below})"
                                                            if self.first_below else ""))
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _ready(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[nn.Module, bool]:
    model = _prepared(model)
    if _uncalibrated(model):
        _calibrate(model, inputs)
        return model, True
    return model, False


def layers(model: nn.Module, inputs: Any, labels: torch.Tensor | None = None, *,
           threshold_db: float = 20.0) -> LayerReport:
    """Float vs int8 output of every layer on ``inputs`` (every layer int8, as on the chip, against every layer
    float): SQNR, cosine, the largest error in LSBs of the layer's output grid.

    :param inputs: a tensor (N, ...) or a tuple of them, one per model input.
    :param labels: (N,) class indices: the report adds the top-1 accuracy of both.
    :param threshold_db: a layer below this SQNR is where agreement drops.
    """
    x = _as_tuple(inputs)
    model, calibrated = _ready(model, x)
    mods = _qmodules(model)
    ops = {p: m.op_id for p, m in mods}
    by_path = dict(mods)
    with _switches(model):
        _set_all(model, True)
        q_out, q_layers = _run(model, x, mods)
        _set_all(model, False)
        f_out, f_layers = _run(model, x, mods)
    rows = []
    for key, q in q_layers.items():
        f = f_layers.get(key)
        if f is None or f.shape != q.shape:
            continue
        path = key.split("#")[0]
        n = _lsb_exponent(by_path[path])
        err = float((f.double() - q.double()).abs().max()) if q.numel() else 0.0
        rows.append({"layer": key, "op": ops[path], "sqnr_db": _sqnr_db(f, q), "cosine": _cosine(f, q),
                     "max_abs_error": err, "exponent": n, "max_error_lsb": err * 2.0**n if n is not None else None})
    first = next((r["layer"] for r in rows if r["sqnr_db"] < threshold_db), None)
    drop = None
    for prev, cur in zip(rows, rows[1:]):
        if not math.isfinite(cur["sqnr_db"]) and cur["sqnr_db"] > 0:
            continue
        d = (prev["sqnr_db"] - cur["sqnr_db"]) if math.isfinite(prev["sqnr_db"]) else math.inf
        if d > 0 and (drop is None or d > drop["drop_db"]):
            drop = {"layer": cur["layer"], "after": prev["layer"], "drop_db": d}
    output: dict[str, Any] = {"sqnr_db": _sqnr_db(f_out, q_out), "cosine": _cosine(f_out, q_out),
                              "top1_float": None, "top1_int8": None}
    if labels is not None:
        output.update(top1_float=_top1(f_out, labels), top1_int8=_top1(q_out, labels))
    return LayerReport(rows, threshold_db, first, drop, output, calibrated)


# -- sensitivity --------------------------------------------------------------------------------------------------


@attrs.define
class SensitivityReport:
    """:func:`sensitivity`: ``rows`` ranked, the most harmful layer first; each ``layer``, ``op``, ``metric`` (with
    only that layer int8) and ``delta`` (against all float; negative: worse)."""

    metric: str  # "top1" (percent) or "sqnr_db"
    baseline: float  # all float (top-1), or inf (SQNR of the float output against itself)
    all_int8: float
    rows: list[dict[str, Any]]
    calibrated_here: bool = False

    def table(self) -> str:
        unit = "top-1 %" if self.metric == "top1" else "output SQNR dB"
        rows = [(str(i + 1), r["layer"], r["op"], _fmt(r["metric"], ".2f"), _fmt(r["delta"], "+.2f"))
                for i, r in enumerate(self.rows)]
        lines = [_table(("rank", "layer (only this one int8)", "op", unit, "change vs all float"), rows)]
        lines.append(f"all float: {_fmt(self.baseline, '.2f')}; all int8: {_fmt(self.all_int8, '.2f')} ({unit})")
        if self.calibrated_here:
            lines.append("note: the quantizers had seen no data; they were calibrated on the data given")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "baseline": _finite(self.baseline), "all_int8": _finite(self.all_int8),
                "calibrated_here": self.calibrated_here,
                "layers": [{**r, "metric": _finite(r["metric"]), "delta": _finite(r["delta"])} for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def plot(self, path: str | Path) -> Path:
        """A bar per layer (ranked): the metric's change when only that layer is int8."""
        plt = _pyplot()
        names = [r["layer"] for r in self.rows]
        if self.metric == "top1":
            vals, label = [r["delta"] for r in self.rows], "top-1 change (points) with only this layer int8"
        else:
            finite = [r["metric"] for r in self.rows if math.isfinite(r["metric"])]
            cap = (max(finite) if finite else 60.0) + 10.0
            vals = [r["metric"] if math.isfinite(r["metric"]) else cap for r in self.rows]
            label = "output SQNR (dB) with only this layer int8 (lower: more sensitive)"
        fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(names) + 3), 5.5), constrained_layout=True)
        ax.bar(range(len(names)), vals, color=["#c44e52" if i == 0 else "#4c72b0" for i in range(len(names))])
        ax.axhline(0, color="black", linewidth=0.8)
        _label_x(ax, names)
        ax.set_ylabel(label)
        ax.set_title("per-layer quantization sensitivity, most harmful first")
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def sensitivity(model: nn.Module, inputs: Any, labels: torch.Tensor | None = None) -> SensitivityReport:
    """For each quantized layer: the metric with only that layer int8 (its inputs put on its int8 grid) and every
    other layer float; top-1 accuracy with ``labels``, else the SQNR of the model's output against the all-float
    output. Ranked, the most harmful first (ties: model order).

    :param inputs: a tensor (N, ...) or a tuple of them, one per model input.
    :param labels: (N,) class indices.
    """
    x = _as_tuple(inputs)
    model, calibrated = _ready(model, x)
    mods = _qmodules(model)
    with _switches(model):
        _set_all(model, True)
        q_out, _ = _run(model, x)
        _set_all(model, False)
        f_out, _ = _run(model, x)

        def score(out: torch.Tensor) -> float:
            return _top1(out, labels) if labels is not None else _sqnr_db(f_out, out)

        baseline = score(f_out)
        rows = []
        for i, (path, m) in enumerate(mods):
            _set_int8(m, True)
            handle = m.register_forward_pre_hook(_on_grid_inputs(m))
            try:
                out, _ = _run(model, x)
            finally:
                handle.remove()
                _set_int8(m, False)
            value = score(out)
            delta = value - baseline if math.isfinite(baseline) else None  # SQNR: against all float, no delta
            rows.append({"layer": path, "op": m.op_id, "metric": value, "delta": delta, "order": i})
    rows.sort(key=lambda r: (r["metric"], r["order"]))
    for r in rows:
        r.pop("order")
    return SensitivityReport("top1" if labels is not None else "sqnr_db", baseline, score(q_out), rows, calibrated)
