"""Plain, JSON-ready summaries of the result dataclasses (for the results database and reports).

``summary(result)`` keeps the scalar fields (those shown in the dataclass repr; curves and per-frame arrays are
left out), turns NumPy scalars into Python numbers and tuples into lists, recurses into dicts and nested results,
and adds the unit-converted properties a class lists in ``_summary_properties``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return summary(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None                        # JSON has no NaN/inf
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return value


def summary(result) -> dict:
    """A dict of plain Python values describing ``result`` (any analysis result dataclass)."""
    if not (dataclasses.is_dataclass(result) and not isinstance(result, type)):
        raise TypeError(f"summary() takes an analysis result dataclass; got {type(result).__name__}")
    out = {f.name: _plain(getattr(result, f.name)) for f in dataclasses.fields(result) if f.repr}
    for name in getattr(result, "_summary_properties", ()):
        out[name] = _plain(getattr(result, name))
    return out
