"""Labelled datasets: extxyz (plain or gzipped) and ASE databases -> AtomicGraph batches with reference targets.

Targets per batch (only where every structure in the batch has them; masks mark the rest):
energy (B,) eV, forces (N, 3) eV/Å, charges (N,) e, dipole (B, 3) e·Å, stress (B, 3, 3) eV/Å³.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from mlmd import keys
from mlmd.errors import InputError
from mlmd.graph import AtomicGraph, collate, graph_from_atoms

_EXTXYZ_SUFFIXES = (".xyz", ".extxyz", ".xyz.gz", ".extxyz.gz")


def _read_one(path: Path) -> list[Atoms]:
    import ase.db
    import ase.io

    name = path.name
    if not path.exists():
        raise InputError(f"data file {path} does not exist")
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rt") as handle:
                return list(ase.io.read(io.StringIO(handle.read()), index=":", format="extxyz"))
        if name.endswith((".xyz", ".extxyz")):
            return list(ase.io.read(path, index=":", format="extxyz"))
        if name.endswith(".db"):
            frames = []
            with ase.db.connect(path) as db:
                for row in db.select():
                    atoms = row.toatoms(add_additional_information=False)
                    atoms.info.update(row.key_value_pairs)
                    atoms.info.update({k: v for k, v in row.data.items() if k in (keys.REF_STRESS, keys.REF_DIPOLE)})
                    for key in (keys.REF_FORCES, keys.REF_CHARGES, keys.MOL_ID):
                        if key in row.data:
                            atoms.arrays[key] = np.asarray(row.data[key])
                    frames.append(atoms)
            return frames
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read {path} as {'an ASE database' if name.endswith('.db') else 'extended XYZ'}: "
                         f"{str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}") from None
    raise InputError(f"data file {path} has an unknown type; use {', '.join(_EXTXYZ_SUFFIXES)} or .db")


def read_frames(paths: str | Path | Sequence[str | Path], required: Sequence[str] = (keys.REF_ENERGY, keys.REF_FORCES)) -> list[Atoms]:
    """Read labelled frames from files or folders (folders: every extxyz/db file inside, sorted).

    Raises InputError when a frame lacks one of the ``required`` REF_* keys.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.name.endswith(_EXTXYZ_SUFFIXES + (".db",)))
        else:
            files.append(p)
    frames = [frame for f in files for frame in _read_one(f)]
    if not frames:
        raise InputError(f"no structures found in {', '.join(map(str, paths))}")
    for n, atoms in enumerate(frames):
        for key in required:
            if key not in atoms.info and key not in atoms.arrays:
                raise InputError(f"structure {n} has no {key!r}; the data must carry {', '.join(required)}")
        if keys.TOTAL_CHARGE not in atoms.info and keys.REF_CHARGES in atoms.arrays:
            net = float(np.sum(atoms.arrays[keys.REF_CHARGES]))
            if abs(net) > 0.5:  # a charged cluster whose charge was not recorded would be trained as neutral
                raise InputError(f"structure {n} has reference charges summing to {net:+.2f} e but no "
                                 f"{keys.TOTAL_CHARGE!r}; set info['{keys.TOTAL_CHARGE}'] to its integer charge")
    return frames


def split_indices(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> list[np.ndarray]:
    """Deterministic shuffled split of range(n) into parts with the given fractions (sum 1)."""
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f < 0 for f in fractions):
        raise InputError(f"split fractions {list(fractions)} must be non-negative and sum to 1")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum([0.0] + list(fractions)) * n).astype(int)
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def frames_hash(frames: Sequence[Atoms]) -> str:
    """sha256 over numbers, positions and reference labels: identifies the data a model saw."""
    digest = hashlib.sha256()
    for atoms in frames:
        digest.update(atoms.numbers.tobytes())
        digest.update(np.round(atoms.positions, 6).tobytes())
        digest.update(str(atoms.info.get(keys.REF_ENERGY)).encode())
    return digest.hexdigest()


@dataclass
class Sample:
    """One structure: its graph and reference targets (None where absent)."""

    graph: AtomicGraph
    energy: float | None
    forces: np.ndarray | None
    charges: np.ndarray | None
    dipole: np.ndarray | None
    stress: np.ndarray | None
    config_type: str


def _stress_3x3(value) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    if value.shape == (6,):
        xx, yy, zz, yz, xz, xy = value
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return value.reshape(3, 3)


def make_sample(atoms: Atoms, cutoff: float, species: Sequence[int]) -> Sample:
    info, arrays = atoms.info, atoms.arrays
    return Sample(
        graph=graph_from_atoms(atoms, cutoff, species),
        energy=float(info[keys.REF_ENERGY]) if keys.REF_ENERGY in info else None,
        forces=np.asarray(arrays[keys.REF_FORCES], dtype=np.float64) if keys.REF_FORCES in arrays else None,
        charges=np.asarray(arrays[keys.REF_CHARGES], dtype=np.float64) if keys.REF_CHARGES in arrays else None,
        dipole=np.asarray(info[keys.REF_DIPOLE], dtype=np.float64) if keys.REF_DIPOLE in info else None,
        stress=_stress_3x3(info[keys.REF_STRESS]) if keys.REF_STRESS in info else None,
        config_type=str(info.get(keys.CONFIG_TYPE, "default")),
    )


def collate_samples(samples: Sequence[Sample], dtype: torch.dtype = torch.float32) -> tuple[AtomicGraph, dict[str, torch.Tensor]]:
    """Batch samples: graph plus targets and masks (``<key>_mask``: (B,) bool, which structures carry the label)."""
    graph = collate([s.graph for s in samples]).to(dtype=dtype)
    targets: dict[str, torch.Tensor] = {}

    def per_structure(name, values, shape):
        mask = torch.tensor([v is not None for v in values])
        stacked = np.stack([np.zeros(shape) if v is None else v for v in values])
        targets[name] = torch.as_tensor(stacked, dtype=dtype)
        targets[name + "_mask"] = mask

    def per_atom(name, values, trailing):
        mask = torch.tensor([v is not None for v in values])
        parts = [np.zeros((s.graph.num_atoms,) + trailing) if v is None else v for s, v in zip(samples, values)]
        targets[name] = torch.as_tensor(np.concatenate(parts), dtype=dtype)
        targets[name + "_mask"] = mask

    per_structure(keys.ENERGY, [s.energy for s in samples], ())
    per_structure(keys.DIPOLE, [s.dipole for s in samples], (3,))
    per_structure(keys.STRESS, [s.stress for s in samples], (3, 3))
    per_atom(keys.FORCES, [s.forces for s in samples], (3,))
    per_atom(keys.CHARGES, [s.charges for s in samples], ())
    return graph, targets
