"""Molecular dynamics on ASE with any ASE calculator: NVE, NVT (Langevin, Bussi, Nosé-Hoover chains) and
NPT (MTK barostat), with trajectories for ASE and mdtraj, a thermodynamic log, restartable checkpoints and
guards that stop a run going bad.

    from mlmd.md import MDConfig, run_md
    result = run_md(atoms, calculator, MDConfig(ensemble="nvt", temperature_K=300, steps=1000), "run1")
"""

from mlmd.md.config import GuardConfig, MDConfig, load_config, make_config
from mlmd.md.engine import MDResult, run_md
from mlmd.md.guards import check_structure, min_distance
from mlmd.md.io import load_checkpoint, read_thermo

__all__ = [
    "GuardConfig", "MDConfig", "MDResult", "check_structure", "load_checkpoint", "load_config", "make_config",
    "min_distance", "read_thermo", "run_md",
]
