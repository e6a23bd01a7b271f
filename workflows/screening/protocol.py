"""The simulation protocol of one formulation, as resumable stages in a per-formulation folder.

Stages and files (``<folder>`` is ``<output>/<name>-<spec hash[:8]>``)::

    plan.json                 validated formulation: spec, counts, densities, model + sha256
    box.extxyz                packmol box (mol_id, species labels)                          stage "box"
    minimise/minimised.extxyz FIRE at fixed cell                                            stage "minimise"
    equilibrate/              NPT (MTK, isotropic) run folder, discarded                    stage "equilibrate"
    density/                  NPT production, extended in chunks until the density's
                              standard error < target or max length; density.json decides  stage "density"
    replicas/rNN/start.extxyz independent start: a production frame, cell scaled to the mean volume
    replicas/rNN/equil/       NVT (Bussi) with fresh Maxwell velocities (own seed)
    replicas/rNN/prod/        NVT with a weak global Bussi thermostat, or NVE; stress every
                              ``stress_interval`` steps in thermo.csv, frames for MSD/RDF        stage "replicas"
    status.json               current stage for the progress display
    error.json                the last failure (stage + one-line message)

Every MD stage is an ``mlmd md`` run folder, checkpointed every ``checkpoint_interval`` steps; a stage whose
``result.json`` reached the requested length is skipped, one with only a checkpoint is restarted from it, so an
interrupted formulation resumes where it stopped. The deterministic chunk schedule of the density stage
(min, min + chunk, ...) makes a resumed production take the same decisions as an uninterrupted one.

The MD engine is a setting: ``engine: ase`` uses :func:`mlmd.md.engine.run_md` (NVT: Bussi; NPT: MTK);
``engine: openmm`` uses :func:`mlmd.openmm.engine.run_openmm_md` (the model inside OpenMM; NVT/NPT equilibration with
Langevin, NPT with a Monte Carlo barostat, replicas with a weak Nose-Hoover thermostat). The minimisation is ASE's
FIRE with the model for both. Each completed run also saves ``final.extxyz`` (engine-agnostic final state).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase import Atoms

from mlmd.io import atomic_path, atomic_write_text
from workflows.screening.composition import Plan, pack_box

PLAN = "plan.json"
BOX = "box.extxyz"
STATUS = "status.json"
ERROR = "error.json"
DENSITY = "density.json"
RESULT = "result.json"

StageCallback = Callable[[str, str], None]


# ------------------------------------------------------------------------------------------ small helpers

def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=_jsonable))


def _jsonable(value: Any):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_status(folder: Path, stage: str, detail: str = "") -> None:
    """Record the current stage (read by the progress display; a failed write never stops the run)."""
    try:
        write_json(Path(folder) / STATUS, {"stage": stage, "detail": detail, "time": time.time()})
    except OSError:
        pass


def read_status(folder: Path) -> dict[str, Any]:
    try:
        return read_json(Path(folder) / STATUS)
    except (OSError, ValueError):
        return {}


def _write_atoms(atoms: Atoms, path: Path) -> None:
    from ase.io import write

    with atomic_path(path) as tmp:
        write(tmp, atoms, format="extxyz")


def _read_atoms(path: Path) -> Atoms:
    from ase.io import read

    return read(path, format="extxyz")


# ------------------------------------------------------------------------------------------ calculator / engine

def make_calculator(plan: Plan):
    """The model's ASE calculator (MLMDCalculator computes the stress with every force call of a periodic box, so
    stress logged every step for Green–Kubo or needed by the barostat costs no second network pass)."""
    f = plan.formulation
    if f.calculator:
        return load_factory(f.calculator)(plan.model.path, f.dtype)
    from mlmd.calculator import MLMDCalculator

    return MLMDCalculator(plan.model.path, dtype=plan.formulation.dtype)


def load_factory(spec: str):
    """``module:factory`` -> the callable (ConfigError with one line if it cannot be found)."""
    from mlmd.registry import load_callable

    return load_callable(spec, "calculator")


def run_engine(engine: str, atoms: Atoms, calc, config, workdir: Path, restart: bool, progress=None,
               plan: Plan | None = None):
    """Dispatch one MD run to the engine named in the spec (same run-folder layout either way).

    ase: :func:`mlmd.md.engine.run_md` with ``calc``. openmm: :func:`mlmd.openmm.engine.run_openmm_md` with the
    plan's model inside OpenMM (Reference platform; its checkpoint restarts only there).
    """
    if engine == "ase":
        from mlmd.md.engine import run_md

        return run_md(atoms, calc, config, workdir, restart=restart, progress=progress)
    if engine == "openmm":
        from mlmd.openmm.engine import run_openmm_md

        return run_openmm_md(atoms, plan.model.path, config, workdir, restart=restart, progress=progress,
                             dtype=plan.formulation.dtype)
    raise ValueError(f"unknown engine {engine!r}")


CHECKPOINT_FILES = {"ase": "checkpoint.npz", "openmm": "openmm_checkpoint.npz"}
FINAL = "final.extxyz"


def checkpoint_step(workdir: Path, engine: str) -> int | None:
    """Step of the run folder's checkpoint (None without one)."""
    path = workdir / CHECKPOINT_FILES[engine]
    if not path.is_file():
        return None
    if engine == "openmm":
        from mlmd.openmm.engine import load_checkpoint

        return int(load_checkpoint(path)[0]["step"])
    from mlmd.md.io import load_checkpoint

    return int(load_checkpoint(path).step)


