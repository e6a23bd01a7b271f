"""Neighbour lists through vesin (periodic, triclinic, mixed and non-periodic boundaries)."""

from __future__ import annotations

import numpy as np
import vesin


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, full: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour list within ``cutoff``: full (each pair in both directions) or half (each pair, self-images
    included, once).

    Args:
        positions: (N, 3) Å.
        cell: (3, 3) Å, rows are lattice vectors (ignored along non-periodic directions).
        pbc: (3,) bool.
        cutoff: Å.
        full: both directions (message passing) or one (pair energies).
        Pairs come sorted, so sums over them (and MD restarts) do not depend on when a list was built.

    Returns:
        i: (E,) int64 centre atoms; j: (E,) int64 neighbours; shifts: (E, 3) int64 lattice shifts with
        r_ij = positions[j] - positions[i] + shifts @ cell.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    box = np.asarray(cell, dtype=np.float64).copy()
    if not pbc.any():
        box = np.zeros((3, 3))
    if len(positions) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros((0, 3), dtype=np.int64)
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=full, sorted=True)
    i, j, shifts = calculator.compute(points=positions, box=box, periodic=pbc.tolist(), quantities="ijS")
    return i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64)


def skin_list_valid(old_positions: np.ndarray, old_cell: np.ndarray, positions: np.ndarray, cell: np.ndarray,
                    pbc: np.ndarray, cutoff: float, skin: float) -> bool:
    """Whether a list built at ``cutoff + skin`` for (old_positions, old_cell) still holds every pair within
    ``cutoff`` for (positions, cell), including after a cell change (NPT).

    With the cell strain E = H_old^-1 (H - H_old), a pair vector d changes by d E plus the atoms' non-affine
    displacements u = r - r_old (I + E); pairs beyond cutoff + skin stay beyond cutoff while
    2 max|u| + (cutoff + skin) ||E||_2 < skin. Without a cell change this is the usual max|u| < skin / 2.
    Shapes: positions (N, 3) Å, cell (3, 3) Å rows, pbc (3,).
    """
    if old_positions.shape != positions.shape:
        return False
    if np.array_equal(old_cell, cell):
        strain = np.zeros((3, 3))
    elif np.all(pbc):
        try:
            strain = np.linalg.solve(old_cell, cell - old_cell)
        except np.linalg.LinAlgError:
            return False
    else:  # a partly periodic cell changed: rebuild
        return False
    nonaffine = positions - old_positions @ (np.eye(3) + strain)
    shift = 2.0 * np.sqrt((nonaffine**2).sum(axis=1).max(initial=0.0))
    return bool(shift + (cutoff + skin) * np.linalg.norm(strain, 2) < skin)
