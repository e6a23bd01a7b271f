"""The OpenMM MD engine: ``run_openmm_md(atoms, model, config, workdir)`` — ``mlmd md --engine openmm``.

Same settings (:class:`mlmd.md.MDConfig`), guards (:mod:`mlmd.md.guards`) and run-folder layout as the ASE engine
(:func:`mlmd.md.run_md`), so the analysis tools read either. The model runs inside OpenMM as the openmmml plugin's
``PythonForce``; the loop is ours (OpenMM's ``Simulation.step`` between events) so guards, log rows, frames and
checkpoints happen at exact step numbers.

==========  ============  ===========================================================================
ensemble    choice        OpenMM
==========  ============  ===========================================================================
nve         --            ``VerletIntegrator``
nvt         langevin      ``LangevinMiddleIntegrator`` (friction ``friction_per_fs``)
nvt         nose_hoover   ``NoseHooverIntegrator`` (collision frequency 1 / ``thermostat_time_fs``)
npt         mtk_iso       thermostat as for nvt + ``MonteCarloBarostat`` (isotropic, every 25 steps)
npt         langevin      as mtk_iso
npt         mtk           thermostat as for nvt + ``MonteCarloFlexibleBarostat`` (every 25 steps)
==========  ============  ===========================================================================

Run folder (besides the ASE engine's thermo.csv, trajectory.extxyz/.dcd, topology.pdb, config.json, result.json,
last_good.extxyz): ``openmm_checkpoint.npz`` (OpenMM's own ``Context.createCheckpoint`` bytes plus step, time,
integrator, platform and species; written atomically) and ``openmm_state.csv`` (OpenMM's ``StateDataReporter``).
An OpenMM checkpoint restores positions, velocities, box, step count and the integrator's and barostat's random
state, but only on the platform that wrote it. ``topology.pdb`` has one residue per molecule (``mol_id``).

Frame: a general triclinic cell is rotated into OpenMM's reduced form (a along x, b in the xy plane) and every
output uses that frame; cubic and orthorhombic boxes are unchanged. Positions are unwrapped, as in the ASE engine.
Temperatures use 3N - 3 degrees of freedom (the CMMotionRemover fixes the centre of mass), as OpenMM reports them;
the start velocities have their centre-of-mass motion removed. Momenta in the frames and the kinetic energy: on-step
velocities for NVE (OpenMM's leapfrog Verlet is started and read as velocity Verlet, so the conserved energy has no
step-0 jump); for the Langevin and Nose-Hoover integrators, OpenMM's own velocities and kinetic energy.
Pressure in thermo.csv (periodic runs, ``log_pressure``): the model's stress at log steps, computed in the same
evaluation as the forces, plus the kinetic part. The Monte Carlo barostat itself needs energies only.
Uncertainty: with a posterior / ensemble model the largest per-atom force spread of every evaluation since the
previous check is guarded (``guards.max_forces_std_eV_A``) and logged in ``forces_std_max_eV_A`` of
``openmm_uncertainty.csv``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase import Atoms

from mlmd import keys
from mlmd.errors import ConfigError, InputError, MLMDError, SimulationError
from mlmd.graph import total_charge_of
from mlmd.io import atomic_path
from mlmd.md import io as mdio
from mlmd.md.config import MDConfig, make_config
from mlmd.md.guards import Trip, check_state, check_structure, temperature_limit
from mlmd.units import (ANGSTROM_PER_NM, ASE_FS, BAR_PER_EV_PER_A3, FS_PER_PS, G_PER_CM3_PER_AMU_PER_A3,
                        KB_EV_PER_K, KJ_PER_MOL_PER_EV, NM_PER_ANGSTROM)

CHECKPOINT = "openmm_checkpoint.npz"
STATE_DATA = "openmm_state.csv"
UNCERTAINTY = "openmm_uncertainty.csv"
CHECKPOINT_FORMAT = "mlmd-openmm-checkpoint"
CHECKPOINT_VERSION = 1
BAROSTAT_FREQUENCY = 25
ProgressCallback = Callable[[int, int], None]


def integrator_name(config: MDConfig) -> str:
    """Names the OpenMM integrator (and barostat) of ``config``; a restart must use the same one."""
    if config.ensemble == "nve":
        return "openmm-verlet"
    thermostat = {"langevin": "langevin-middle", "nose_hoover": "nose-hoover"}.get(config.thermostat)
    if thermostat is None:
        raise ConfigError(f"thermostat {config.thermostat!r} is not available with the openmm engine; "
                          "use langevin or nose_hoover (or --engine ase)")
    if config.ensemble == "nvt":
        return f"openmm-{thermostat}"
    barostat = "mc-flexible" if config.barostat == "mtk" else "mc-isotropic"
    return f"openmm-{thermostat}+{barostat}"


def _seed(config: MDConfig, salt: int = 0) -> int:
    return (config.seed * 7919 + salt) % (2**31 - 2) + 1  # OpenMM treats seed 0 as "random": never pass it


def _build_integrator(config: MDConfig):
    import openmm
    from openmm import unit

    dt = config.timestep_fs / FS_PER_PS * unit.picosecond
    name = integrator_name(config)
    if name == "openmm-verlet":
        return openmm.VerletIntegrator(dt)
    temperature = config.temperature_K * unit.kelvin
    if name.startswith("openmm-langevin-middle"):
        integrator = openmm.LangevinMiddleIntegrator(temperature, config.friction_per_fs * FS_PER_PS / unit.picosecond, dt)
        integrator.setRandomNumberSeed(_seed(config))
        return integrator
    return openmm.NoseHooverIntegrator(temperature, 1.0 / (config.thermostat_time_fs / FS_PER_PS) / unit.picosecond, dt)


def _add_barostat(system, config: MDConfig) -> None:
    import openmm
    from openmm import unit

    if config.ensemble != "npt":
        return
    pressure = config.pressure_bar * unit.bar
    temperature = config.temperature_K * unit.kelvin
    if config.barostat == "mtk":
        barostat = openmm.MonteCarloFlexibleBarostat(pressure, temperature, BAROSTAT_FREQUENCY)
    else:
        barostat = openmm.MonteCarloBarostat(pressure, temperature, BAROSTAT_FREQUENCY)
    barostat.setRandomNumberSeed(_seed(config, 1))
    system.addForce(barostat)


def _barostat(system):
    import openmm

    for force in system.getForces():
        if isinstance(force, (openmm.MonteCarloBarostat, openmm.MonteCarloFlexibleBarostat)):
            return force
    return None


def _to_openmm_frame(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` in OpenMM's frame (reduced cell; rotated positions and momenta)."""
    from mlmd.openmm.topology import reduced_box

    atoms = atoms.copy()
    if atoms.pbc.any():
        box, op = reduced_box(atoms)
        momenta = atoms.get_momenta() @ op.T
        atoms.positions = atoms.positions @ op.T
        atoms.set_cell(box, scale_atoms=False)
        atoms.set_momenta(momenta, apply_constraint=False)
    return atoms


