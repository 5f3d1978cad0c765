"""The CSK60xx target, loaded from ``targets/csk60xx.toml`` (limits as data)."""

from __future__ import annotations

from importlib import resources

from lnn_core.targets import Target, load_limits

__all__ = ["TARGET_ID", "load_target"]

TARGET_ID = "csk60xx"


def load_target() -> Target:
    """Read the target file shipped with the package."""
    with resources.as_file(resources.files(__package__) / "targets" / f"{TARGET_ID}.toml") as path:
        limits = load_limits(path)
    return Target(id=limits["target.id"], description=limits["target.description"],
                  recipe=limits["target.recipe"], limits=limits)
