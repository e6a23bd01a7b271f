"""Input checks before a run and guards during it.

:func:`check_structure` rejects structures an MD run cannot start from (InputError). :func:`check_state`
returns ``None`` for a healthy state or a :class:`Trip` naming the guard, the value and the limit; the engine
turns a trip into a :class:`mlmd.errors.SimulationError` after saving the last good frame.
Distances come from a vesin neighbour list (periodic, triclinic and mixed boundaries), never O(N²) loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from mlmd.errors import InputError


@dataclass(frozen=True)
class Trip:
    """A guard that tripped: ``guard`` is its name, ``detail`` a short description with the value and limit."""

    guard: str
    detail: str


def min_distance(atoms: Atoms, cutoff: float) -> tuple[float, int, int] | None:
    """Shortest interatomic distance below ``cutoff`` (Å) as ``(d, i, j)``, or None when no pair is that close.

    Periodic images count (an atom closer than ``cutoff`` to its own image is reported with i == j).
    """
    import vesin

    if len(atoms) < 2 and not atoms.pbc.any():
        return None
    pbc = [bool(p) for p in atoms.pbc]
    box = np.asarray(atoms.cell.array, dtype=np.float64)
    if not any(pbc):
        box = np.zeros((3, 3))
    points = np.ascontiguousarray(atoms.positions, dtype=np.float64)
    # A cell list with cells as small as a sub-Å cutoff has millions of cells and is slow; search at about the
    # mean interatomic spacing (capped at 3 Å, never below the threshold) and filter.
    if all(pbc):
        volume = abs(float(np.linalg.det(box)))
    else:
        span = np.ptp(points, axis=0) if len(points) > 1 else np.zeros(3)
        volume = float(np.prod(np.maximum(span, 1.0)))
    spacing = (volume / max(len(atoms), 1)) ** (1.0 / 3.0) if volume > 0 else 0.0
    search = max(float(cutoff), min(3.0, spacing))
    nl = vesin.NeighborList(cutoff=search, full_list=False)
    i, j, d = nl.compute(points, box, pbc, quantities="ijd")
    if len(d) == 0:
        return None
    k = int(np.argmin(d))
    if d[k] >= cutoff:
        return None
    return float(d[k]), int(i[k]), int(j[k])


def _periodic_cell_ok(atoms: Atoms) -> bool:
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    vectors = cell[np.asarray(atoms.pbc, dtype=bool)]
    if len(vectors) == 0:
        return True
    if not np.all(np.isfinite(vectors)):
        return False
    # Gram determinant = squared volume (area, length) spanned by the periodic vectors; normalised by the
    # squared lengths it is a shape factor in [0, 1] that is ~0 for degenerate (flat, collinear) cells.
    gram = vectors @ vectors.T
    lengths2 = np.diag(gram)
    if np.any(lengths2 < 1e-12):
        return False
    return bool(np.linalg.det(gram) / np.prod(lengths2) > 1e-10)


def check_structure(atoms: Atoms, min_distance_A: float = 0.5) -> None:
    """Raise InputError when ``atoms`` cannot start an MD run: no atoms, NaN/inf positions or cell,
    a periodic cell with zero volume, or two atoms closer than ``min_distance_A``."""
    if len(atoms) == 0:
        raise InputError("structure has no atoms; give a structure with at least one atom")
    pos = atoms.positions
    bad = ~np.isfinite(pos).all(axis=1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"atom {k} has a non-finite position {pos[k].tolist()}; all positions must be finite numbers (Å)"
        )
    if atoms.pbc.any():
        if not _periodic_cell_ok(atoms):
            raise InputError(
                f"periodic cell {np.round(atoms.cell.array, 6).tolist()} (pbc={atoms.pbc.tolist()}) has zero volume; "
                "periodic directions need linearly independent, non-zero cell vectors"
            )
    close = min_distance(atoms, min_distance_A)
    if close is not None:
        d, i, j = close
        raise InputError(
            f"atoms {i} and {j} are {d:.3f} Å apart, closer than {min_distance_A} Å; "
            "fix the structure (overlapping atoms) before running MD"
        )


def temperature_limit(target_K: float | None, factor: float | None, max_K: float | None) -> float | None:
    """The temperature above which the runaway guard trips (None: no limit)."""
    limits = []
    if factor is not None and target_K is not None and target_K > 0:
        limits.append(factor * target_K)
    if max_K is not None:
        limits.append(max_K)
    return min(limits) if limits else None


def check_state(
    atoms: Atoms,
    *,
    energy: float,
    forces: np.ndarray,
    temperature_K: float,
    min_distance_A: float,
    temperature_limit_K: float | None,
    max_forces_std: float | None,
    calc_results: dict | None = None,
) -> Trip | None:
    """Check one MD state; return the first guard that trips, or None."""
    pos = atoms.positions
    if not np.all(np.isfinite(pos)):
        k = int(np.flatnonzero(~np.isfinite(pos).all(axis=1))[0])
        return Trip("nan", f"non-finite position of atom {k}")
    if not np.all(np.isfinite(atoms.cell.array)):
        return Trip("nan", "non-finite cell")
    if not np.isfinite(energy):
        return Trip("nan", f"non-finite potential energy {energy}")
    if not np.all(np.isfinite(forces)):
        k = int(np.flatnonzero(~np.isfinite(forces).all(axis=1))[0])
        return Trip("nan", f"non-finite force on atom {k}")
    if not np.isfinite(temperature_K):
        return Trip("nan", f"non-finite temperature {temperature_K}")
    if temperature_limit_K is not None and temperature_K > temperature_limit_K:
        return Trip("temperature", f"T = {temperature_K:.1f} K exceeds the limit {temperature_limit_K:.1f} K")
    close = min_distance(atoms, min_distance_A)
    if close is not None:
        d, i, j = close
        return Trip("min_distance", f"atoms {i} and {j} are {d:.3f} Å apart (limit {min_distance_A} Å)")
    if max_forces_std is not None and calc_results is not None and "forces_std" in calc_results:
        std = np.asarray(calc_results["forces_std"], dtype=np.float64).reshape(len(atoms), -1)
        per_atom = np.linalg.norm(std, axis=1) if std.shape[1] == 3 else std[:, 0]
        k = int(np.argmax(per_atom))
        if not np.isfinite(per_atom[k]) or per_atom[k] > max_forces_std:
            return Trip(
                "forces_std",
                f"force uncertainty {per_atom[k]:.3f} eV/Å on atom {k} exceeds {max_forces_std} eV/Å",
            )
    return None
