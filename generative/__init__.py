"""Crystal generation: CrysBFN (periodic Bayesian flow), a DiffCSP-style diffusion baseline, and metrics.

    from generative import load_generator, sample_crystals
    model = load_generator("perov5-csp")
    structures = sample_crystals(model, compositions=["SrTiO3"], steps=10)
"""

from __future__ import annotations

__all__ = ["sample_crystals", "load_generator", "save_generator", "CrysBFN", "DiffCSP", "CSPNet"]


def __getattr__(name):  # lazy: importing the package stays cheap for the CLI
    if name == "sample_crystals":
        from .sample import sample_crystals

        return sample_crystals
    if name in ("load_generator", "save_generator"):
        from . import checkpoint

        return getattr(checkpoint, name)
    if name in ("CrysBFN", "DiffCSP"):
        from . import models

        return getattr(models, name)
    if name == "CSPNet":
        from .network import CSPNet

        return CSPNet
    raise AttributeError(f"module 'generative' has no attribute {name!r}")
