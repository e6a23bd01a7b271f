"""Tiny ASE calculators for the labelling tests (imported as ``labelling_dummy_calcs:<factory>``)."""

import numpy as np
from ase.calculators.calculator import Calculator, CalculationFailed, all_changes


class SoftSpheres(Calculator):
    """Pairwise harmonic repulsion below 3 Å plus fixed per-atom charges; fast and always 'converged'."""

    implemented_properties = ["energy", "forces", "charges", "dipole"]

    def __init__(self, charge=0, **kwargs):
        super().__init__(**kwargs)
        self.total_charge = charge

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        pos = self.atoms.positions
        d = pos[:, None, :] - pos[None, :, :]
        r = np.linalg.norm(d, axis=-1) + np.eye(len(pos))
        overlap = np.clip(3.0 - r, 0, None) * (1 - np.eye(len(pos)))
        energy = 0.25 * (overlap**2).sum()
        forces = ((overlap / r)[:, :, None] * d).sum(1)
        q = np.full(len(pos), self.total_charge / len(pos))
        self.results = {"energy": energy, "forces": forces, "charges": q, "dipole": (q[:, None] * pos).sum(0)}


def soft_spheres(charge=0):
    return SoftSpheres(charge=charge)


class NeverConverges(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        raise CalculationFailed("SCF not converged in 250 cycles")


def never_converges(charge=0, **kwargs):
    return NeverConverges()


class _Flaky(SoftSpheres):
    """Fails unless built with the gentle retry settings (mixer_damping <= 0.2)."""

    def __init__(self, charge=0, mixer_damping=0.4, **kwargs):
        super().__init__(charge=charge)
        self.mixer_damping = mixer_damping

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if self.mixer_damping > 0.2:
            raise CalculationFailed("SCF not converged")
        super().calculate(atoms, properties, system_changes)


def flaky(charge=0, mixer_damping=0.4, max_iterations=250):
    return _Flaky(charge=charge, mixer_damping=mixer_damping)


class NaNEnergy(SoftSpheres):
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] = float("nan")


def nan_energy(charge=0):
    return NaNEnergy(charge=charge)
