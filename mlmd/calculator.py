"""ASE calculator for any mlmd potential.

``atoms.calc = MLMDCalculator("bamboo-electrolyte")`` (bundled name or checkpoint path, or a Potential object).
The neighbour list is built with a skin and reused while no pair can have crossed the cutoff (atoms moved less than
half the skin, with cell changes of NPT accounted for), so an MD step costs one network evaluation plus a cheap
distance filter.
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlmd import keys
from mlmd.graph import AtomicGraph, check_min_distance, total_charge_of, validate_atoms
from mlmd.neighbors import neighbor_list, skin_list_valid

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class MLMDCalculator(Calculator):
    """energy, free_energy, energies (per atom), forces, stress (Voigt, eV/Å³, ASE sign), charges."""

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "charges"]

    def __init__(self, model="bamboo-electrolyte", device: str = "cpu", dtype: str = "float32", skin: float = 0.5,
                 charge: float | None = None, **kwargs):
        """``charge``: total charge in e for every structure (as tblite's ``charge``); None reads
        ``atoms.info['total_charge']`` (0 when absent)."""
        super().__init__(**kwargs)
        from mlmd.allocator import keep_freed_memory
        from mlmd.errors import InputError

        keep_freed_memory()  # every MD step allocates the same large tensors again
        if dtype not in _DTYPES:
            raise InputError(f"dtype {dtype!r} is not supported; use one of {', '.join(_DTYPES)}")
        self.dtype = _DTYPES[dtype]
        self.device = torch.device(device)
        if isinstance(model, torch.nn.Module):
            self.model = model.to(device=self.device, dtype=self.dtype).eval()
        else:
            from mlmd.checkpoint import load_potential

            self.model = load_potential(model, device=self.device, dtype=self.dtype)
        self.skin = float(skin)
        self.charge = None if charge is None else total_charge_of(Atoms(info={keys.TOTAL_CHARGE: charge}))
        self._list = None  # (positions, cell, pbc, numbers, i, j, shifts) at the last build

    # -- neighbour list with skin ---------------------------------------------------------------------------
    def _neighbors(self, atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        positions = atoms.positions
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
        cached = self._list
        if cached is not None and np.array_equal(cached[2], pbc) and np.array_equal(cached[3], atoms.numbers):
            if skin_list_valid(cached[0], cached[1], positions, cell, pbc, self.model.cutoff, self.skin):
                return cached[4], cached[5], cached[6]
        else:
            validate_atoms(atoms, self.model.species)
        i, j, shifts = neighbor_list(positions, cell, pbc, self.model.cutoff + self.skin)
        self._list = (positions.copy(), cell.copy(), pbc.copy(), atoms.numbers.copy(), i, j, shifts)
        return i, j, shifts

    def graph(self, atoms) -> AtomicGraph:
        """The AtomicGraph the model sees for ``atoms`` (model dtype and device)."""
        if not np.isfinite(atoms.positions).all():
            validate_atoms(atoms)
        i, j, shifts = self._neighbors(atoms)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
        check_min_distance(atoms.positions, cell, i, j, shifts)
        mol_id = atoms.arrays.get(keys.MOL_ID)
        n = len(atoms)
        fdt, dev = self.dtype, self.device
        return AtomicGraph(
            positions=torch.tensor(atoms.positions, dtype=fdt, device=dev),
            atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.long, device=dev),
            cell=torch.tensor(cell, dtype=fdt, device=dev)[None],
            pbc=torch.tensor(pbc, device=dev)[None],
            edge_index=torch.from_numpy(np.stack([i, j])).to(dev),
            edge_cell_shifts=torch.from_numpy(shifts).to(dtype=fdt, device=dev),
            batch=torch.zeros(n, dtype=torch.long, device=dev),
            ptr=torch.tensor([0, n], dtype=torch.long, device=dev),
            total_charge=torch.tensor([total_charge_of(atoms) if self.charge is None else self.charge], dtype=fdt, device=dev),
            mol_id=torch.as_tensor(mol_id if mol_id is not None else np.full(n, -1), dtype=torch.long, device=dev),
            cutoff=self.model.cutoff,
        )

    def evaluate(self, atoms, stress: bool = False) -> dict:
        """Run the model on ``atoms``: the results dict of :meth:`calculate` (float64 numpy, eV and Å units)
        without ASE's caching. Other drivers (the OpenMM plugin) call this directly, so they share the skin
        neighbour list and the result conversion. ``stress`` is computed only for fully periodic structures."""
        graph = self.graph(atoms)
        want_stress = stress and bool(np.all(atoms.pbc))
        out = self.model(graph, compute_forces=True, compute_stress=want_stress)
        energy = float(out[keys.ENERGY].detach().sum())
        results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out[keys.FORCES].detach().cpu().double().numpy(),
        }
        if keys.ENERGIES in out:
            results["energies"] = out[keys.ENERGIES].detach().cpu().double().numpy()
        if keys.CHARGES in out:
            results["charges"] = out[keys.CHARGES].detach().cpu().double().numpy()
        if want_stress:
            results["stress"] = full_3x3_to_voigt_6_stress(out[keys.STRESS][0].detach().cpu().double().numpy())
        for key in (keys.ENERGY_STD, keys.FORCES_STD, keys.STRESS_STD):
            if key in out:
                value = out[key].detach().cpu().double().numpy()
                results[key] = value[0] if key != keys.FORCES_STD else value
        return results

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        # Periodic boxes get the stress in the same backward pass: barostats and pressure logs ask for it right
        # after the forces, and a second call would cost a whole network evaluation.
        self.results = self.evaluate(self.atoms, stress=True)
