"""A stabilised stand-in calculator for tests and the demo when no trained model is available.

An untrained (random) network gives nearly zero, random forces, so an MD box of it behaves like an ideal gas:
atoms collide (< 0.5 Å) within a few dozen steps and the barostat chases an ideal-gas pressure. For tests of the
*workflow* (and the demo's fallback) the ML potential is summed with a tiny classical force field:

- bonds: harmonic springs (k = 20 eV/Å²) between atoms of the same molecule closer than 1.45 × the sum of their
  covalent radii at the first call, rest length = that sum;
- intramolecular non-bonded pairs and all intermolecular pairs: a shifted Lennard-Jones term (ε = 5 meV, σ = 2.6 Å,
  cutoff 5 Å; σ = 1.6 Å for pairs with Li).

Numbers from it are meaningless; they only show that the workflow runs. Use as ``calculator:
"workflows.screening.placeholder:calculator"`` in a spec.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list


class ClassicalRestraints(Calculator):
    """Bonds within molecules (``mol_id``) plus a shifted Lennard-Jones term; energy, forces, stress."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, k_bond: float = 20.0, epsilon: float = 0.005, sigma: float = 2.6, sigma_li: float = 1.6,
                 cutoff: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        self.k_bond, self.epsilon, self.sigma, self.sigma_li, self.rc = k_bond, epsilon, sigma, sigma_li, cutoff
        self._bonds: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _bond_list(self, atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._bonds is None or self._bonds[0].max(initial=-1) >= len(atoms):
            mol = atoms.arrays.get("mol_id", np.arange(len(atoms)))
            i, j, d = neighbor_list("ijd", atoms, 2.0)
            r0 = covalent_radii[atoms.numbers[i]] + covalent_radii[atoms.numbers[j]]
            keep = (i < j) & (mol[i] == mol[j]) & (d < 1.45 * r0)
            self._bonds = (i[keep], j[keep], r0[keep])
        return self._bonds

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        n = len(atoms)
        forces = np.zeros((n, 3))
        virial = np.zeros((3, 3))
        energy = 0.0
        bi, bj, r0 = self._bond_list(atoms)
        bonded = set(zip(bi.tolist(), bj.tolist()))
        i, j, d, vec = neighbor_list("ijdD", atoms, self.rc)
        half = i < j
        i, j, d, vec = i[half], j[half], d[half], vec[half]
        # Lennard-Jones on all non-bonded pairs (shifted to zero at the cutoff).
        nb = np.array([(a, b) not in bonded for a, b in zip(i.tolist(), j.tolist())], dtype=bool) if len(i) else \
            np.zeros(0, bool)
        li = (atoms.numbers[i] == 3) | (atoms.numbers[j] == 3)
        sig = np.where(li, self.sigma_li, self.sigma)[nb]
        dd, vv, ii, jj = d[nb], vec[nb], i[nb], j[nb]
        sr6 = (sig / dd) ** 6
        src6 = (sig / self.rc) ** 6
        energy += float(np.sum(4 * self.epsilon * (sr6 * sr6 - sr6 - (src6 * src6 - src6))))
        dedr = 4 * self.epsilon * (-12 * sr6 * sr6 + 6 * sr6) / dd
        self._accumulate(forces, virial, ii, jj, vv, dd, dedr)
        # Bonds (minimum-image vectors from a fresh short list).
        if len(bi):
            bi2, bj2, bd, bvec = neighbor_list("ijdD", atoms, 2.5)
            lookup = {(a, b): k for k, (a, b) in enumerate(zip(bi2.tolist(), bj2.tolist()))}
            idx = np.array([lookup.get((a, b), -1) for a, b in zip(bi.tolist(), bj.tolist())])
            ok = idx >= 0
            dist, vecs = bd[idx[ok]], bvec[idx[ok]]
            stretch = dist - r0[ok]
            energy += float(0.5 * self.k_bond * np.sum(stretch ** 2))
            self._accumulate(forces, virial, bi[ok], bj[ok], vecs, dist, self.k_bond * stretch)
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
