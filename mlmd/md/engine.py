"""The MD driver: ``run_md(atoms, calculator, config, workdir)`` with any ASE calculator.

The loop is ours (not ``dyn.run``) so that guards, logging, trajectory frames and checkpoints happen at exact
step numbers and a restart continues at the checkpoint's step with the same random stream. Every write is
preceded by a guard check, so nothing written after a state went bad, and a trip leaves ``last_good.extxyz``.

Restart continuity: the checkpoint holds positions, momenta, cell, the numpy RNG state and the integrator's
thermostat/barostat variables, so N steps + restart + N steps reproduces a 2N-step run bit for bit, for every
integrator, provided the calculator's result is a pure function of the positions. Calculators that reuse a
neighbour list with a skin (ASE's EMT and LJ, MLMDCalculator) sum in an order that depends on when the list
was built, so after a restart they agree to rounding (~1e-15 relative in float64), not to the bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from mlmd.errors import ConfigError, InputError, MLMDError, SimulationError
from mlmd.md import io as mdio
from mlmd.md.config import MDConfig, make_config
from mlmd.md.ensembles import build_dynamics, get_state, integrator_name, set_state
from mlmd.md.guards import Trip, check_state, check_structure, temperature_limit
from mlmd.units import BAR_PER_EV_PER_A3

ProgressCallback = Callable[[int, int], None]


@dataclass
class MDResult:
    """What a finished run produced. ``atoms`` is the final state (with the calculator attached)."""

    workdir: Path
    atoms: Atoms
    first_step: int
    last_step: int
    time_fs: float
    n_frames: int
    wall_time_s: float
    restarted: bool
    paths: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, float | None] = field(default_factory=dict)  # over the whole log (all segments)

    @property
    def steps_run(self) -> int:
        return self.last_step - self.first_step


def finish_run(workdir: Path, atoms: Atoms, n_atoms: int, start: int, end: int, time_fs: float, n_frames: int,
               wall_s: float, restarted: bool, extra_paths: dict[str, Path], record: dict[str, Any]) -> MDResult:
    """The MDResult of a finished run (either engine) and its ``result.json``, written only on completion.

    ``extra_paths`` adds engine files (checkpoint, ...) to the shared ones; ``record`` adds engine facts to the JSON.
    """
    paths = {
        "thermo": workdir / mdio.THERMO,
        "trajectory_extxyz": workdir / mdio.TRAJ_XYZ,
        "trajectory_dcd": workdir / mdio.TRAJ_DCD,
        "topology": workdir / mdio.TOPOLOGY,
        **extra_paths,
    }
    result = MDResult(
        workdir=workdir, atoms=atoms, first_step=start, last_step=end, time_fs=time_fs,
        n_frames=n_frames, wall_time_s=wall_s, restarted=restarted, paths=paths,
        summary=mdio.summarize_thermo(paths["thermo"], n_atoms),
    )
    mdio.write_json(
        workdir / mdio.RESULT,
        {
            **record, "first_step": start, "last_step": end, "time_fs": time_fs, "n_frames": n_frames,
            "wall_time_s": wall_s, "restarted": restarted,
            "steps_per_s": (end - start) / wall_s if wall_s > 0 else None,
            "files": {k: p.name for k, p in paths.items()},
            "summary": result.summary,
        },
    )
    return result


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Snapshot:
    """The last state that passed the guards (kept in memory; written only when a guard trips)."""

    def __init__(self) -> None:
        self.atoms: Atoms | None = None
        self.step = -1

    def take(self, atoms: Atoms, step: int, time_fs: float, energy: float, forces: np.ndarray) -> None:
        results = dict(getattr(atoms.calc, "results", {}) or {})
        results.update(energy=energy, forces=forces)
        self.atoms, self.step = mdio.make_frame(atoms, step, time_fs, results), step

    def save(self, path: Path) -> None:
        if self.atoms is not None:
            mdio.write_frame(self.atoms, path)


def _thermo_row(dyn: Any, atoms: Atoms, step: int, time_fs: float, epot: float, want_pressure: bool) -> dict[str, float]:
    from ase.md.bussi import Bussi
    from ase.md.verlet import VelocityVerlet

    ekin = float(atoms.get_kinetic_energy())
    etot = epot + ekin
    conserved = math.nan
    if isinstance(dyn, Bussi):
        conserved = etot - dyn.transferred_energy
    elif hasattr(dyn, "get_conserved_energy"):
        try:
            conserved = float(dyn.get_conserved_energy())
        except Exception:  # calculator without free_energy; the column is informative only
            conserved = math.nan
    elif type(dyn) is VelocityVerlet:
        conserved = etot
    row = {
        "step": step,
        "time_fs": time_fs,
        "epot_eV": epot,
        "ekin_eV": ekin,
        "etot_eV": etot,
        "conserved_eV": conserved,
        "temperature_K": float(atoms.get_temperature()),
    }
    if atoms.pbc.all():
        row["volume_A3"] = float(atoms.get_volume())
        row["density_g_cm3"] = mdio.density_g_cm3(atoms)
        if want_pressure:
            stress = atoms.get_stress(voigt=False, include_ideal_gas=True)
            row["pressure_bar"] = float(-np.trace(stress) / 3.0 * BAR_PER_EV_PER_A3)
            for name, (a, b) in zip(("pxx_bar", "pyy_bar", "pzz_bar", "pyz_bar", "pxz_bar", "pxy_bar"),
                                    ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))):
                row[name] = float(-stress[a, b] * BAR_PER_EV_PER_A3)
    return row


def _initial_velocities(atoms: Atoms, config: MDConfig, rng: np.random.Generator) -> None:
    from ase.md.velocitydistribution import Stationary

    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ase < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as _mb

        def thermalize_momenta(atoms, temperature_K, rng=None):
            _mb(atoms, temperature_K=temperature_K, rng=rng)

    has_momenta = atoms.has("momenta") and np.any(atoms.get_momenta() != 0)
    mode = config.initial_velocities
    if mode == "keep" or (mode == "auto" and has_momenta):
        if has_momenta and not np.all(np.isfinite(atoms.get_momenta())):
            raise InputError("structure carries non-finite momenta; fix them or set initial_velocities: maxwell")
        return
    if config.temperature_K is None:
        if mode == "maxwell":
            raise ConfigError("initial_velocities 'maxwell' needs temperature_K (a positive number in K)")
        return
    thermalize_momenta(atoms, config.temperature_K, rng=rng)
    if len(atoms) > 1:
        Stationary(atoms)


def run_md(
    atoms: Atoms,
    calculator: BaseCalculator | None,
    config: MDConfig | dict[str, Any] | None = None,
    workdir: str | Path = "md_run",
    *,
    restart: bool = False,
    progress: ProgressCallback | None = None,
) -> MDResult:
    """Run MD on ``atoms`` with ``calculator``; write the run folder ``workdir`` (see :mod:`mlmd.md.io`).

    ``calculator`` None uses ``atoms.calc``; ``atoms`` itself is not modified (the final state is
    ``result.atoms``). ``restart=True`` continues from ``workdir/checkpoint.npz`` up to ``config.steps`` total
    steps; ``atoms`` then only supplies species, masses and per-atom arrays (they must match the checkpoint).
    ``progress(step, last_step)`` is called every ``log_interval`` steps.
    Raises InputError / ConfigError before starting, SimulationError when a guard trips.
    """
    if config is None:
        config = MDConfig()
    elif isinstance(config, dict):
        config = make_config(config)
    if calculator is None:
        calculator = atoms.calc
        if calculator is None:
            raise InputError("no calculator: pass one to run_md or attach it to the atoms (atoms.calc = ...)")
    workdir = Path(workdir)
    guards = config.guards
    atoms = atoms.copy()
    ckpt = None

    if restart:
        ckpt = mdio.load_checkpoint(workdir / mdio.CHECKPOINT)
        if len(ckpt.numbers) != len(atoms) or np.any(ckpt.numbers != atoms.numbers):
            raise InputError(
                f"checkpoint {workdir / mdio.CHECKPOINT} holds {len(ckpt.numbers)} atoms that do not match the "
                f"structure's {len(atoms)} ({atoms.get_chemical_formula()}); restart with the original structure"
            )
        if ckpt.integrator != integrator_name(config):
            raise ConfigError(
                f"checkpoint was written by integrator {ckpt.integrator!r} but the config asks for "
                f"{integrator_name(config)!r}; restart with the same ensemble/thermostat/barostat"
            )
        if ckpt.step > config.steps:
            raise ConfigError(
                f"steps = {config.steps} is below the checkpoint's step {ckpt.step}; steps is the run's total, "
                f"give at least {ckpt.step}"
            )
        atoms.set_pbc(ckpt.pbc)
        atoms.set_cell(ckpt.cell, scale_atoms=False)
        atoms.set_positions(ckpt.positions, apply_constraint=False)
        atoms.set_momenta(ckpt.momenta, apply_constraint=False)
    else:
        busy = [n for n in (mdio.CHECKPOINT, mdio.THERMO, mdio.TRAJ_XYZ) if (workdir / n).exists()]
        if busy:
            raise InputError(
                f"output folder {str(workdir)!r} already holds a run ({busy[0]}); "
                "restart it (--restart) or choose another output folder"
            )

    check_structure(atoms, guards.min_distance_A)
    atoms.calc = calculator
    rng = np.random.default_rng(config.seed)
    if ckpt is not None:
        try:
            rng.bit_generator.state = ckpt.rng_state
        except (TypeError, ValueError, KeyError):
            raise InputError(
                f"checkpoint {workdir / mdio.CHECKPOINT} has no valid random-number state; "
                "restart from a checkpoint.npz written by `mlmd md`"
            ) from None
    else:
        _initial_velocities(atoms, config, rng)

    dyn = build_dynamics(atoms, config, rng)
    if ckpt is not None:
        set_state(dyn, ckpt.integrator_state)
    start = ckpt.step if ckpt is not None else 0
    start_time = ckpt.time_fs if ckpt is not None else 0.0
    end = config.steps
    dyn.nsteps = start
    dt = config.timestep_fs
    t_limit = temperature_limit(config.temperature_K, guards.temperature_factor, guards.max_temperature_K)
    want_pressure = (
        config.log_pressure and atoms.pbc.all() and "stress" in getattr(calculator, "implemented_properties", ())
    )

    def save_ckpt(step: int, time_fs: float) -> None:
        mdio.save_checkpoint(
            workdir / mdio.CHECKPOINT,
            mdio.Checkpoint(
                step=step, time_fs=time_fs, integrator=integrator_name(config),
                positions=atoms.positions, momenta=atoms.get_momenta(), cell=atoms.cell.array, pbc=atoms.pbc,
                numbers=atoms.numbers, rng_state=rng.bit_generator.state, integrator_state=get_state(dyn),
                config=config.model_dump(mode="json"),
            ),
        )

    last_good = _Snapshot()

    def trip(t: Trip, step: int) -> SimulationError:
        path = workdir / mdio.LAST_GOOD
        last_good.save(path)
        if last_good.atoms is not None:
            where = f"last good frame (step {last_good.step}) saved to {path}"
        else:
            where = f"the starting state (step {step}) already fails this guard; nothing saved"
        return SimulationError(f"guard '{t.guard}' tripped at step {step}: {t.detail}; {where}")

    def evaluate(step: int, time_fs: float, initial: bool = False) -> tuple[float, np.ndarray]:
        try:
            energy = float(atoms.get_potential_energy())
            forces = atoms.get_forces()
        except Exception as exc:
            if initial and isinstance(exc, MLMDError):  # e.g. an element the model does not know: bad input
                raise
            raise trip(Trip("calculator", f"the calculator failed ({type(exc).__name__}: {_first_line(exc)})"), step) from exc
        t = check_state(
            atoms, energy=energy, forces=forces, temperature_K=float(atoms.get_temperature()),
            min_distance_A=guards.min_distance_A, temperature_limit_K=t_limit,
            max_forces_std=guards.max_forces_std_eV_A, calc_results=getattr(atoms.calc, "results", None),
        )
        if t is not None:
            raise trip(t, step)
        last_good.take(atoms, step, time_fs, energy, forces)
        return energy, forces

    # The first evaluation (and its guard check) happens before anything is written.
    energy, _ = evaluate(start, start_time, initial=True)
    workdir.mkdir(parents=True, exist_ok=True)  # only now: a rejected input leaves no folder behind
    if restart:
        mdio.prepare_restart(workdir, start)
    mdio.write_json(workdir / mdio.CONFIG, config.model_dump(mode="json"))
    thermo = mdio.ThermoLog(workdir / mdio.THERMO, append=restart)
    traj = None
    t0 = time.perf_counter()
    try:
        traj = mdio.TrajectoryWriter(workdir, atoms, resume_step=start if restart else None)
        if not restart:
            thermo.write(_thermo_row(dyn, atoms, start, start_time, energy, want_pressure))
            traj.write(atoms, start, start_time)
            save_ckpt(start, start_time)
        if progress is not None:
            progress(start, end)
        for step in range(start + 1, end + 1):
            time_fs = start_time + (step - start) * dt
            try:
                dyn.step()
            except Exception as exc:  # includes the calculator's own MLMDErrors (e.g. atoms too close)
                raise trip(Trip("calculator", f"the step failed ({type(exc).__name__}: {_first_line(exc)})"), step) from exc
            dyn.nsteps = step
            do_log = step % config.log_interval == 0
            do_traj = step % config.trajectory_interval == 0
            do_ckpt = step % config.checkpoint_interval == 0 or step == end
            if do_log or do_traj or do_ckpt or step % guards.interval == 0:
                energy, _ = evaluate(step, time_fs)
            if do_log:
                thermo.write(_thermo_row(dyn, atoms, step, time_fs, energy, want_pressure))
                if progress is not None:
                    progress(step, end)
            if do_traj:
                traj.write(atoms, step, time_fs)
            if do_ckpt:
                save_ckpt(step, time_fs)
        if progress is not None:
            progress(end, end)
    finally:
        thermo.close()
        if traj is not None:
            traj.close()
    return finish_run(workdir, atoms, len(atoms), start, end, start_time + (end - start) * dt, traj.n_frames,
                      time.perf_counter() - t0, restart, {"checkpoint": workdir / mdio.CHECKPOINT},
                      {"integrator": integrator_name(config)})
