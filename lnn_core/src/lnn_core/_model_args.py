"""Command-line helpers shared by the commands that take a PyTorch model: ``package.module:factory``
plus an optional checkpoint and input shapes."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from .errors import ConfigError, ModelFileError


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the float model as package.module:factory (a class or a function)")
    p.add_argument("--checkpoint", help="a state_dict saved from the lnn.init model (stage 2) or lnn.constrain")
    p.add_argument("--input-shape", action="append", required=True, metavar="1,1,8,8",
                   help="shape of one example input (repeat for several inputs)")
    p.add_argument("--target", default="csk60xx", help="target id (default csk60xx)")


def load_factory(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"model {spec!r} is not of the form package.module:factory", {"actual": spec},
                          "e.g. lnn_backend_csk60xx.demo:build_model", option="model", value=spec,
                          valid="package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model {spec!r}: module {module_name!r} cannot be imported", {"cause": str(exc)},
                          "check the module path and that its package is installed", option="model",
                          value=spec, valid="an importable module") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"model {spec!r}: {module_name} has no callable {attr!r}", {},
                          "name a class or a function that returns an nn.Module", option="model", value=spec,
                          valid="a callable")
    return factory


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(f"input shape {text!r} is not a list of positive integers", {"actual": text},
                          "write it as 1,1,8,8", option="--input-shape", value=text, valid="N,C,H,W")
    return shape


def build_quantized(args: argparse.Namespace, host: Any) -> tuple[Any, tuple[Any, ...]]:
    """The lnn.init model of ``args.model`` with ``args.checkpoint`` loaded, and random example inputs."""
    import torch

    import lnn_core as lnn

    factory = load_factory(args.model)
    model = lnn.init(factory(), target=args.target, host=host)
    if args.checkpoint:
        try:
            state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise ModelFileError(f"cannot read checkpoint '{args.checkpoint}'", {"cause": str(exc)},
                                 "pass a file written by torch.save(model.state_dict(), path)",
                                 path=args.checkpoint, node=None) from exc
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelFileError(
                f"checkpoint '{args.checkpoint}' does not fit model {args.model}",
                {"missing": ", ".join(result.missing_keys[:8]) or None,
                 "unexpected": ", ".join(result.unexpected_keys[:8]) or None},
                "save the checkpoint from the lnn.init (or lnn.constrain) model of the same factory",
                path=args.checkpoint, node=None)
    gen = torch.Generator().manual_seed(0)
    inputs = tuple(torch.rand(parse_shape(s), generator=gen) for s in args.input_shape)
    return model, inputs
