"""Command-line helpers shared by the commands that take a PyTorch model: ``package.module:factory``
plus an optional checkpoint and input shapes.

Every way these inputs can be wrong (a module that does not import, a factory that raises or returns no
module, a checkpoint that is missing, damaged, not a state_dict or of other shapes, a bad shape) is an
:class:`~lnn_core.errors.LnnError` naming the model, the file and the cause: the ``lnn`` command prints it
as an error (exit 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import ConfigError, ModelFileError

__all__ = ["add_model_args", "load_factory", "build_float", "load_checkpoint", "parse_shape", "build_quantized",
           "parse_dtypes", "parse_fills", "random_inputs", "example_inputs", "INPUT_DTYPES", "calibration_batches"]

#: samples per batch of ``--calibrate``
CALIBRATION_BATCH = 32


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the float model as package.module:factory (a class or a function); the module "
                                 "is imported from the current folder first, like `python -m`")
    p.add_argument("--checkpoint", help="a state_dict saved from the lnn.init model (stage 2) or lnn.constrain")
    p.add_argument("--input-shape", action="append", required=True, metavar="1,1,8,8",
                   help="shape of one example input (repeat for several inputs)")
    p.add_argument("--input-dtype", action="append", metavar="[NAME=]DTYPE",
                   help="dtype of an example input: float32 (default), int64 or int32 (token ids of an embedding: "
                        "an integer input that is not quantized). NAME is the forward() argument or its position "
                        "(0, 1, ...); a bare DTYPE needs a model of one input. Repeat for several inputs")
    add_fill_arg(p)
    p.add_argument("--target", default="csk60xx", help="target id (default csk60xx)")
    p.add_argument("--calibrate", action="append", metavar="DATA.npy",
                   help="calibrate the activation scales on these samples first (lnn.calibrate): a .npy array of N "
                        "inputs shaped like --input-shape without its first axis, run in batches of "
                        f"{CALIBRATION_BATCH} (repeat once per forward() argument)")
    p.add_argument("--allow-uncalibrated", action="store_true",
                   help="go on with a warning when activation scales never saw data (no --checkpoint of a trained "
                        "model, no --calibrate): the integers are then meaningless, for testing the plumbing only")


def add_fill_arg(p: argparse.ArgumentParser) -> None:
    """``--input-fill NAME=VALUE``: one value for every element of an example input instead of random data."""
    p.add_argument("--input-fill", action="append", metavar="[NAME=]VALUE",
                   help="fill an example input with one value instead of random data, e.g. the lengths input of a "
                        "packed sequence with its padded length T (--input-fill lengths=49); NAME as for "
                        "--input-dtype. Repeat for several inputs")


@contextlib.contextmanager
def _cwd_first() -> Iterator[None]:
    """The current folder first on ``sys.path`` while the user's module is imported and its factory runs (what
    ``python -m`` does for the whole process), then the path as it was."""
    cwd = os.getcwd()
    if any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        yield
        return
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(cwd)


def _where(exc: BaseException) -> str | None:
    """``file:line`` of the innermost frame of ``exc``'s traceback (the line of the user's code that raised)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def load_factory(spec: str) -> Any:
    """The callable named by ``package.module:factory`` (the module imported with the current folder first)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"model {spec!r} is not of the form package.module:factory", {"actual": spec},
                          "e.g. lnn_backend_csk60xx.demo:build_model", option="model", value=spec,
                          valid="package.module:factory")
    try:
        with _cwd_first():
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model {spec!r}: module {module_name!r} cannot be imported",
                          {"cause": str(exc), "searched": f"the current folder {os.getcwd()}, then sys.path"},
                          "check the module path and that its package is installed (or run lnn from the folder "
                          "that holds it)", option="model", value=spec, valid="an importable module") from exc
    except Exception as exc:  # the module itself raises while it is imported
        raise ConfigError(f"model {spec!r}: importing module {module_name!r} raised {type(exc).__name__}",
                          {"cause": f"{type(exc).__name__}: {exc}", "at": _where(exc)},
                          "fix the error in the module (run `python -c 'import " + module_name + "'` to see it)",
                          option="model", value=spec, valid="an importable module", cause=exc) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"model {spec!r}: {module_name} has no callable {attr!r}", {},
                          "name a class or a function that returns an nn.Module", option="model", value=spec,
                          valid="a callable")
    return factory


def build_float(spec: str) -> Any:
    """Call the factory of ``spec`` without arguments; the nn.Module it returns."""
    from torch import nn

    factory = load_factory(spec)
    try:
        with _cwd_first():
            model = factory()
    except Exception as exc:
        raise ConfigError(f"model {spec!r}: the factory raised {type(exc).__name__}",
                          {"cause": f"{type(exc).__name__}: {exc}", "at": _where(exc)},
                          "fix the factory: it is called without arguments and returns an nn.Module",
                          option="model", value=spec, valid="a factory that returns an nn.Module", cause=exc) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec!r}: the factory returned {type(model).__name__}, not an nn.Module",
                          {"actual": repr(model)[:80]}, "return the model (an nn.Module) from the factory",
                          option="model", value=spec, valid="a factory that returns an nn.Module")
    return model


def load_checkpoint(model: Any, path: str, spec: str, *, allow_extra: bool = False) -> None:
    """Load the state_dict in ``path`` into ``model``; a ModelFileError for any file that does not fit.

    :param allow_extra: keys the model does not have are ignored (``lnn check`` loads a checkpoint of the
        lnn.init model, whose quantizer state the float model lacks, into the float model).
    """
    import torch

    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise ModelFileError(f"cannot read checkpoint '{path}': it {what}", {},
                             "pass the file written by torch.save(model.state_dict(), path)", path=path, node=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, EOFError, RuntimeError, ... for damaged files
        text = str(exc).strip()
        cause = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        size = os.path.getsize(path)
        raise ModelFileError(f"cannot read checkpoint '{path}': " + (
                             "the file is empty" if size == 0 else "torch.load(weights_only=True) cannot read it"),
                             {"size": f"{size} bytes", "cause": f"{type(exc).__name__}: {cause}"},
                             "pass the file written by torch.save(model.state_dict(), path), copied completely "
                             "(a pickled model or a damaged file cannot be read)", path=path, node=None) from exc
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise ModelFileError(f"checkpoint '{path}' holds a {type(state).__name__}, not a state_dict",
                             {"rule": "a checkpoint is a dict of parameter and buffer names to tensors",
                              "actual": type(state).__name__},
                             "save model.state_dict(), not the model, a tensor or a list", path=path, node=None)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [] if allow_extra else [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {list(state[k].shape)}, model {list(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        what = "tensors of other shapes" if shapes else "other tensors"
        raise ModelFileError(
            f"checkpoint '{path}' does not fit model {spec}: it holds {what}",
            {"shapes differ": "\n".join(shapes[:8]) or None, "missing": ", ".join(missing[:8]) or None,
             "unexpected": ", ".join(extra[:8]) or None},
            "save the checkpoint from the lnn.init (or lnn.constrain) model of the same factory",
            path=path, node=None, missing=missing, unexpected=extra, shapes=shapes)
    model.load_state_dict(state, strict=not allow_extra)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(f"input shape {text!r} is not a list of positive integers", {"actual": text},
                          "write it as 1,1,8,8", option="--input-shape", value=text, valid="N,C,H,W")
    return shape


#: ``--input-dtype`` values: float data (quantized at the graph's input) or integer token ids (not quantized)
INPUT_DTYPES = ("float32", "int64", "int32")


def _dtype_error(item: str, what: str, details: dict[str, Any], hint: str, valid: Any) -> ConfigError:
    return ConfigError(f"option --input-dtype {item!r}: {what}", details, hint, option="--input-dtype", value=item,
                       valid=valid)


def _input_index(item: str, name: str, option: str, count: int, names: list[str] | None, example: str) -> int:
    """The position of the example input ``name`` (a forward() argument of ``names`` or a 0-based position)."""
    if name.isdigit() and int(name) < count:
        return int(name)
    if names is not None and name in names[:count]:
        return names.index(name)
    raise ConfigError(f"option {option} {item!r}: the model has no input {name!r}",
                      {"inputs": ", ".join(names[:count] if names else []) or None, "positions": f"0..{count - 1}"},
                      "name a forward() argument, or give its position (0 is the first)", option=option, value=item,
                      valid=example)


def parse_dtypes(items: list[str] | None, count: int, names: list[str] | None = None) -> list[str]:
    """``--input-dtype`` values -> one dtype per example input (default float32).

    :param items: ``DTYPE`` (only for a model of one input) or ``NAME=DTYPE``, NAME a forward() argument of
        ``names`` or a 0-based position.
    :param count: the number of example inputs (``--input-shape`` values).
    """
    out = ["float32"] * count
    for item in items or []:
        name, sep, dtype = item.rpartition("=")
        if dtype not in INPUT_DTYPES:
            raise _dtype_error(item, f"dtype {dtype!r} is not supported", {"valid": ", ".join(INPUT_DTYPES)},
                               "write e.g. --input-dtype tokens=int64", INPUT_DTYPES)
        if not sep:
            if count != 1:
                raise _dtype_error(item, f"a bare dtype is ambiguous for a model of {count} inputs",
                                   {"inputs": ", ".join(names or [str(i) for i in range(count)])},
                                   "name the input: --input-dtype NAME=int64 (a forward() argument or its position)",
                                   "NAME=DTYPE")
            out[0] = dtype
            continue
        out[_input_index(item, name, "--input-dtype", count, names, "NAME=DTYPE")] = dtype
    return out


def parse_fills(items: list[str] | None, count: int, names: list[str] | None = None) -> list[float | None]:
    """``--input-fill`` values -> the value each example input is filled with (None: random data).

    :param items: ``VALUE`` (only for a model of one input) or ``NAME=VALUE``, NAME as for :func:`parse_dtypes`.
    """
    out: list[float | None] = [None] * count
    for item in items or []:
        name, sep, text = item.rpartition("=")
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"option --input-fill {item!r}: {text!r} is not a number", {"actual": text},
                              "write e.g. --input-fill lengths=49", option="--input-fill", value=item,
                              valid="NAME=NUMBER") from None
        if not sep:
            if count != 1:
                raise ConfigError(f"option --input-fill {item!r}: a bare value is ambiguous for a model of {count} "
                                  "inputs", {"inputs": ", ".join(names or [str(i) for i in range(count)])},
                                  "name the input: --input-fill NAME=VALUE (a forward() argument or its position)",
                                  option="--input-fill", value=item, valid="NAME=VALUE")
            out[0] = value
            continue
        out[_input_index(item, name, "--input-fill", count, names, "NAME=VALUE")] = value
    return out


def input_names(model: Any) -> list[str]:
    """The names of ``model.forward``'s arguments, in order (what ``--input-dtype NAME=`` refers to)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def index_bound(model: Any) -> int:
    """Random token ids lie in ``0 .. V-1``, ``V`` the smallest ``num_embeddings`` of the model's embedding
    modules (1, i.e. all zeros, when it has none: a float model's ``F.embedding`` on a parameter; the lnn.init
    model has a module for it)."""
    sizes = [int(m.num_embeddings) for m in model.modules() if isinstance(getattr(m, "num_embeddings", None), int)]
    return max(1, min(sizes)) if sizes else 1


