"""AtomicGraph: the one batched structure type every model and sampler consumes.

Shapes: N atoms in the batch, B structures, E directed edges (each pair appears as i->j and j->i).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from mlmd import keys
from mlmd.errors import InputError
from mlmd.neighbors import neighbor_list

MIN_DISTANCE_A = 0.5


@dataclass
class AtomicGraph:
    """A batch of structures with a neighbour list.

    positions: (N, 3) Å. atomic_numbers: (N,) int64. cell: (B, 3, 3) Å (rows = lattice vectors; zeros when
    non-periodic). pbc: (B, 3) bool. edge_index: (2, E) int64 [centre i, neighbour j].
    edge_cell_shifts: (E, 3) float, integer-valued, with r_ij = pos[j] - pos[i] + shifts @ cell[batch[i]].
    batch: (N,) int64 structure of each atom. ptr: (B + 1,) atom offsets. total_charge: (B,) float e.
    mol_id: (N,) int64 molecule index, unique across the batch; -1 where unknown.
    cutoff: the neighbour-list cutoff in Å (edges may extend to cutoff + skin; models mask by distance).
    """

    positions: torch.Tensor
    atomic_numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    edge_index: torch.Tensor
    edge_cell_shifts: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    total_charge: torch.Tensor
    mol_id: torch.Tensor
    cutoff: float

    @property
    def num_graphs(self) -> int:
        return int(self.ptr.numel() - 1)

    @property
    def num_atoms(self) -> int:
        return int(self.positions.shape[0])

    def edge_vectors(self, positions: torch.Tensor | None = None, cell: torch.Tensor | None = None) -> torch.Tensor:
        """(E, 3) r_ij = pos[j] - pos[i] + shift; pass strained ``positions``/``cell`` for stress."""
        positions = self.positions if positions is None else positions
        cell = self.cell if cell is None else cell
        i, j = self.edge_index
        if cell.shape[0] == 1:
            shifts = self.edge_cell_shifts @ cell[0]  # one matmul; the batched form gathers a 3x3 cell per edge
        else:
            shifts = torch.einsum("ek,ekl->el", self.edge_cell_shifts, cell[self.batch[i]])
        # index_select, not positions[j]: its backward is an index_add, about twice as fast as indexing's index_put
        return positions.index_select(0, j) - positions.index_select(0, i) + shifts

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "AtomicGraph":
        """Move to ``device``; cast floating tensors to ``dtype``."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                if dtype is not None and value.is_floating_point():
                    value = value.to(dtype=dtype)
                if device is not None:
                    value = value.to(device=device)
                changes[f.name] = value
        return replace(self, **changes)

    def volumes(self) -> torch.Tensor:
        """(B,) |det cell| in Å³ (0 for non-periodic structures)."""
        return torch.linalg.det(self.cell).abs()


def validate_atoms(atoms: Atoms, species: Sequence[int] | None = None) -> None:
    """Reject structures no model should see: NaN/inf, zero-volume periodic cells, unknown elements."""
    positions = atoms.get_positions()
    if not np.isfinite(positions).all():
        bad = int(np.argwhere(~np.isfinite(positions).all(axis=1))[0, 0])
        raise InputError(f"atom {bad} has a non-finite position {positions[bad].tolist()}; positions must be finite numbers")
    if atoms.pbc.any():
        cell = np.asarray(atoms.cell)
        if not np.isfinite(cell).all():
            raise InputError("the cell holds NaN or inf; a periodic cell must be finite")
        volume = abs(np.linalg.det(cell)) if atoms.pbc.all() else None
        if volume is not None and volume < 1e-6:
            raise InputError(f"the periodic cell has zero volume ({volume:.3g} Å³); give three independent lattice vectors")
        for axis in np.flatnonzero(atoms.pbc):
            if np.linalg.norm(cell[axis]) < 1e-6:
                raise InputError(f"periodic direction {axis} has a zero-length lattice vector; set a cell or pbc=False there")
    if species is not None:
        unknown = sorted(set(atoms.numbers.tolist()) - set(int(z) for z in species))
        if unknown:
            from ase.data import chemical_symbols

            names = ", ".join(chemical_symbols[z] for z in unknown)
            accepted = " ".join(chemical_symbols[int(z)] for z in sorted(species))
            raise InputError(f"element(s) {names} not known to the model; it accepts {accepted}")


