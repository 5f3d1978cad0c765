"""The thinker (VENUS / CSK60xx) package format: ``lnn pack --format thinker`` writes what the chip's own runtime
(LISTENAI thinker 3.0.4) loads, ``lnn inspect`` prints one, and ``lnn run`` runs one by decoding it into lnn's IR.

Normative description: spec/thinker-package.md. Modules: :mod:`.package` (the bytes), :mod:`.lowering` (what each
op family declares in ``OpDef.lowerings["thinker"]``), :mod:`.build` (IR + plan -> package, the runtime's
contract checks), :mod:`.graph` (package -> IR). :data:`THINKER` is the registered :class:`~..formats.PackageFormat`;
:data:`THINKER_SHARE` (``--format thinker-share``) the same package with its constants read in place from
share-memory (no DMA list, no DMA buffers, as the vendor packer's ``-m params:share-mem``).
Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any

from ..formats import PackageFormat

__all__ = ["THINKER", "THINKER_SHARE"]


def _supports(op: Any) -> bool:
    from .lowering import ThinkerLowering

    return isinstance(op.lowerings.get("thinker"), ThinkerLowering)


def _plan(graph: Any, **kwargs: Any) -> Any:
    from .build import plan_thinker

    return plan_thinker(graph, **kwargs)


def _plan_share(graph: Any, **kwargs: Any) -> Any:
    from .build import PARAMS_SHARE, plan_thinker

    return plan_thinker(graph, params=PARAMS_SHARE, **kwargs)


def _write(graph: Any, plan: Any, ops: Any) -> bytes:
    from .build import write_package

    return write_package(graph, plan, ops)


def _problems(graph: Any, ops: Any) -> list[Any]:
    from .build import contract_problems

    return contract_problems(graph, ops)


def _rewrite(graph: Any, ops: Any) -> list[Any]:
    from ..rewrites import crop_transposed_pads, merge_leading_axes, split_groups
    from .lowering import ThinkerLowering

    def rank_of(op: Any) -> int | None:
        low = op.lowerings.get("thinker")
        return low.max_rank if isinstance(low, ThinkerLowering) else None

    return split_groups(graph, ops) + crop_transposed_pads(graph, ops) + merge_leading_axes(graph, ops, rank_of)


#: the thinker 3.0.4 VENUS package (spec/thinker-package.md), loaded by the chip's runtime
THINKER = PackageFormat("thinker", "thinker 3.0.4 VENUS package, loaded by the chip's own runtime", ".pkg",
                        _supports, _plan, _write, _problems, _rewrite)
#: the same package with every constant in share-memory, read in place by the kernels (no DMA)
THINKER_SHARE = PackageFormat("thinker-share", "thinker 3.0.4 VENUS package, constants read in place from share-memory "
                              "(no DMA)", ".pkg", _supports, _plan_share, _write, _problems, _rewrite)