def _save_checkpoint(path: Path, *, chk: bytes, step: int, time_fs: float, integrator: str, platform: str,
                     numbers: np.ndarray, config: MDConfig, total_charge: float) -> None:
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": int(step), "time_fs": float(time_fs),
            "integrator": integrator, "platform": platform, "total_charge": float(total_charge),
            "config": config.model_dump(mode="json")}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), numbers=np.asarray(numbers, dtype=np.int64),
                     state=np.frombuffer(chk, dtype=np.uint8))


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], np.ndarray, bytes]:
    """(metadata, atomic numbers, OpenMM checkpoint bytes) of an ``openmm_checkpoint.npz``; InputError if unusable."""
    path = Path(path)
    if not path.is_file():
        other = path.with_name(mdio.CHECKPOINT)
        hint = (f"; {other.name} there was written by the ASE engine: restart with --engine ase"
                if other.is_file() else "; start a new run instead of --restart")
        raise InputError(f"no OpenMM checkpoint {str(path)!r}{hint}")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            numbers = np.asarray(data["numbers"], dtype=np.int64)
            chk = np.asarray(data["state"], dtype=np.uint8).tobytes()
    except Exception as exc:
        raise InputError(f"{path} is not a readable OpenMM checkpoint ({type(exc).__name__}); "
                         "restart from a file written by `mlmd md --engine openmm`") from None
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"{path} is not an mlmd OpenMM checkpoint (format {CHECKPOINT_FORMAT!r} v{CHECKPOINT_VERSION})")
    return meta, numbers, chk


