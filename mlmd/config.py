"""Reading typed configs: one place for how YAML files and validation errors become one-line ConfigErrors."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from .errors import ConfigError


def read_yaml_mapping(path: str | os.PathLike | None, what: str = "settings") -> dict:
    """The mapping in YAML file ``path`` ({} for None or an empty file).

    A missing file, invalid YAML or a top level that is not a mapping raises a one-line :class:`ConfigError` that
    says what the file should hold (``what``)."""
    if path is None:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found; give a YAML file with {what}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config file '{p}' is not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of {what}, got a {type(data).__name__}")
    return data


def one_line(exc: ValidationError) -> str:
    """The first pydantic validation error as ``loc: message (got value)``, counting the others."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].replace("Value error, ", "")
    value = err.get("input")
    shown = "" if isinstance(value, dict) or not loc else f" (got {value!r})"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{loc + ': ' if loc else ''}{msg}{shown}{more}"
