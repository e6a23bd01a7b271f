"""Crystal data: reading the benchmark CSVs, a deterministic split, and batching for the networks.

A crystal is held as a :class:`CrystalRecord` (fractional coordinates, lattice rows in Å, atomic numbers).
Batches are flat: ``frac [n_atoms, 3]``, ``lattice [B, 3, 3]`` (rows are the lattice vectors), ``numbers [n_atoms]``,
``batch [n_atoms]`` (crystal index of each atom).
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mlmd.errors import InputError
from mlmd.io import file_sha256

#: Default location of the benchmark data, relative to the repository root.
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "crystals"


@dataclass
class CrystalRecord:
    """One crystal. ``frac [n, 3]`` in [0, 1), ``lattice [3, 3]`` rows a, b, c in Å, ``numbers [n]``."""

    frac: np.ndarray
    lattice: np.ndarray
    numbers: np.ndarray
    material_id: str = ""

    @property
    def n_atoms(self) -> int:
        return int(len(self.numbers))

    @classmethod
    def from_structure(cls, structure, material_id: str = "") -> "CrystalRecord":
        """Canonical lattice orientation (pymatgen ``from_parameters``) and wrapped coordinates."""
        from pymatgen.core import Lattice

        lat = Lattice.from_parameters(*structure.lattice.parameters)
        return cls(
            frac=np.mod(np.asarray(structure.frac_coords, dtype=np.float64), 1.0),
            lattice=np.asarray(lat.matrix, dtype=np.float64),
            numbers=np.asarray(structure.atomic_numbers, dtype=np.int64),
            material_id=str(material_id),
        )

    def to_structure(self):
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), [int(z) for z in self.numbers], self.frac)


@dataclass
class CrystalDataset:
    """Crystals read from a file plus what was skipped while reading."""

    records: list[CrystalRecord]
    source: str = ""
    data_hash: str = ""
    n_skipped: int = 0
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


def resolve_data_path(path: str | os.PathLike) -> Path:
    """Accept a CSV path or a data-set name (``perov_5``, ``carbon_24``) under ``../shared/data/crystals``."""
    p = Path(path)
    if p.is_file():
        return p
    for root in (DEFAULT_DATA_ROOT, Path.cwd().parent / "shared" / "data" / "crystals"):
        cand = root / str(path) / "val.csv"
        if cand.is_file():
            return cand
    raise InputError(f"crystal data {str(path)!r} not found; give a CSV file with a 'cif' column or one of perov_5, carbon_24")


def read_crystal_csv(path: str | os.PathLike, limit: int | None = None) -> CrystalDataset:
    """Read a CDVAE-style CSV (columns ``material_id``, ``cif``). Malformed CIFs are skipped and counted."""
    from pymatgen.core import Structure

    p = resolve_data_path(path)
    csv.field_size_limit(sys.maxsize)
    records: list[CrystalRecord] = []
    skipped: list[str] = []
    with open(p, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "cif" not in reader.fieldnames:
            raise InputError(f"{str(p)!r} has no 'cif' column; expected a CSV with columns material_id, cif")
        for row_no, row in enumerate(reader):
            if limit is not None and len(records) >= limit:
                break
            mid = row.get("material_id") or str(row_no)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    s = Structure.from_str(row["cif"], fmt="cif")
                if len(s) == 0 or not s.is_ordered:
                    raise ValueError("empty or disordered")
                records.append(CrystalRecord.from_structure(s, mid))
            except Exception:  # noqa: BLE001 - any parse failure is a skipped row
                skipped.append(mid)
    return CrystalDataset(records, str(p), file_sha256(p), len(skipped), skipped)


def split_indices(n: int, seed: int = 42, fractions=(0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    """Deterministic train/val/test split of ``n`` items (a seeded permutation)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise InputError(f"split fractions {list(fractions)} must be three non-negative numbers summing to 1")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}


def load_split(path, seed: int = 42, fractions=(0.8, 0.1, 0.1)) -> tuple[dict[str, list[CrystalRecord]], CrystalDataset]:
    ds = read_crystal_csv(path)
    idx = split_indices(len(ds), seed, fractions)
    return {k: [ds.records[i] for i in v] for k, v in idx.items()}, ds


@dataclass
class CrystalBatch:
    """Flat batch. Shapes: frac [n,3], lattice [B,3,3], types [n] (vocabulary index), batch [n]."""

    frac: torch.Tensor
    lattice: torch.Tensor
    types: torch.Tensor
    batch: torch.Tensor
    n_crystals: int


def collate(records: list[CrystalRecord], vocab_index: dict[int, int], dtype=torch.float32) -> CrystalBatch:
    frac = torch.tensor(np.concatenate([r.frac for r in records]), dtype=dtype)
    lattice = torch.tensor(np.stack([r.lattice for r in records]), dtype=dtype)
    try:
        types = torch.tensor([vocab_index[int(z)] for r in records for z in r.numbers], dtype=torch.long)
    except KeyError as exc:
        raise InputError(f"element Z={exc.args[0]} is not in the model's vocabulary") from None
    batch = torch.repeat_interleave(torch.arange(len(records)), torch.tensor([r.n_atoms for r in records]))
    return CrystalBatch(frac, lattice, types, batch, len(records))


def records_to_csv_text(records: list[CrystalRecord]) -> str:
    """Write records as a CDVAE-style CSV (material_id, cif) — used for small fixtures."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["", "material_id", "cif"])
    for i, r in enumerate(records):
        w.writerow([i, r.material_id or str(i), r.to_structure().to(fmt="cif")])
    return buf.getvalue()