def _truncate_rows(path: Path, step: int) -> None:
    """Keep the header and the rows whose first field (the step) is <= ``step`` (files with '#' headers too)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        head = line.split(",", 1)[0].strip().strip('"')
        if line.startswith("#") or not head.isdigit():
            if not keep:
                keep.append(line)
            continue
        if line.endswith("\n") and int(head) <= step:
            keep.append(line)
    mdio.atomic_write_text(path, "".join(keep))


class _Snapshot:
    """The last frame that passed the guards (written only when a guard trips)."""

    def __init__(self) -> None:
        self.frame: Atoms | None = None
        self.step = -1

    def save(self, path: Path) -> None:
        if self.frame is not None:
            mdio.write_frame(self.frame, path)


def run_openmm_md(
    atoms: Atoms,
    model: Any = "bamboo-electrolyte",
    config: MDConfig | dict[str, Any] | None = None,
    workdir: str | Path = "md_run",
    *,
    restart: bool = False,
    progress: ProgressCallback | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    platform: str = "Reference",
    skin: float = 0.5,
):
    """Run MD on ``atoms`` with the mlmd potential ``model`` (name, checkpoint path or Potential) in OpenMM.

    Same contract as :func:`mlmd.md.run_md`: ``restart=True`` continues from ``workdir/openmm_checkpoint.npz`` up
    to ``config.steps`` total steps; ``atoms`` is not modified; returns an :class:`mlmd.md.MDResult` whose
    ``atoms`` is the final state (in OpenMM's frame). ``platform``: "Reference" (double precision, default) or
    "CPU"; a checkpoint restarts only on its own platform. Raises InputError / ConfigError before starting,
    SimulationError when a guard trips.
    """
    import openmm
    from openmm import app, unit
    from mlmd.md.engine import finish_run
    from mlmd.openmm.plugin import find_compute, mlpotential
    from mlmd.openmm.topology import topology_from_atoms

    if config is None:
        config = MDConfig()
    elif isinstance(config, dict):
        config = make_config(config)
    workdir = Path(workdir)
    guards = config.guards
    name = integrator_name(config)
    if config.ensemble == "npt" and not np.asarray(atoms.pbc).all():
        raise InputError(f"ensemble 'npt' needs a fully periodic structure, got pbc={np.asarray(atoms.pbc).tolist()}; "
                         "use nvt for clusters")
    try:
        omm_platform = openmm.Platform.getPlatformByName(platform)
    except Exception:
        names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        raise ConfigError(f"OpenMM platform {platform!r} is not available; use one of {', '.join(names)}") from None

    meta = chk = None
    if restart:
        meta, numbers, chk = load_checkpoint(workdir / CHECKPOINT)
        if len(numbers) != len(atoms) or np.any(numbers != atoms.numbers):
            raise InputError(f"checkpoint {workdir / CHECKPOINT} holds {len(numbers)} atoms that do not match the "
                             f"structure's {len(atoms)} ({atoms.get_chemical_formula()}); restart with the original structure")
        if meta["integrator"] != name:
            raise ConfigError(f"checkpoint was written by integrator {meta['integrator']!r} but the config asks for "
                              f"{name!r}; restart with the same ensemble/thermostat/barostat")
        if meta["platform"] != platform:
            raise ConfigError(f"checkpoint was written on OpenMM platform {meta['platform']!r}; restart on the same "
                              f"platform (asked for {platform!r})")
        if meta["step"] > config.steps:
            raise ConfigError(f"steps = {config.steps} is below the checkpoint's step {meta['step']}; steps is the "
                              f"run's total, give at least {meta['step']}")
    else:
        busy = [n for n in (CHECKPOINT, mdio.CHECKPOINT, mdio.THERMO, mdio.TRAJ_XYZ) if (workdir / n).exists()]
        if busy:
            raise InputError(f"output folder {str(workdir)!r} already holds a run ({busy[0]}); "
                             "restart it (--restart) or choose another output folder")

    check_structure(atoms, guards.min_distance_A)
    atoms = _to_openmm_frame(atoms)
    total_charge = total_charge_of(atoms)
    if meta is not None and "total_charge" in meta and keys.TOTAL_CHARGE not in atoms.info:
        total_charge = float(meta["total_charge"])  # e.g. restarted from the run's own trajectory frame
    topology = topology_from_atoms(atoms)
    potential = mlpotential(model=model, dtype=dtype, device=device, skin=skin)
    system = potential.createSystem(topology, total_charge=int(total_charge))
    for k, mass in enumerate(atoms.get_masses()):
        system.setParticleMass(k, float(mass))
    _add_barostat(system, config)
    compute = find_compute(system)
    integrator = _build_integrator(config)
    properties = {"Threads": "1"} if platform == "CPU" else {}
    simulation = app.Simulation(topology, system, integrator, omm_platform, properties)
    context = simulation.context
    masses = atoms.get_masses()
    n_constraints = system.getNumConstraints()
    dof = 3 * len(atoms) - n_constraints - (3 if len(atoms) > 1 else 0)

    if chk is not None:
        try:
            context.loadCheckpoint(chk)
        except Exception as exc:
            raise InputError(f"checkpoint {workdir / CHECKPOINT} does not fit this system/platform "
                             f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None
        start, start_time = int(meta["step"]), float(meta["time_fs"])
        context.setStepCount(start)
        barostat = _barostat(system)
        if barostat is not None and start % BAROSTAT_FREQUENCY:
            # The barostat counts steps since its last move, and a checkpoint does not store that count: shorten
            # the interval up to the next multiple of the frequency (restored there in the loop), so the moves
            # happen at the same steps as in an uninterrupted run.
            barostat.setFrequency(BAROSTAT_FREQUENCY - start % BAROSTAT_FREQUENCY)
    else:
        start, start_time = 0, 0.0
        try:
            context.setPositions(atoms.positions * NM_PER_ANGSTROM)
            if atoms.pbc.any():
                context.setPeriodicBoxVectors(*(atoms.cell.array * NM_PER_ANGSTROM))
            has_momenta = atoms.has("momenta") and np.any(atoms.get_momenta() != 0)
            mode = config.initial_velocities
            if mode == "keep" or (mode == "auto" and has_momenta):
                momenta = atoms.get_momenta()
                if not np.all(np.isfinite(momenta)):
                    raise InputError("structure carries non-finite momenta; fix them or set initial_velocities: maxwell")
                # amu Å / ASE time -> Å / ASE time -> Å/fs (1 fs = ASE_FS ASE time units) -> nm/ps
                context.setVelocities(momenta / masses[:, None] * ASE_FS * NM_PER_ANGSTROM * FS_PER_PS)
            elif config.temperature_K is not None:
                context.setVelocitiesToTemperature(config.temperature_K * unit.kelvin, _seed(config, 2))
            elif mode == "maxwell":
                raise ConfigError("initial_velocities 'maxwell' needs temperature_K (a positive number in K)")
            if len(atoms) > 1:  # the CMMotionRemover would take the centre-of-mass motion out at the first step
                v = np.asarray(context.getState(getVelocities=True).getVelocities(asNumpy=True)
                               .value_in_unit(unit.nanometer / unit.picosecond))
                context.setVelocities(v - (masses[:, None] * v).sum(axis=0) / masses.sum())
        except Exception as exc:
            if isinstance(exc, MLMDError):
                raise
            if isinstance(compute.last_error, MLMDError):  # the model rejected the input (e.g. atoms too close)
                raise compute.last_error from None
            raise

    end = config.steps
    dt = config.timestep_fs
    t_limit = temperature_limit(config.temperature_K, guards.temperature_factor, guards.max_temperature_K)
    periodic = bool(atoms.pbc.all())
    want_pressure = config.log_pressure and periodic
    last_good = _Snapshot()

    def trip(t: Trip, step: int) -> SimulationError:
        path = workdir / mdio.LAST_GOOD
        if workdir.exists():
            last_good.save(path)
        if last_good.frame is not None and workdir.exists():
            where = f"last good frame (step {last_good.step}) saved to {path}"
        else:
            where = f"the starting state (step {step}) already fails this guard; nothing saved"
        return SimulationError(f"guard '{t.guard}' tripped at step {step}: {t.detail}; {where}")

    def observe(step: int, time_fs: float, stress: bool, initial: bool = False):
        """State at ``step`` -> (frame Atoms with results, thermo row); trips the guards."""
        compute.want_stress = stress
        try:
            state = context.getState(getPositions=True, getVelocities=True, getForces=True, getEnergy=True,
                                     enforcePeriodicBox=False)
        except Exception as exc:
            if initial and isinstance(compute.last_error, MLMDError):  # bad input, e.g. atoms too close
                raise compute.last_error from None
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise trip(Trip("calculator", f"the force evaluation failed ({type(exc).__name__}: {detail})"), step) from exc
        finally:
            compute.want_stress = False
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * ANGSTROM_PER_NM
        velocities = np.asarray(state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond))
        forces = np.asarray(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
        if name == "openmm-verlet":  # leapfrog: v(t - dt/2) -> v(t), the velocities OpenMM's kinetic energy uses
            velocities = velocities + 0.5 * dt / FS_PER_PS * forces / masses[:, None]
        momenta = masses[:, None] * velocities * ANGSTROM_PER_NM / FS_PER_PS / ASE_FS  # amu Å / ASE time
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV
        forces = forces / KJ_PER_MOL_PER_EV / ANGSTROM_PER_NM
        ekin = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV
        frame = Atoms(numbers=atoms.numbers, positions=positions, pbc=atoms.pbc)
        if periodic:
            frame.set_cell(np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer))
                           * ANGSTROM_PER_NM)
        frame.set_momenta(momenta, apply_constraint=False)
        frame.set_masses(masses)
        if keys.MOL_ID in atoms.arrays:
            frame.arrays[keys.MOL_ID] = atoms.arrays[keys.MOL_ID].copy()
        temperature = 2 * ekin / (max(dof, 1) * KB_EV_PER_K)
        results = compute.last_results
        t = check_state(frame, energy=energy, forces=forces, temperature_K=temperature,
                        min_distance_A=guards.min_distance_A, temperature_limit_K=t_limit, max_forces_std=None)
        spread = compute.take_max_forces_std()
        if t is None and guards.max_forces_std_eV_A is not None and spread is not None \
                and not spread <= guards.max_forces_std_eV_A:
            t = Trip("forces_std", f"force uncertainty {spread:.3f} eV/Å exceeds {guards.max_forces_std_eV_A} eV/Å "
                                   f"(largest per-atom spread since the previous check)")
        if t is not None:
            raise trip(t, step)
        frame_results = {"energy": energy, "forces": forces}
        if "charges" in results:
            frame_results["charges"] = results["charges"]
        row = {"step": step, "time_fs": time_fs, "epot_eV": energy, "ekin_eV": ekin, "etot_eV": energy + ekin,
               "conserved_eV": energy + ekin if name == "openmm-verlet" else math.nan, "temperature_K": temperature}
        if periodic:
            volume = float(abs(np.linalg.det(frame.cell.array)))
            row["volume_A3"] = volume
            row["density_g_cm3"] = float(masses.sum() / volume * G_PER_CM3_PER_AMU_PER_A3)
            if stress and "stress" in results:
                from ase.stress import voigt_6_to_full_3x3_stress

                full = voigt_6_to_full_3x3_stress(np.asarray(results["stress"]))
                full = full - np.einsum("ni,nj->ij", momenta, momenta / masses[:, None]) / volume
                row["pressure_bar"] = float(-np.trace(full) / 3.0 * BAR_PER_EV_PER_A3)
                for col, (a, b) in zip(("pxx_bar", "pyy_bar", "pzz_bar", "pyz_bar", "pxz_bar", "pxy_bar"),
                                       ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))):
                    row[col] = float(-full[a, b] * BAR_PER_EV_PER_A3)
        from ase.calculators.singlepoint import SinglePointCalculator

        frame.calc = SinglePointCalculator(frame, **frame_results)
        last_good.frame = mdio.make_frame(frame, step, time_fs, frame_results)
        last_good.step = step
        return frame, row, state, spread

    def save_ckpt(step: int, time_fs: float) -> None:
        _save_checkpoint(workdir / CHECKPOINT, chk=context.createCheckpoint(), step=step, time_fs=time_fs,
                         integrator=name, platform=platform, numbers=atoms.numbers, config=config,
                         total_charge=total_charge)

    if chk is None and name == "openmm-verlet":
        # OpenMM's Verlet is leapfrog: its velocities live at t - dt/2 and it reports the kinetic energy of
        # v + dt/2 F/m. Shift the start velocities back so step 0 has exactly the chosen velocities (this is
        # velocity Verlet from them) and the conserved-energy log has no jump at step 0.
        try:
            state = context.getState(getVelocities=True, getForces=True)
        except Exception as exc:
            if isinstance(compute.last_error, MLMDError):  # bad input, e.g. atoms too close
                raise compute.last_error from None
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise trip(Trip("calculator", f"the force evaluation failed ({type(exc).__name__}: {detail})"), 0) from exc
        v = np.asarray(state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond))
        f = np.asarray(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
        context.setVelocities(v - 0.5 * dt / FS_PER_PS * f / masses[:, None])  # kJ/mol/nm / amu * ps = nm/ps

    # The first evaluation (and its guard check) happens before anything is written.
    frame, row, state, spread = observe(start, start_time, want_pressure, initial=True)
    workdir.mkdir(parents=True, exist_ok=True)  # only now: a rejected input leaves no folder behind
    if restart:
        mdio.prepare_restart(workdir, start)
        _truncate_rows(workdir / STATE_DATA, start)
        _truncate_rows(workdir / UNCERTAINTY, start)
    mdio.write_json(workdir / mdio.CONFIG, config.model_dump(mode="json"))
    thermo = mdio.ThermoLog(workdir / mdio.THERMO, append=restart)
    state_data = app.StateDataReporter(
        str(workdir / STATE_DATA), config.log_interval, step=True, time=True, potentialEnergy=True,
        kineticEnergy=True, temperature=True, volume=periodic, density=periodic, speed=True,
        append=restart and (workdir / STATE_DATA).exists(),
    )
    uncertainty = None
    traj = None
    t0 = time.perf_counter()
    try:
        traj = mdio.TrajectoryWriter(workdir, frame, resume_step=start if restart else None)
        if not restart or not (workdir / mdio.TOPOLOGY).exists():  # residue names and bonds (CONECT) too
            with atomic_path(workdir / mdio.TOPOLOGY) as tmp, open(tmp, "w") as fh:
                app.PDBFile.writeFile(topology, frame.positions * NM_PER_ANGSTROM * unit.nanometer, fh)
        if spread is not None:
            fresh = not (restart and (workdir / UNCERTAINTY).exists())
            uncertainty = open(workdir / UNCERTAINTY, "w" if fresh else "a")
            if fresh:
                uncertainty.write("step,forces_std_max_eV_A\n")
        if not restart:
            thermo.write(row)
            state_data.report(simulation, state)
            traj.write(frame, start, start_time)
            save_ckpt(start, start_time)
            if uncertainty is not None:
                uncertainty.write(f"{start},{spread:.6g}\n")
        if progress is not None:
            progress(start, end)
        intervals = [config.log_interval, config.trajectory_interval, config.checkpoint_interval, guards.interval]
        barostat = _barostat(system)
        if barostat is not None and barostat.getFrequency() != BAROSTAT_FREQUENCY:
            intervals.append(BAROSTAT_FREQUENCY)
        step = start
        while step < end:
            nxt = min([end] + [(step // k + 1) * k for k in intervals])
            try:
                simulation.step(nxt - step)
            except Exception as exc:  # the model's own errors (e.g. atoms too close) arrive as OpenMMException
                detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise trip(Trip("calculator", f"the step failed ({type(exc).__name__}: {detail})"), nxt) from exc
            step = nxt
            if barostat is not None and step % BAROSTAT_FREQUENCY == 0:
                barostat.setFrequency(BAROSTAT_FREQUENCY)
            time_fs = start_time + (step - start) * dt
            do_log = step % config.log_interval == 0
            frame, row, state, spread = observe(step, time_fs, want_pressure and do_log)
            if uncertainty is not None and spread is not None:
                uncertainty.write(f"{step},{spread:.6g}\n")
                uncertainty.flush()
            if do_log:
                thermo.write(row)
                state_data.report(simulation, state)
                if progress is not None:
                    progress(step, end)
            if step % config.trajectory_interval == 0:
                traj.write(frame, step, time_fs)
            if step % config.checkpoint_interval == 0 or step == end:
                save_ckpt(step, time_fs)
        if progress is not None:
            progress(end, end)
    finally:
        thermo.close()
        if uncertainty is not None:
            uncertainty.close()
        if traj is not None:
            traj.close()
        out = getattr(state_data, "_out", None)
        if out is not None and hasattr(out, "close"):
            out.close()
    return finish_run(workdir, frame, len(atoms), start, end, start_time + (end - start) * dt, traj.n_frames,
                      time.perf_counter() - t0, restart,
                      {"checkpoint": workdir / CHECKPOINT, "state_data": workdir / STATE_DATA},
                      {"engine": "openmm", "platform": platform, "integrator": name,
                       "model_evaluations": compute.n_evaluations})
