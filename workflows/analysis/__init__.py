"""Estimators for electrolyte screening: statistics, transport, viscosity, solvation structure, plots.

Plain functions on NumPy arrays in mlmd units (Å, fs, eV, e, amu, K); results are small dataclasses.

=====================  =====================================================================================
``statistics``         block averaging (automatic plateau), statistical inefficiency, equilibration, density
``transport``          self-diffusion (MSD), Yeh–Hummer, Nernst–Einstein and collective conductivity,
                       Onsager terms, transference numbers
``viscosity``          Green–Kubo viscosity, time-decomposition method
``structure``          mdtraj topology/trajectory from arrays, RDFs, coordination, shells, ion pairing
``plots``              figures for the above (no pyplot, atomic save)
``summaries``          JSON-ready dicts of any result (for the results database)
=====================  =====================================================================================

The main functions are re-exported here and imported lazily, so ``import workflows.analysis`` stays light
(mdtraj and matplotlib load only when their functions are first used).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "block_average": "statistics", "statistical_inefficiency": "statistics", "standard_error": "statistics",
    "replica_mean": "statistics", "detect_equilibration": "statistics", "density": "statistics",
    "self_diffusion": "transport", "ionic_conductivity": "transport", "yeh_hummer": "transport",
    "yeh_hummer_correction": "transport", "corrected_diffusion": "transport", "box_length_from_cell": "transport", "msd_fft": "transport",
    "green_kubo_viscosity": "viscosity",
    "build_topology": "structure", "make_trajectory": "structure", "rdf": "structure",
    "solvation_shells": "structure", "solvation_analysis": "structure",
    "summary": "summaries",
    "plot_msd": "plots", "plot_density": "plots", "plot_green_kubo": "plots", "plot_rdf": "plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'workflows.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
