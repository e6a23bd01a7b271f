"""A stabilised stand-in calculator for tests and the demo when no trained model is available.

An untrained (random) network gives nearly zero, random forces, so an MD box of it behaves like an ideal gas:
atoms collide (< 0.5 Å) within a few dozen steps and the barostat chases an ideal-gas pressure. For tests of the
*workflow* (and the demo's fallback) the ML potential is summed with a tiny classical force field:

- an elastic network within each molecule: harmonic springs between atoms of the same molecule closer than 3 Å at
  the first call, rest length = their distance then (a fresh box starts unstrained); k = 20 eV/Å² for bonded pairs
  (closer than 1.45 × the sum of covalent radii), 3 eV/Å² for the others (angles);
- intermolecular pairs: a shifted Lennard-Jones term (ε = 5 meV, σ = 2.4 Å, cutoff 5 Å; σ = 1.6 Å with Li).

Numbers from it are meaningless; they only show that the workflow runs. Use as ``calculator:
"workflows.screening.placeholder:calculator"`` in a spec.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.data import covalent_radii


def neighbor_list(quantities: str, atoms, cutoff: float):
    """ASE-style ``neighbor_list`` (full list; quantities from i, j, d, D) computed with vesin (fast)."""
    import vesin

    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, d, vec = nl.compute(points=atoms.positions, box=atoms.cell.array, periodic=bool(atoms.pbc.all()),
                              quantities="ijdD")
    out = {"i": i.astype(np.int64), "j": j.astype(np.int64), "d": d, "D": vec}
    return tuple(out[q] for q in quantities)


class ClassicalRestraints(Calculator):
    """An elastic network within molecules (``mol_id``) plus intermolecular shifted Lennard-Jones; energy, forces,
    stress."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, k_bond: float = 20.0, k_network: float = 3.0, network_cutoff: float = 3.0,
                 epsilon: float = 0.005, sigma: float = 2.4, sigma_li: float = 1.6, cutoff: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        self.k_bond, self.k_network, self.network_cutoff = k_bond, k_network, network_cutoff
        self.epsilon, self.sigma, self.sigma_li, self.rc = epsilon, sigma, sigma_li, cutoff
        self._springs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def _spring_list(self, atoms):
        if self._springs is None or self._springs[0].max(initial=-1) >= len(atoms):
            mol = atoms.arrays.get("mol_id", np.arange(len(atoms)))
            i, j, d = neighbor_list("ijd", atoms, self.network_cutoff)
            keep = (i < j) & (mol[i] == mol[j])
            i, j, d = i[keep], j[keep], d[keep]
            r0 = covalent_radii[atoms.numbers[i]] + covalent_radii[atoms.numbers[j]]
            k = np.where(d < 1.45 * r0, self.k_bond, self.k_network)
            self._springs = (i, j, d, k)                    # rest length: the geometry at the first call
        return self._springs

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        n = len(atoms)
        mol = atoms.arrays.get("mol_id", np.arange(n))
        forces = np.zeros((n, 3))
        virial = np.zeros((3, 3))
        energy = 0.0
        i, j, d, vec = neighbor_list("ijdD", atoms, self.rc)
        inter = (i < j) & (mol[i] != mol[j])
        i, j, d, vec = i[inter], j[inter], d[inter], vec[inter]
        li = (atoms.numbers[i] == 3) | (atoms.numbers[j] == 3)
        sig = np.where(li, self.sigma_li, self.sigma)
        sr6 = (sig / d) ** 6
        src6 = (sig / self.rc) ** 6
        energy += float(np.sum(4 * self.epsilon * (sr6 * sr6 - sr6 - (src6 * src6 - src6))))
        self._accumulate(forces, virial, i, j, vec, d, 4 * self.epsilon * (-12 * sr6 * sr6 + 6 * sr6) / d)
        si, sj, r0, k = self._spring_list(atoms)
        if len(si):
            vecs = atoms.positions[sj] - atoms.positions[si]
            if atoms.pbc.all():                                     # minimum image (springs < half the box)
                cell = atoms.cell.array
                vecs -= np.rint(np.linalg.solve(cell.T, vecs.T).T) @ cell
            dist = np.linalg.norm(vecs, axis=1)
            stretch = dist - r0
            energy += float(0.5 * np.sum(k * stretch ** 2))
            self._accumulate(forces, virial, si, sj, vecs, dist, k * stretch)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        if atoms.pbc.all():
            stress = virial / atoms.get_volume()
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]]

    @staticmethod
    def _accumulate(forces, virial, i, j, vec, d, dedr):
        """Pair forces for E(d): vec = r_j - r_i; F_j = -dE/dd * vec/d, F_i = -F_j."""
        if len(i) == 0:
            return
        fj = -(dedr / d)[:, None] * vec
        np.add.at(forces, j, fj)
        np.add.at(forces, i, -fj)
        virial -= np.einsum("pa,pb->ab", vec, fj)  # stress = -(1/V) Σ r_ij ⊗ f_ij with ASE's sign


class SumCalculator(Calculator):
    """Sum of an ML calculator and the classical restraints (energy, forces, stress; charges from the first)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, calcs, **kwargs):
        super().__init__(**kwargs)
        self.calcs = list(calcs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        periodic = bool(np.all(self.atoms.pbc))
        total: dict[str, np.ndarray | float] = {}
        for calc in self.calcs:
            if hasattr(calc, "evaluate"):
                res = calc.evaluate(self.atoms, stress=periodic)
            else:
                calc.calculate(self.atoms, ["energy", "forces"] + (["stress"] if periodic else []), all_changes)
                res = calc.results
            for key in ("energy", "forces", "stress"):
                if key in res:
                    total[key] = total.get(key, 0.0) + np.asarray(res[key])
        total["energy"] = float(total["energy"])
        total["free_energy"] = total["energy"]
        self.results = total


def calculator(model_path: str | None = None, dtype: str = "float32") -> Calculator:
    """The ML potential at ``model_path`` plus :class:`ClassicalRestraints` (or the restraints alone)."""
    calcs: list[Calculator] = [ClassicalRestraints()]
    if model_path:
        from mlmd.calculator import MLMDCalculator

        calcs.insert(0, MLMDCalculator(model_path, dtype=dtype))
    return SumCalculator(calcs)
