"""Periodic liquid boxes packed with packmol at a target density, with molecule ids recorded."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.io import read, write

from mlmd import keys
from mlmd.errors import InputError
from mlmd.units import G_PER_CM3_PER_AMU_PER_A3
from workflows.labelling.clusters import packmol_binary
from workflows.labelling.species import Species, molecule_atoms, resolve_species


def box_length(molecules: Sequence[tuple[Species, int]], density_g_cm3: float, seed: int = 0) -> float:
    """Cubic box edge (Å) holding ``molecules`` at ``density_g_cm3``."""
    if density_g_cm3 <= 0:
        raise InputError(f"density {density_g_cm3} g/cm³ must be positive")
    rng = np.random.default_rng(seed)
    mass = sum(molecule_atoms(sp, rng).get_masses().sum() * n for sp, n in molecules)
    return float((mass * G_PER_CM3_PER_AMU_PER_A3 / density_g_cm3) ** (1 / 3))


def pack_periodic(templates: Sequence[tuple[Atoms, int]], length: float, seed: int = 0, tolerance: float = 2.0,
                  name: str = "the box") -> Atoms:
    """Pack ``count`` copies of each template molecule into a periodic cube of edge ``length`` Å with packmol.

    Molecules are left whole (not wrapped). Returns Atoms with pbc and per-atom ``mol_id`` in packing order.
    """
    with tempfile.TemporaryDirectory(prefix="mlmd-box-") as tmp:
        lines = [f"tolerance {tolerance}", "filetype xyz", "output packed.xyz", f"seed {seed % 2**31 + 1}",
                 f"pbc 0. 0. 0. {length:.4f} {length:.4f} {length:.4f}", ""]
        for k, (template, count) in enumerate(templates):
            write(os.path.join(tmp, f"m{k}.xyz"), template, format="xyz")
            lines += [f"structure m{k}.xyz", f"  number {count}",
                      f"  inside box 0. 0. 0. {length:.4f} {length:.4f} {length:.4f}", "end structure", ""]
        Path(tmp, "pack.inp").write_text("\n".join(lines))
        with open(os.path.join(tmp, "pack.inp")) as stdin:
            proc = subprocess.run([packmol_binary()], stdin=stdin, cwd=tmp, capture_output=True, text=True, timeout=900)
        out = Path(tmp, "packed.xyz")
        if not out.exists():
            out = Path(tmp, "packed.xyz_FORCED")
            if not out.exists():
                raise InputError(f"packmol could not pack {name}: {proc.stdout[-200:]!r}")
        atoms = read(out, format="xyz")
    atoms.set_cell([length] * 3)
    atoms.pbc = True
    molecules = [t for t, count in templates for _ in range(count)]
    atoms.arrays[keys.MOL_ID] = np.concatenate([np.full(len(t), m, dtype=int) for m, t in enumerate(molecules)])
    return atoms


def build_box(molecules: Sequence[tuple[Species | str, int]], density_g_cm3: float, seed: int = 0,
              tolerance: float = 2.0) -> Atoms:
    """Pack molecules (species or names/SMILES, count) into a periodic cubic box at the given density.

    Returns Atoms with pbc, ``mol_id`` per atom, ``info['total_charge']`` and ``info['composition']``.
    """
    resolved = [(resolve_species(sp) if isinstance(sp, str) else sp, int(n)) for sp, n in molecules]
    if any(n < 0 for _, n in resolved) or sum(n for _, n in resolved) == 0:
        raise InputError(f"molecule counts {[n for _, n in resolved]} must be non-negative with at least one molecule")
    resolved = [(sp, n) for sp, n in resolved if n > 0]
    rng = np.random.default_rng(seed)
    templates = [(molecule_atoms(sp, rng), n) for sp, n in resolved]
    atoms = pack_periodic(templates, box_length(resolved, density_g_cm3, seed), seed, tolerance)
    atoms.info[keys.TOTAL_CHARGE] = int(sum(sp.charge * n for sp, n in resolved))
    atoms.info["composition"] = " ".join(f"{sp.name}:{n}" for sp, n in resolved)
    return atoms


def ec_dmc_lipf6_box(scale: int = 1, seed: int = 0) -> Atoms:
    """EC/DMC (≈1:1 by mole) + LiPF6 at ≈1 mol/L: 278 atoms per ``scale`` (1 -> 278, 4 -> 1,112 atoms)."""
    return build_box([("EC", 13 * scale), ("DMC", 11 * scale), ("Li", 2 * scale), ("PF6", 2 * scale)], 1.25, seed)
