"""Input checks shared by the estimators. Each raises ``InputError`` with a one-line message."""

from __future__ import annotations

import numpy as np

from mlmd.errors import InputError


def _shape(a: np.ndarray) -> str:
    return str(tuple(int(s) for s in a.shape))


def finite_array(name: str, value, ndim: int | None = None, shape_text: str = "") -> np.ndarray:
    """Return ``value`` as a float64 array; check its rank and that it holds no NaN/inf."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a numeric array; got {type(value).__name__}") from None
    if ndim is not None and a.ndim != ndim:
        raise InputError(f"{name} must have shape {shape_text}; got {_shape(a)}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} contains NaN or inf; finite values required")
    return a


def positions(value, name: str = "positions", min_frames: int = 2) -> np.ndarray:
    """Unwrapped positions, shape (frames, atoms, 3), at least ``min_frames`` frames."""
    a = finite_array(name, value, 3, "(frames, atoms, 3)")
    if a.shape[2] != 3:
        raise InputError(f"{name} must have shape (frames, atoms, 3); got {_shape(a)}")
    if a.shape[1] < 1:
        raise InputError(f"{name} must hold at least 1 atom; got {_shape(a)}")
    if a.shape[0] < min_frames:
        raise InputError(f"{name} must hold at least {min_frames} frames; got {a.shape[0]}")
    return a


def positive(name: str, value, unit: str) -> float:
    """A finite number > 0 (temperature, volume, time step, viscosity, ...)."""
    if isinstance(value, np.generic):
        value = value.item()
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number > 0 {unit}; got {value!r}") from None
    if not np.isfinite(v) or v <= 0.0:
        raise InputError(f"{name} must be a number > 0 {unit}; got {value!r}")
    return v


def per_atom(name: str, value, n_atoms: int, numeric: bool = True) -> np.ndarray:
    """A per-atom array of length ``n_atoms``."""
    a = np.asarray(value)
    if a.ndim != 1 or a.shape[0] != n_atoms:
        raise InputError(f"{name} must have shape ({n_atoms},), one entry per atom; got {_shape(a)}")
    if numeric:
        a = finite_array(name, a, 1, f"({n_atoms},)")
    return a


def fraction_window(name: str, window, duration: float) -> tuple[float, float]:
    """A (start, end) time window in fs inside (0, duration]."""
    try:
        t0, t1 = (float(w) for w in window)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a pair (start_fs, end_fs); got {window!r}") from None
    if not (np.isfinite(t0) and np.isfinite(t1)) or t0 < 0.0 or t1 <= t0 or t1 > duration:
        raise InputError(f"{name} must satisfy 0 <= start < end <= {duration:g} fs; got {window!r}")
    return t0, t1
