"""Find potentials without importing them: entry points name model classes and bundled models.

Group ``mlmd.potentials``: ``name = "package.module:PotentialClass"`` (a :class:`mlmd.potential.Potential`).
Group ``mlmd.pretrained``: ``name = "package.module:function"`` returning the path of a bundled checkpoint.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

from mlmd.errors import CheckpointError, InputError

POTENTIALS_GROUP = "mlmd.potentials"
PRETRAINED_GROUP = "mlmd.pretrained"


def _entry_points(group: str) -> dict:
    return {ep.name: ep for ep in entry_points(group=group)}


def available_model_types() -> list[str]:
    return sorted(_entry_points(POTENTIALS_GROUP))


def available_pretrained() -> list[str]:
    return sorted(_entry_points(PRETRAINED_GROUP))


def model_class(model_type: str):
    """The Potential class registered under ``model_type``."""
    found = _entry_points(POTENTIALS_GROUP)
    if model_type not in found:
        raise CheckpointError(
            f"model type {model_type!r} is not registered; known types: {', '.join(sorted(found)) or 'none'}"
        )
    return found[model_type].load()


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A bundled model name (see :func:`available_pretrained`) or a checkpoint path -> an existing file path."""
    text = str(name_or_path)
    bundled = _entry_points(PRETRAINED_GROUP)
    if text in bundled:
        return Path(bundled[text].load()())
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise InputError(
        f"model {text!r} is neither a bundled model ({', '.join(sorted(bundled)) or 'none'}) nor an existing checkpoint file"
    )
