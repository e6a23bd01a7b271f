import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule


@pytest.fixture(autouse=True)
def _quiet_threads():
    torch.set_num_threads(1)
    yield


def water_cluster(n: int = 4, seed: int = 0) -> Atoms:
    """A small non-periodic cluster of water molecules with mol_id."""
    rng = np.random.default_rng(seed)
    atoms = Atoms()
    mol_id = []
    for k in range(n):
        w = molecule("H2O")
        w.rotate(rng.uniform(0, 360), rng.normal(size=3))
        w.translate([3.0 * (k % 2), 3.0 * (k // 2), 0.3 * k])
        atoms += w
        mol_id += [k] * 3
    atoms.arrays["mol_id"] = np.array(mol_id)
    return atoms


def periodic_box(seed: int = 0, n_per_axis: int = 2, spacing: float = 3.3) -> Atoms:
    """A small triclinic periodic box of LiF + water-like molecules (charge neutral)."""
    rng = np.random.default_rng(seed)
    atoms = Atoms()
    for a in range(n_per_axis):
        for b in range(n_per_axis):
            for c in range(n_per_axis):
                w = molecule("H2O") if (a + b + c) % 2 else Atoms("LiF", positions=[[0, 0, 0], [1.6, 0, 0]])
                w.rotate(rng.uniform(0, 360), rng.normal(size=3))
                w.translate(np.array([a, b, c]) * spacing + rng.uniform(-0.2, 0.2, 3))
                atoms += w
    length = n_per_axis * spacing
    atoms.set_cell([[length, 0, 0], [0.4, length, 0], [0.3, -0.5, length]])
    atoms.pbc = True
    return atoms