def total_charge_of(atoms: Atoms) -> float:
    """The structure's total charge from ``atoms.info['total_charge']`` (0 when absent); must be an integer."""
    value = atoms.info.get(keys.TOTAL_CHARGE, 0)
    try:
        charge = float(value)
    except (TypeError, ValueError):
        raise InputError(f"total_charge {value!r} is not a number; give an integer charge in e") from None
    if not np.isfinite(charge) or abs(charge - round(charge)) > 1e-6:
        raise InputError(f"total_charge {value!r} is not an integer; give an integer charge in e")
    return float(round(charge))


def check_min_distance(positions: np.ndarray, cell: np.ndarray, i: np.ndarray, j: np.ndarray, shifts: np.ndarray,
                       threshold: float = MIN_DISTANCE_A) -> None:
    """Raise InputError when two atoms are closer than ``threshold`` Å (uses an existing neighbour list)."""
    if len(i) == 0:
        return
    vectors = positions[j] - positions[i] + shifts @ cell
    distances = np.linalg.norm(vectors, axis=1)
    k = int(np.argmin(distances))
    if distances[k] < threshold:
        raise InputError(
            f"atoms {int(i[k])} and {int(j[k])} are {distances[k]:.3f} Å apart; atoms closer than {threshold} Å are rejected"
        )


def graph_from_atoms(
    atoms: Atoms,
    cutoff: float,
    species: Sequence[int] | None = None,
    skin: float = 0.0,
    check: bool = True,
) -> AtomicGraph:
    """Build a one-structure AtomicGraph (float64) from ``atoms`` with a vesin neighbour list.

    ``species`` restricts the accepted elements; ``skin`` widens the list (the model masks by distance).
    """
    if check:
        validate_atoms(atoms, species)
    positions = np.asarray(atoms.get_positions(), dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    i, j, shifts = neighbor_list(positions, cell, pbc, cutoff + skin)
    if check:
        check_min_distance(positions, cell, i, j, shifts)
    mol_id = atoms.arrays.get(keys.MOL_ID)
    mol_id = np.full(len(atoms), -1, dtype=np.int64) if mol_id is None else np.asarray(mol_id, dtype=np.int64)
    return AtomicGraph(
        positions=torch.from_numpy(positions),
        atomic_numbers=torch.from_numpy(atoms.numbers.astype(np.int64)),
        cell=torch.from_numpy(cell)[None],
        pbc=torch.from_numpy(pbc)[None],
        edge_index=torch.from_numpy(np.stack([i, j])),
        edge_cell_shifts=torch.from_numpy(shifts.astype(np.float64)),
        batch=torch.zeros(len(atoms), dtype=torch.long),
        ptr=torch.tensor([0, len(atoms)], dtype=torch.long),
        total_charge=torch.tensor([total_charge_of(atoms)], dtype=torch.float64),
        mol_id=torch.from_numpy(mol_id),
        cutoff=float(cutoff),
    )


def collate(graphs: Sequence[AtomicGraph]) -> AtomicGraph:
    """Concatenate single- or multi-structure graphs into one batch (offsets edges, batch and mol_id)."""
    if not graphs:
        raise InputError("cannot batch an empty list of structures")
    atom_offsets = np.cumsum([0] + [g.num_atoms for g in graphs])
    graph_offsets = np.cumsum([0] + [g.num_graphs for g in graphs])
    edge_index, batch, mol_id, ptr = [], [], [], [torch.zeros(1, dtype=torch.long)]
    mol_offset = 0
    for g, a0, b0 in zip(graphs, atom_offsets[:-1], graph_offsets[:-1]):
        edge_index.append(g.edge_index + int(a0))
        batch.append(g.batch + int(b0))
        known = g.mol_id >= 0
        mol_id.append(torch.where(known, g.mol_id + mol_offset, g.mol_id))
        if known.any():
            mol_offset += int(g.mol_id.max()) + 1
        ptr.append(g.ptr[1:] + int(a0))
    return AtomicGraph(
        positions=torch.cat([g.positions for g in graphs]),
        atomic_numbers=torch.cat([g.atomic_numbers for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        edge_index=torch.cat(edge_index, dim=1),
        edge_cell_shifts=torch.cat([g.edge_cell_shifts for g in graphs]),
        batch=torch.cat(batch),
        ptr=torch.cat(ptr),
        total_charge=torch.cat([g.total_charge for g in graphs]),
        mol_id=torch.cat(mol_id),
        cutoff=graphs[0].cutoff,
    )
