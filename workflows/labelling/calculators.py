"""Calculator factories: the built-in GFN2-xTB (tblite) reference and user ``module:factory`` strings.

A factory is any callable returning an ASE calculator. It receives ``charge=`` (total charge in e) when its
signature accepts it, and the retry settings (e.g. ``max_iterations``, ``mixer_damping``) when it accepts those.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from mlmd.registry import load_callable

BUILTIN = ("tblite", "gfn2-xtb", "xtb")


def gfn2_xtb(charge: int = 0, **kwargs: Any):
    """GFN2-xTB through tblite for a non-periodic cluster of total ``charge`` (closed shell)."""
    from tblite.ase import TBLite

    params = {"method": "GFN2-xTB", "verbosity": 0, "accuracy": 1.0}
    params.update(kwargs)
    return TBLite(charge=charge, **params)


def load_factory(spec: str | None) -> Callable[..., Any]:
    """Resolve ``'tblite'`` (GFN2-xTB) or ``'package.module:factory'`` to a callable."""
    if spec is None or spec.strip().lower() in BUILTIN:
        return gfn2_xtb
    return load_callable(spec, "calculator")


def _accepts(factory: Callable, names: list[str]) -> bool:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return False
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(n in params for n in names)


def make_calculator(factory: Callable, charge: int, kwargs: dict | None = None, extra: dict | None = None):
    """Call ``factory`` with ``kwargs``, plus ``charge=`` and ``extra`` settings where its signature accepts them."""
    call = dict(kwargs or {})
    if _accepts(factory, ["charge"]):
        call["charge"] = int(charge)
    if extra and _accepts(factory, list(extra)):
        call.update(extra)
    return factory(**call)


def accepts_retry(factory: Callable, extra: dict) -> bool:
    return bool(extra) and _accepts(factory, list(extra))
