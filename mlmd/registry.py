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


def load_callable(spec: str, label: str = "calculator"):
    """``"package.module:factory"`` (attribute path may be dotted) -> the callable; ConfigError naming ``label``."""
    import importlib

    from mlmd.errors import ConfigError

    module_name, sep, attr = spec.strip().partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{label} {spec!r} is not of the form module:factory (e.g. ase.calculators.emt:EMT)")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised while importing the user's module
        raise ConfigError(f"cannot import module {module_name!r} for {label} {spec!r} ({type(exc).__name__}); "
                          "give an importable module:factory") from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r} ({label} {spec!r}); "
                              "give module:factory naming a callable")
    if not callable(obj):
        raise ConfigError(f"{label} {spec!r} is not callable; give module:factory naming a callable")
    return obj
