"""mlmd: molecular and materials simulation with machine-learned potentials.

Heavy submodules load lazily so ``import mlmd`` stays cheap and has no side effects.
"""

from importlib import import_module

__all__ = ["AtomicGraph", "MLMDCalculator", "load_potential", "graph_from_atoms", "MLMDError"]

_LAZY = {
    "AtomicGraph": "mlmd.graph",
    "graph_from_atoms": "mlmd.graph",
    "MLMDCalculator": "mlmd.calculator",
    "load_potential": "mlmd.checkpoint",
    "MLMDError": "mlmd.errors",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlmd' has no attribute {name!r}")
