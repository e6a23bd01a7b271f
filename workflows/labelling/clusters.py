"""Cluster compositions and their packmol geometries.

A :class:`ClusterSpec` names a cluster kind (``solvent``, ``mixture``, ``li_shell``, ``anion_shell``, ``ion_pair``,
``aggregate``), the molecules in it and the total charge. :func:`sample_spec` draws one from a seeded random
generator within an atom-count window; :func:`build_cluster` packs it with packmol into a sphere (non-periodic
``ase.Atoms`` with per-atom ``mol_id`` and ``info['total_charge']``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write

from mlmd import keys
from mlmd.errors import ConfigError, InputError

from .species import Species, molecule_atoms, resolve_salt, resolve_species

KINDS = ("solvent", "mixture", "li_shell", "anion_shell", "ion_pair", "aggregate")

_AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660


@dataclass
class ClusterSpec:
    """kind: cluster kind; molecules: [(species, count)] in packing order (a central ion first); charge: e."""

    kind: str
    molecules: list[tuple[Species, int]] = field(default_factory=list)
    center_first: bool = False  # the first molecule (one ion) is fixed at the centre
    ion_core: bool = False  # all ions start in contact, inside a small central sphere

    @property
    def charge(self) -> int:
        return int(sum(s.charge * n for s, n in self.molecules))

    @property
    def n_atoms(self) -> int:
        return sum(_n_atoms(s) * n for s, n in self.molecules)

    @property
    def composition(self) -> str:
        return " ".join(f"{s.name}:{n}" for s, n in self.molecules)


def _n_atoms(species: Species) -> int:
    return len(molecule_atoms(species))


def _add(molecules: list[tuple[Species, int]], species: Species, n: int = 1) -> None:
    for i, (s, m) in enumerate(molecules):
        if s == species:
            molecules[i] = (s, m + n)
            return
    molecules.append((species, n))


def _fill(molecules, pool: list[Species], rng, target: int, min_atoms: int, max_atoms: int, min_add: int = 0) -> None:
    """Add molecules drawn from ``pool`` until the atom count reaches ``target`` (never above ``max_atoms``)."""
    count = sum(_n_atoms(s) * n for s, n in molecules)
    added = 0
    for _ in range(200):
        s = pool[int(rng.integers(len(pool)))]
        size = _n_atoms(s)
        if count + size > max_atoms:
            smaller = [p for p in pool if count + _n_atoms(p) <= max_atoms]
            if not smaller or (count >= min_atoms and added >= min_add):
                break
            s = smaller[int(rng.integers(len(smaller)))]
            size = _n_atoms(s)
        if count >= target and count >= min_atoms and added >= min_add:
            break
        _add(molecules, s)
        count += size
        added += 1


def sample_spec(
    kind: str,
    rng: np.random.Generator,
    solvents: list[Species],
    salts: list[tuple[Species, Species]],
    min_atoms: int,
    max_atoms: int,
) -> ClusterSpec:
    """Draw a cluster composition of ``kind`` with between ``min_atoms`` and ``max_atoms`` atoms (best effort)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown cluster kind '{kind}'; accepted: {', '.join(KINDS)}")
    target = int(rng.integers(min_atoms, max_atoms + 1))
    spec = ClusterSpec(kind)
    mols = spec.molecules
    if kind == "solvent":
        _fill(mols, [solvents[int(rng.integers(len(solvents)))]], rng, target, min_atoms, max_atoms, min_add=1)
    elif kind == "mixture":
        k = min(len(solvents), int(rng.integers(2, 4)))
        pool = [solvents[i] for i in rng.choice(len(solvents), size=k, replace=False)]
        for s in pool:  # each component at least once
            if spec.n_atoms + _n_atoms(s) <= max_atoms or not mols:
                _add(mols, s)
        _fill(mols, pool, rng, target, min_atoms, max_atoms)
    else:
        cation, anion = salts[int(rng.integers(len(salts)))]
        k = min(len(solvents), int(rng.integers(1, 3)))
        pool = [solvents[i] for i in rng.choice(len(solvents), size=k, replace=False)]
        if kind == "li_shell":
            _add(mols, cation)
            spec.center_first = True
            _fill(mols, pool, rng, target, min_atoms, max_atoms, min_add=2)
        elif kind == "anion_shell":
            _add(mols, anion)
            spec.center_first = True
            _fill(mols, pool, rng, target, min_atoms, max_atoms, min_add=2)
        elif kind == "ion_pair":
            spec.ion_core = True
            _add(mols, cation)
            _add(mols, anion)
            _fill(mols, pool, rng, target, min_atoms, max_atoms, min_add=1)
        else:  # aggregate: 2-3 Li and 1-4 anions, |charge| <= 1, in a solvent shell
            spec.ion_core = True
            n_li = int(rng.integers(2, 4))
            n_an = n_li + int(rng.integers(-1, 2))
            anions = [anion]
            if len(salts) > 1 and rng.random() < 0.3:  # mixed-anion aggregate
                anions.append(salts[int(rng.integers(len(salts)))][1])
            _add(mols, cation, n_li)
            for i in range(n_an):
                _add(mols, anions[i % len(anions)])
            # shrink the ionic core if it alone overflows the window
            while spec.n_atoms > max_atoms and n_an > 1:
                a, m = mols[-1]
                mols[-1] = (a, m - 1)
                if m - 1 == 0:
                    mols.pop()
                n_an -= 1
                if n_li - n_an > 1:
                    s, m = mols[0]
                    mols[0] = (s, m - 1)
                    n_li -= 1
            _fill(mols, pool, rng, target, min_atoms, max_atoms)
    return spec