def random_inputs(shapes: list[str], dtypes: list[str] | None = None, *, index_high: int = 1,
                  fills: list[float | None] | None = None) -> tuple[Any, ...]:
    """Random example inputs of the ``--input-shape`` values (seeded: every run sees the same): uniform in [0, 1)
    for float inputs, integers in ``0 .. index_high - 1`` for integer inputs (token ids); an input with a value
    in ``fills`` (``--input-fill``) holds that value everywhere instead, in its dtype (an integer input: the value
    truncated)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    out = []
    for i, s in enumerate(shapes):
        dtype = (dtypes or [])[i] if dtypes and i < len(dtypes) else "float32"
        fill = fills[i] if fills and i < len(fills) else None
        if fill is not None:
            out.append(torch.full(parse_shape(s), fill, dtype=getattr(torch, dtype)))
        elif dtype == "float32":
            out.append(torch.rand(parse_shape(s), generator=gen))
        else:
            out.append(torch.randint(0, index_high, parse_shape(s), generator=gen, dtype=getattr(torch, dtype)))
    return tuple(out)


def example_inputs(args: argparse.Namespace, model: Any) -> tuple[Any, ...]:
    """The random example inputs of ``args.input_shape`` and ``args.input_dtype`` for ``model``."""
    shapes = [s.partition("=")[2] or s for s in args.input_shape]
    names = input_names(model)
    dtypes = parse_dtypes(getattr(args, "input_dtype", None), len(shapes), names)
    fills = parse_fills(getattr(args, "input_fill", None), len(shapes), names)
    return random_inputs(shapes, dtypes, index_high=index_bound(model), fills=fills)


def build_quantized(args: argparse.Namespace, host: Any) -> tuple[Any, tuple[Any, ...]]:
    """The lnn.init model of ``args.model`` with ``args.checkpoint`` loaded, and random example inputs."""
    import lnn_core as lnn

    for s in args.input_shape:  # a malformed shape fails before the model is built
        parse_shape(s)
    float_model = build_float(args.model)
    model = lnn.init(float_model, target=args.target, host=host)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, args.model)
    # argument names from the user's forward(); the ids' bound from the prepared model, whose embedding modules
    # include the F.embedding calls
    shapes = [s.partition("=")[2] or s for s in args.input_shape]
    names = input_names(float_model)
    dtypes = parse_dtypes(getattr(args, "input_dtype", None), len(shapes), names)
    fills = parse_fills(getattr(args, "input_fill", None), len(shapes), names)
    inputs = random_inputs(shapes, dtypes, index_high=index_bound(model), fills=fills)
    if getattr(args, "calibrate", None):
        lnn.calibrate(model, calibration_batches(args.calibrate, inputs))
    return model, inputs


def calibration_batches(paths: list[str], inputs: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The ``--calibrate`` files as batches of :data:`CALIBRATION_BATCH` samples, one array per forward() argument.

    Each file is a .npy array of N samples whose shape after the first axis is the matching example input's
    (``--input-shape`` without its batch axis); all files hold the same N.
    """
    import numpy as np
    import torch

    if len(paths) != len(inputs):
        raise ConfigError(f"{len(paths)} --calibrate file(s) for {len(inputs)} input(s)",
                          {"rule": "one --calibrate file per --input-shape, in the same order",
                           "limit": len(inputs), "actual": len(paths)},
                          "repeat --calibrate once per forward() argument", option="--calibrate",
                          value=paths, valid=f"{len(inputs)} file(s)")
    arrays = []
    for path, example in zip(paths, inputs):
        if not os.path.isfile(path):
            raise ModelFileError(f"cannot read calibration data '{path}': it does not exist", {},
                                 "pass a .npy file written by numpy.save(path, samples)", path=path, node=None)
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise ModelFileError(f"cannot read calibration data '{path}': numpy.load cannot read it",
                                 {"cause": f"{type(exc).__name__}: {str(exc).strip()[:120]}"},
                                 "pass a .npy file written by numpy.save(path, samples) (no pickled objects)",
                                 path=path, node=None) from exc
        want = tuple(example.shape[1:])
        if (arr.ndim != len(want) + 1 or tuple(arr.shape[1:]) != want or arr.shape[0] == 0
                or arr.dtype.kind not in "fiub"):
            raise ConfigError(
                f"calibration data '{path}' does not fit the input shape {list(example.shape)}",
                {"rule": "N samples, each of the input's shape without its batch axis (numbers)",
                 "limit": f"N x {'x'.join(map(str, want))}", "actual": f"{'x'.join(map(str, arr.shape))} {arr.dtype}"},
                f"save the samples as an array of shape (N, {', '.join(map(str, want))})", option="--calibrate",
                value=path, valid=f"N x {'x'.join(map(str, want))}")
        integer = not torch.is_floating_point(example)  # token ids stay integers, of the example's dtype
        if integer and arr.dtype.kind == "f":
            raise ConfigError(f"calibration data '{path}' holds {arr.dtype} for an integer input",
                              {"rule": "an integer input (token ids) takes integer samples", "actual": str(arr.dtype)},
                              "save the ids as an integer array (numpy int64)", option="--calibrate", value=path,
                              valid="an integer array")
        dtype = np.int64 if integer else np.float32
        arrays.append(torch.from_numpy(np.ascontiguousarray(arr, dtype=dtype)).to(example.dtype))
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ConfigError("the --calibrate files hold different numbers of samples",
                          {"rule": "sample i of every file is one call of forward()", "limit": n,
                           "actual": ", ".join(str(a.shape[0]) for a in arrays)},
                          "save the same number of samples for every input", option="--calibrate", value=paths,
                          valid="files of equal length")
    return [tuple(a[i:i + CALIBRATION_BATCH] for a in arrays) for i in range(0, n, CALIBRATION_BATCH)]
