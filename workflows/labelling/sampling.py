"""Sampling cluster configurations as a function of a calculator, and labelling them with a reference.

:class:`Reference` wraps the reference calculator: one single point per frame, a retry with gentler settings
when the SCF fails (an exception or non-finite results), and counts of recovered and skipped frames. A frame
whose calculation failed twice is never kept.

:func:`sample_cluster` runs short hot Langevin MD driven either by the reference itself (each MD step's
single point labels that frame, so kept frames cost ``keep_every`` calls) or by a separate *sampler*
calculator (e.g. an ML potential; kept frames are then labelled by the reference), and adds compressed,
expanded and rattled copies of MD snapshots (one reference call each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from ase import Atoms
from ase import units as ase_units

from mlmd import keys
from mlmd.units import KB_EV_PER_K

from .calculators import accepts_retry, make_calculator

LABEL_PROPERTIES = ("energy", "forces", "charges", "dipole")


@dataclass
class Stats:
    calls: int = 0  # reference single points attempted (retries included)
    recovered: int = 0  # frames whose first SCF failed and the retry converged
    scf_failures: int = 0  # frames skipped: the retry failed too
    rejected: int = 0  # frames skipped: forces above the cap
    md_aborted: int = 0  # trajectories cut short by a failure
    sampler_calls: int = 0

    def add(self, other: "Stats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _results(calc, atoms: Atoms) -> dict[str, Any]:
    """Single point: energy (eV), forces (eV/Å) and, when the calculator has them, charges (e), dipole (e·Å)."""
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": float(atoms.get_potential_energy()), "forces": np.array(atoms.get_forces(), dtype=float)}
    res = getattr(calc, "results", {})
    if "charges" in res:
        out["charges"] = np.asarray(res["charges"], dtype=float).reshape(-1)
    if "dipole" in res:
        out["dipole"] = np.asarray(res["dipole"], dtype=float).reshape(3)
    return out


def _finite(res: dict) -> bool:
    return all(np.all(np.isfinite(v)) for v in res.values())


class Reference:
    """The reference calculator for one cluster (fixed total charge) with retry-once on SCF failure."""

    def __init__(self, factory: Callable, charge: int, kwargs: dict | None = None, retry: dict | None = None,
                 max_force: float = 50.0):
        self.factory = factory
        self.charge = int(charge)
        self.kwargs = dict(kwargs or {})
        self.retry = dict(retry or {})
        self.max_force = max_force
        self.stats = Stats()
        self._calc = None

    def _fresh(self, extra: dict | None = None):
        return make_calculator(self.factory, self.charge, self.kwargs, extra)

    def _try(self, calc, atoms: Atoms) -> dict | None:
        self.stats.calls += 1
        try:
            res = _results(calc, atoms)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception:
            return None
        return res if _finite(res) else None

    def __call__(self, atoms: Atoms) -> dict | None:
        """Labels for ``atoms`` or None when the SCF failed twice (counted in ``stats.scf_failures``)."""
        if self._calc is None:
            self._calc = self._fresh()
        res = self._try(self._calc, atoms)
        if res is None:
            # Retry once, from scratch (no restart wavefunction), with gentler settings where accepted.
            self._calc = None
            extra = self.retry if accepts_retry(self.factory, self.retry) else None
            try:
                retry_calc = self._fresh(extra)
            except Exception:
                retry_calc = None
            res = self._try(retry_calc, atoms) if retry_calc is not None else None
            if res is None:
                self.stats.scf_failures += 1
                return None
            self.stats.recovered += 1
        if float(np.abs(res["forces"]).max()) > self.max_force:
            self.stats.rejected += 1
            return None
        return res


@dataclass
class MDSettings:
    temperature_k: float = 600.0
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.02
    steps: int = 20
    keep_every: int = 4
    keep_initial: bool = True


def langevin(atoms: Atoms, forces_fn: Callable[[Atoms], np.ndarray | None], settings: MDSettings,
             rng: np.random.Generator, on_step: Callable[[int, Atoms], None]) -> bool:
    """BAOAB Langevin dynamics, one ``forces_fn`` call per step (step 0 included).

    ``forces_fn`` returns forces (eV/Å) or None to stop; ``on_step(step, atoms)`` runs after each force call.
    Returns True when all steps ran.
    """
    masses = atoms.get_masses()[:, None]
    kt = KB_EV_PER_K * settings.temperature_k
    dt = settings.timestep_fs * ase_units.fs
    gamma = settings.friction_per_fs / ase_units.fs
    c1 = np.exp(-gamma * dt)
    c2 = np.sqrt((1 - c1 * c1) * kt / masses)
    v = rng.normal(size=atoms.positions.shape) * np.sqrt(kt / masses)
    v -= (masses * v).sum(0) / masses.sum()
    f = forces_fn(atoms)
    if f is None:
        return False
    on_step(0, atoms)
    for step in range(1, settings.steps + 1):
        v += 0.5 * dt * f / masses
        atoms.positions += 0.5 * dt * v
        v = c1 * v + c2 * rng.normal(size=v.shape)
        atoms.positions += 0.5 * dt * v
        f = forces_fn(atoms)
        if f is None:
            return False
        v += 0.5 * dt * f / masses
        on_step(step, atoms)
    return True


def scale_intermolecular(atoms: Atoms, mol_id: np.ndarray, factor: float) -> Atoms:
    """Copy of ``atoms`` with every molecule's centre of mass moved to ``factor`` × its distance from the cluster's."""
    out = atoms.copy()
    masses = out.get_masses()
    com = out.get_center_of_mass()
    for m in np.unique(mol_id):
        sel = mol_id == m
        mcom = (masses[sel, None] * out.positions[sel]).sum(0) / masses[sel].sum()
        out.positions[sel] += (factor - 1.0) * (mcom - com)
    return out


@dataclass
class Frame:
    positions: np.ndarray
    labels: dict
    sampling: str
    step: int = 0


@dataclass
class SamplePlan:
    md: MDSettings = field(default_factory=MDSettings)
    n_compressed: int = 1
    n_expanded: int = 1
    scale_range: tuple[float, float] = (0.9, 1.1)
    n_rattled: int = 1
    rattle_std: tuple[float, float] = (0.02, 0.08)


def sample_cluster(atoms: Atoms, reference: Reference, plan: SamplePlan, rng: np.random.Generator,
                   sampler: Any | None = None) -> tuple[list[Frame], Stats]:
    """Sample and label configurations of one cluster.

    atoms:     the starting cluster (non-periodic; ``arrays['mol_id']`` numbers its molecules)
    reference: labels frames (also drives the MD when ``sampler`` is None)
    sampler:   optional ASE calculator driving the MD instead (e.g. an ML potential)
    Returns the kept frames (each with converged reference labels) and the statistics.
    """
    work = atoms.copy()
    work.calc = None
    mol_id = np.asarray(atoms.arrays.get(keys.MOL_ID, np.zeros(len(atoms), int)))
    frames: list[Frame] = []
    snapshots: list[np.ndarray] = []
    current: dict = {}
    md = plan.md
    stats_sampler = Stats()

    if sampler is None:
        def forces_fn(a: Atoms):
            res = reference(a)
            current["res"] = res
            return None if res is None else res["forces"]
    else:
        def forces_fn(a: Atoms):
            stats_sampler.sampler_calls += 1
            try:
                b = a.copy()
                b.calc = sampler
                f = np.array(b.get_forces(), dtype=float)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception:
                return None
            return f if np.all(np.isfinite(f)) and np.abs(f).max() < 10 * reference.max_force else None

    def on_step(step: int, a: Atoms) -> None:
        keep = (step == 0 and md.keep_initial) or (step > 0 and step % md.keep_every == 0)
        if step > 0 and step % md.keep_every == 0:
            snapshots.append(a.positions.copy())
        if not keep:
            return
        res = current.get("res") if sampler is None else reference(a)
        if res is not None:
            frames.append(Frame(a.positions.copy(), res, "initial" if step == 0 else "md", step))

    completed = langevin(work, forces_fn, md, rng, on_step)
    if not completed:
        stats_sampler.md_aborted += 1
    if not snapshots and frames:
        snapshots.append(frames[-1].positions)

    perturbed: list[tuple[str, np.ndarray]] = []
    n_mol = len(np.unique(mol_id))
    lo, hi = plan.scale_range
    for name, n, rng_lo, rng_hi in (("compressed", plan.n_compressed, lo, min(1.0, hi)),
                                    ("expanded", plan.n_expanded, max(1.0, lo), hi)):
        for _ in range(n if n_mol > 1 and snapshots else 0):
            base = work.copy()
            base.positions = snapshots[int(rng.integers(len(snapshots)))]
            factor = float(rng.uniform(rng_lo, rng_hi))
            perturbed.append((name, scale_intermolecular(base, mol_id, factor).positions))
    for _ in range(plan.n_rattled if snapshots else 0):
        pos = snapshots[int(rng.integers(len(snapshots)))]
        std = float(rng.uniform(*plan.rattle_std))
        perturbed.append(("rattled", pos + rng.normal(scale=std, size=pos.shape)))
    for name, pos in perturbed:
        a = work.copy()
        a.positions = pos
        res = reference(a)
        if res is not None:
            frames.append(Frame(pos.copy(), res, name, -1))
    stats = Stats()
    stats.add(reference.stats)
    stats.add(stats_sampler)
    return frames, stats