def packmol_binary() -> str:
    """Path of the packmol executable (the ``packmol`` PyPI package installs it beside the interpreter)."""
    candidates = [Path(sys.executable).with_name("packmol"), shutil.which("packmol")]
    for c in candidates:
        if c and os.access(str(c), os.X_OK):
            return str(c)
    raise InputError("packmol executable not found; install the 'packmol' package into this environment")


def _radius(spec: ClusterSpec, density: float, mols: list[Atoms]) -> float:
    mass = sum(m.get_masses().sum() for m in mols)
    volume = mass * _AMU_PER_A3_TO_G_PER_CM3 / density
    return float((3 * volume / (4 * np.pi)) ** (1 / 3))


def _pack(spec: ClusterSpec, templates: list[Atoms], counts: list[int], radius: float, core: float, seed: int,
          tolerance: float) -> tuple[Atoms | None, str]:
    """One packmol run: the packed Atoms (None if packmol found no packing) and packmol's output."""
    exe = packmol_binary()
    with tempfile.TemporaryDirectory(prefix="mlmd-packmol-") as tmp:
        lines = [f"tolerance {tolerance}", "filetype xyz", "output packed.xyz", f"seed {seed % 2**31 + 1}",
                 "nloop0 200", "nloop 200", "maxit 20", ""]
        for i, (t, n) in enumerate(zip(templates, counts)):
            write(os.path.join(tmp, f"m{i}.xyz"), t, format="xyz")
            if spec.center_first and i == 0 and n == 1:
                lines += [f"structure m{i}.xyz", "  number 1", "  center", "  fixed 0. 0. 0. 0. 0. 0.",
                          "end structure", ""]
            elif spec.ion_core and spec.molecules[i][0].charge != 0:
                lines += [f"structure m{i}.xyz", f"  number {n}", f"  inside sphere 0. 0. 0. {core:.3f}",
                          "end structure", ""]
            else:
                lines += [f"structure m{i}.xyz", f"  number {n}", f"  inside sphere 0. 0. 0. {radius:.3f}",
                          "end structure", ""]
        Path(tmp, "pack.inp").write_text("\n".join(lines))
        with open(os.path.join(tmp, "pack.inp")) as fin:
            proc = subprocess.run([exe], stdin=fin, cwd=tmp, capture_output=True, text=True, timeout=120)
        for name in ("packed.xyz", "packed.xyz_FORCED"):
            if Path(tmp, name).exists():
                return read(Path(tmp, name), format="xyz"), proc.stdout
    return None, proc.stdout


def build_cluster(spec: ClusterSpec, seed: int, density: float = 1.0, tolerance: float = 2.0) -> Atoms:
    """Pack ``spec`` into a sphere with packmol; returns non-periodic Atoms centred at the origin.

    Per-atom ``mol_id`` numbers the molecules in packing order; ``info['total_charge']`` is the formal charge.
    A central ion (li_shell, anion_shell) is fixed at the sphere's centre.
    """
    rng = np.random.default_rng(seed)
    templates: list[Atoms] = []
    counts: list[int] = []
    for species, n in spec.molecules:
        templates.append(molecule_atoms(species, rng))
        counts.append(n)
    all_mols = [t for t, n in zip(templates, counts) for _ in range(n)]
    radius = _radius(spec, density, all_mols) + 1.0
    ions = [t for t, (s, n) in zip(templates, spec.molecules) for _ in range(n) if s.charge != 0]
    # contact ion pair / aggregate: ion centres within a sphere sized by the ionic volume (+ ion radius)
    core = max(2.6, _radius(spec, 2.2, ions) + 0.6)
    atoms, log = _pack(spec, templates, counts, radius, core, seed, tolerance)
    longest = max(float(np.linalg.norm(t.positions - t.positions.mean(axis=0), axis=1).max()) for t in templates)
    if atoms is None and longest + 0.5 > radius:
        # A long chain (a lone glyme) can outgrow the sphere its volume gives. Widen only then, so that every
        # cluster that packs keeps the sphere it always had (and labelled data sets regenerate identically).
        atoms, log = _pack(spec, templates, counts, longest + 0.5, core, seed, tolerance)
    if atoms is None:
        raise InputError(f"packmol failed for cluster '{spec.composition}': {log[-300:]!r}")
    mol_id = np.concatenate([np.full(len(m), i, dtype=int) for i, m in enumerate(all_mols)])
    expected = np.concatenate([m.numbers for m in all_mols])
    if len(atoms) != len(expected) or not np.array_equal(atoms.numbers, expected):
        raise InputError(f"packmol returned an unexpected structure for '{spec.composition}'")
    atoms.positions -= atoms.get_center_of_mass()
    atoms.pbc = False
    atoms.cell = None
    atoms.arrays[keys.MOL_ID] = mol_id
    atoms.info[keys.TOTAL_CHARGE] = spec.charge
    atoms.info[keys.CONFIG_TYPE] = spec.kind
    atoms.info["composition"] = spec.composition
    return atoms