def _step_reporter(folder: Path, stage: str, label: str, interval_s: float = 2.0):
    last = [0.0]

    def progress(step: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= interval_s or step == total:
            last[0] = now
            write_status(folder, stage, f"{label} {step}/{total} steps")

    return progress


def _done_steps(workdir: Path) -> int | None:
    """Steps reached by a completed run folder (result.json), else None."""
    try:
        return int(read_json(workdir / "result.json")["last_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _final_state(template: Atoms, workdir: Path) -> Atoms:
    """The final state a completed run folder saved (positions, momenta, cell) on the template's arrays."""
    frame = _read_atoms(workdir / FINAL)
    atoms = template.copy()
    atoms.set_cell(frame.cell, scale_atoms=False)
    atoms.set_positions(frame.positions, apply_constraint=False)
    atoms.set_momenta(frame.get_momenta(), apply_constraint=False)
    return atoms


def run_to(workdir: Path, atoms: Atoms, calc, config, engine: str, progress=None, plan: Plan | None = None) -> Atoms:
    """Bring the run folder ``workdir`` to ``config.steps`` total steps: skip, restart or start fresh.

    Returns the final state (positions, momenta, cell; per-atom arrays of ``atoms``), which is also saved as
    ``final.extxyz`` so that a later call can skip the finished run with either engine.
    """
    done = _done_steps(workdir)
    if done is not None and done == config.steps and (workdir / FINAL).is_file():
        final = _read_atoms(workdir / FINAL)
        if int(final.info.get("step", -1)) == config.steps:
            return _final_state(atoms, workdir)
    restart = (workdir / CHECKPOINT_FILES[engine]).is_file()
    if not restart and workdir.exists():
        shutil.rmtree(workdir)            # a run that died before its first checkpoint: start over
    (workdir / FINAL).unlink(missing_ok=True)
    result = run_engine(engine, atoms, calc, config, workdir, restart, progress, plan)
    out = atoms.copy()
    out.set_cell(result.atoms.cell, scale_atoms=False)
    out.set_positions(result.atoms.positions, apply_constraint=False)
    out.set_momenta(result.atoms.get_momenta(), apply_constraint=False)
    frame = Atoms(out.numbers, out.positions, cell=out.cell, pbc=out.pbc, momenta=out.get_momenta())
    frame.info["step"] = int(config.steps)
    _write_atoms(frame, workdir / FINAL)
    return out


# ------------------------------------------------------------------------------------------ stage configs

def _md_config(plan: Plan, **values):
    from mlmd.md.config import make_config

    f = plan.formulation
    p = f.protocol
    # ase: Bussi (NVT) and MTK Nose-Hoover chains (NPT); openmm has no Bussi: Langevin for equilibration and NPT.
    thermostat = "bussi" if f.engine == "ase" else "langevin"
    base = dict(timestep_fs=p.timestep_fs, temperature_K=f.temperature_K, pressure_bar=f.pressure_bar,
                thermostat=thermostat, thermostat_time_fs=p.thermostat_time_fs, barostat="mtk_iso",
                barostat_time_fs=p.barostat_time_fs, checkpoint_interval=p.checkpoint_interval)
    base.update(values)
    return make_config(base, source=f"formulation {plan.name!r} protocol")


def equilibration_config(plan: Plan):
    p = plan.formulation.protocol
    steps = p.equilibration_steps
    return _md_config(plan, ensemble="npt", steps=steps, seed=plan.formulation.seed,
                      log_interval=p.density_log_interval, trajectory_interval=max(steps, 1))


def density_config(plan: Plan, steps: int):
    p = plan.formulation.protocol
    every = max(1, p.density_min_steps // max(4, 2 * p.n_replicas))
    return _md_config(plan, ensemble="npt", steps=steps, seed=plan.formulation.seed + 1,
                      log_interval=p.density_log_interval, trajectory_interval=every)


def replica_seed(plan: Plan, k: int) -> int:
    return plan.formulation.seed * 1000 + 100 + k


def replica_configs(plan: Plan, k: int):
    p = plan.formulation.protocol
    seed = replica_seed(plan, k)
    equil = _md_config(plan, ensemble="nvt", steps=p.replica_equilibration_steps, seed=seed,
                       initial_velocities="maxwell", log_interval=max(1, min(100, p.replica_equilibration_steps or 1)),
                       trajectory_interval=max(p.replica_equilibration_steps, 1))
    prod_values = dict(ensemble=p.replica_ensemble, steps=p.replica_steps, seed=seed + 50_000,
                       log_interval=p.stress_interval, trajectory_interval=p.trajectory_interval,
                       thermostat_time_fs=p.replica_thermostat_time_fs, initial_velocities="keep")
    if p.replica_ensemble == "nve":
        prod_values["temperature_K"] = plan.formulation.temperature_K
    elif plan.formulation.engine == "openmm":
        prod_values["thermostat"] = "nose_hoover"   # the weak global thermostat OpenMM offers
    return equil, _md_config(plan, **prod_values)


def density_schedule(plan: Plan) -> list[int]:
    """Total production lengths at which the stopping rule is evaluated: min, min + chunk, ..., max."""
    p = plan.formulation.protocol
    out = [p.density_min_steps]
    while out[-1] < p.density_max_steps:
        out.append(min(p.density_max_steps, out[-1] + p.density_chunk_steps))
    return out


# ------------------------------------------------------------------------------------------ stages

def stage_box(plan: Plan, folder: Path) -> Atoms:
    path = folder / BOX
    if path.is_file():
        return _read_atoms(path)
    write_status(folder, "box", f"packing {plan.n_atoms} atoms")
    atoms = pack_box(plan, seed=plan.formulation.seed)
    _write_atoms(atoms, path)
    return atoms


def stage_minimise(plan: Plan, folder: Path, box: Atoms, calc) -> Atoms:
    path = folder / "minimise" / "minimised.extxyz"
    if path.is_file():
        return _read_atoms(path)
    p = plan.formulation.protocol
    atoms = box.copy()
    if p.minimise_steps > 0:
        import io

        from ase.optimize import FIRE

        write_status(folder, "minimise", f"FIRE ≤ {p.minimise_steps} steps")
        atoms.calc = calc
        opt = FIRE(atoms, logfile=io.StringIO(), maxstep=0.1)
        opt.run(fmax=p.minimise_fmax_eV_A, steps=p.minimise_steps)
        atoms.calc = None
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atoms(atoms, path)
    return atoms


def stage_equilibrate(plan: Plan, folder: Path, atoms: Atoms, calc) -> Atoms:
    cfg = equilibration_config(plan)
    if cfg.steps == 0:
        return atoms
    atoms = atoms.copy()
    atoms.set_momenta(np.zeros((len(atoms), 3)))  # Maxwell velocities from the run's seed
    return run_to(folder / "equilibrate", atoms, calc, cfg, plan.formulation.engine,
                  _step_reporter(folder, "equilibrate", "NPT equilibration"), plan)


def density_series(plan: Plan, folder: Path):
    """Density estimate (workflows.analysis.statistics.Density) of the production run so far."""
    from mlmd.md.io import read_thermo
    from workflows.analysis.statistics import density

    thermo = read_thermo(folder / "density" / "thermo.csv")
    return density(plan.total_mass_amu, thermo["volume_A3"], discard_equilibration=True)


def stage_density(plan: Plan, folder: Path, atoms: Atoms, calc) -> dict[str, Any]:
    path = folder / DENSITY
    if path.is_file():
        return read_json(path)
    p = plan.formulation.protocol
    workdir = folder / "density"
    reached = checkpoint_step(workdir, plan.formulation.engine) or 0
    state = atoms
    decision: dict[str, Any] = {}
    for target in density_schedule(plan):
        if target < reached:
            continue  # a resumed run: these decisions were taken (and said "go on") before the interruption
        state = run_to(workdir, state, calc, density_config(plan, target), plan.formulation.engine,
                       _step_reporter(folder, "density", f"NPT production (σ target {p.density_target_sem:g})"), plan)
        rho = density_series(plan, folder)
        decision = {"steps": target, "density_g_cm3": rho.mean, "sem_g_cm3": rho.sem, "converged": bool(rho.converged),
                    "drift_g_cm3": rho.drift, "stationary": rho.stationary,
                    "equilibration_samples_dropped": int(rho.start), "n_samples": int(rho.n_samples)}
        write_status(folder, "density", f"{target} steps: ρ = {rho.mean:.4f} ± {rho.sem:.4f} g/cm³")
        # Stop only on a trustworthy error bar: blocking found a plateau (otherwise sem is a lower bound) and the
        # box is no longer compressing or expanding.
        if rho.sem < p.density_target_sem and rho.converged and rho.stationary and rho.n_samples >= 16:
            decision["stopped"] = "standard error below target"
            break
    else:
        decision["stopped"] = "maximum length reached"
    write_json(path, decision)
    return decision


def make_whole(atoms: Atoms, bond_cutoff_A: float = 2.0) -> np.ndarray:
    """Positions with every molecule (``mol_id``) whole: walk each molecule's bond graph (pairs of the same
    molecule closer than ``bond_cutoff_A``, minimum image) from its first atom, placing each atom next to the
    atom it was reached from."""
    from collections import deque

    from ase.neighborlist import neighbor_list

    mol = atoms.arrays["mol_id"]
    pos = atoms.positions.copy()
    i, j, vec = neighbor_list("ijD", atoms, bond_cutoff_A)
    keep = mol[i] == mol[j]
    i, j, vec = i[keep], j[keep], vec[keep]
    order = np.argsort(i, kind="stable")
    i, j, vec = i[order], j[order], vec[order]
    starts = np.searchsorted(i, np.arange(len(atoms) + 1))
    seen = np.zeros(len(atoms), dtype=bool)
    for a in range(len(atoms)):
        if seen[a]:
            continue
        seen[a] = True
        queue = deque([a])
        while queue:
            b = queue.popleft()
            for k in range(starts[b], starts[b + 1]):
                c = j[k]
                if not seen[c]:
                    seen[c] = True
                    pos[c] = pos[b] + vec[k]
                    queue.append(c)
    return pos


def scale_molecules(atoms: Atoms, scale: float) -> None:
    """Scale the cell by ``scale`` moving each molecule (``mol_id``) rigidly with its centre of mass, so that
    bonds keep their lengths (scaling atom positions would stretch them)."""
    mol = atoms.arrays["mol_id"]
    m = atoms.get_masses()
    pos = make_whole(atoms)
    total = np.bincount(mol, m)
    com = np.stack([np.bincount(mol, m * pos[:, k]) for k in range(3)], axis=1) / total[:, None]
    atoms.set_cell(atoms.cell.array * scale, scale_atoms=False)
    atoms.positions = pos + (scale - 1.0) * com[mol]


def replica_starts(plan: Plan, folder: Path, density_g_cm3: float) -> list[Path]:
    """Write ``n_replicas`` start structures: production frames from the second half, spread evenly, each with the
    cell scaled isotropically to the mean NPT volume (molecules moved rigidly)."""
    from ase.io import read

    from mlmd.units import G_PER_CM3_PER_AMU_PER_A3

    p = plan.formulation.protocol
    out = [folder / "replicas" / f"r{k:02d}" / "start.extxyz" for k in range(p.n_replicas)]
    if all(o.is_file() for o in out):
        return out
    frames = read(folder / "density" / "trajectory.extxyz", index=":")
    box = _read_atoms(folder / BOX)
    pool = frames[len(frames) // 2:] or frames
    picks = np.linspace(0, len(pool) - 1, p.n_replicas).round().astype(int)
    volume = plan.total_mass_amu * G_PER_CM3_PER_AMU_PER_A3 / density_g_cm3
    for k, (i, path) in enumerate(zip(picks, out)):
        frame = pool[int(i)]
        atoms = box.copy()
        atoms.set_cell(frame.cell, scale_atoms=False)
        atoms.set_positions(frame.positions)
        scale_molecules(atoms, (volume / atoms.get_volume()) ** (1 / 3))
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atoms(atoms, path)
    return out


def prepare(plan: Plan, folder: Path) -> dict[str, Any]:
    """Box -> minimisation -> NPT equilibration -> NPT density production -> replica starts (all resumable)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / PLAN, plan.to_dict())
    box = stage_box(plan, folder)
    calc = make_calculator(plan)
    atoms = stage_minimise(plan, folder, box, calc)
    atoms = stage_equilibrate(plan, folder, atoms, calc)
    decision = stage_density(plan, folder, atoms, calc)
    if plan.formulation.protocol.n_replicas:
        replica_starts(plan, folder, decision["density_g_cm3"])
    write_status(folder, "replicas" if plan.formulation.protocol.n_replicas else "analyse",
                 f"ρ = {decision['density_g_cm3']:.4f} ± {decision['sem_g_cm3']:.4f} g/cm³")
    return decision


def run_replica(plan: Plan, folder: Path, k: int) -> dict[str, Any]:
    """Transport replica ``k``: NVT re-equilibration with fresh velocities, then the production run."""
    folder = Path(folder)
    rdir = folder / "replicas" / f"r{k:02d}"
    if _done_steps(rdir / "prod") == plan.formulation.protocol.replica_steps:
        return {"replica": k, "skipped": True}
    start = _read_atoms(rdir / "start.extxyz")
    calc = make_calculator(plan)
    equil, prod = replica_configs(plan, k)
    atoms = start
    if equil.steps > 0:
        atoms = run_to(rdir / "equil", start, calc, equil, plan.formulation.engine,
                       _step_reporter(folder, "replicas", f"replica {k} equilibration"), plan)
    else:
        atoms = atoms.copy()
        from ase.md.velocitydistribution import Stationary

        try:
            from ase.md.velocitydistribution import thermalize_momenta
        except ImportError:  # ase < 3.29
            from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

        thermalize_momenta(atoms, temperature_K=plan.formulation.temperature_K,
                           rng=np.random.default_rng(replica_seed(plan, k)))
        Stationary(atoms)
    run_to(rdir / "prod", atoms, calc, prod, plan.formulation.engine,
           _step_reporter(folder, "replicas", f"replica {k} production"), plan)
    return {"replica": k, "skipped": False}


def replica_dirs(plan: Plan, folder: Path, finished_only: bool = False) -> list[Path]:
    """Production folders of the replicas (only those that reached their length with ``finished_only``)."""
    dirs = [Path(folder) / "replicas" / f"r{k:02d}" / "prod" for k in range(plan.formulation.protocol.n_replicas)]
    if finished_only:
        dirs = [d for d in dirs if _done_steps(d) == plan.formulation.protocol.replica_steps]
    return dirs


def record_error(folder: Path, stage: str, exc: BaseException) -> str:
    """Write error.json and return the one-line message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    try:
        write_json(Path(folder) / ERROR, {"stage": stage, "error": message, "time": time.time()})
        write_status(folder, "failed", f"{stage}: {message}")
    except OSError:
        pass
    return message


def _is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def clear_error(folder: Path) -> None:
    try:
        os.unlink(Path(folder) / ERROR)
    except FileNotFoundError:
        pass
