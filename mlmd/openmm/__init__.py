"""OpenMM integration: mlmd potentials as an openmmml potential (``MLPotential("mlmd", model=...)``), topologies
from mlmd's ASE boxes and back, and an OpenMM MD engine (``mlmd md --engine openmm``).

Submodules load lazily: importing this package imports neither torch nor openmm.
"""

from importlib import import_module

_LAZY = {
    "MLMDPotentialImplFactory": "mlmd.openmm.plugin",
    "MLMDPotentialImpl": "mlmd.openmm.plugin",
    "find_compute": "mlmd.openmm.plugin",
    "topology_from_atoms": "mlmd.openmm.topology",
    "atoms_from_topology": "mlmd.openmm.topology",
    "mdtraj_topology": "mlmd.openmm.topology",
    "openmm_positions": "mlmd.openmm.topology",
    "run_openmm_md": "mlmd.openmm.engine",
    "ForceSpreadReporter": "mlmd.openmm.reporters",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlmd.openmm' has no attribute {name!r}")
