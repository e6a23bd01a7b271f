"""``mlmd md``: molecular dynamics with an ML potential (or any ASE calculator) on a structure file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_calculator_factory(spec: str) -> Any:
    """Build an ASE calculator from ``module:factory`` (a class or a function called without arguments)."""
    from mlmd.errors import ConfigError
    from mlmd.registry import load_callable

    factory = load_callable(spec, "--calculator")
    try:
        calc = factory()
    except Exception as exc:
        raise ConfigError(f"--calculator {spec!r} failed to build a calculator ({type(exc).__name__}: {_first_line(exc)})") from None
    if not hasattr(calc, "get_property") and not hasattr(calc, "calculate"):
        raise ConfigError(f"--calculator {spec!r} returned {type(calc).__name__}, not an ASE calculator")
    return calc


def _read_structure(path: Path):
    import ase.io

    from mlmd.errors import InputError

    if not path.is_file():
        raise InputError(f"structure file {str(path)!r} not found; give an existing structure file (extxyz, cif, pdb, ...)")
    try:
        return ase.io.read(str(path), index=-1)
    except Exception as exc:
        raise InputError(f"cannot read structure {str(path)!r} ({type(exc).__name__}: {_first_line(exc)}); "
                         "give a file ASE can read (extxyz, cif, pdb, POSCAR, ...)") from None


def register(app: typer.Typer) -> None:
    @app.command()
    def md(
        structure: Optional[Path] = typer.Argument(
            None, help="Starting structure (any format ASE reads; the last frame is used). With --restart it may be "
            "omitted: the species, masses and molecule ids come from the run's own trajectory."),
        model: Optional[str] = typer.Option(None, "--model", help="ML potential: bundled name or checkpoint path."),
        calculator: Optional[str] = typer.Option(None, "--calculator", help="Any ASE calculator as module:factory (instead of --model)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML file with MDConfig fields (flags override it)."),
        ensemble: Optional[str] = typer.Option(None, "--ensemble", help="nve | nvt | npt."),
        temperature: Optional[float] = typer.Option(None, "--temperature", help="Target / initial temperature (K)."),
        pressure: Optional[float] = typer.Option(None, "--pressure", help="Target pressure for npt (bar)."),
        timestep: Optional[float] = typer.Option(None, "--timestep", help="Time step (fs)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Total number of steps of the run (a restart continues up to it)."),
        thermostat: Optional[str] = typer.Option(None, "--thermostat", help="nvt: langevin | bussi | nose_hoover."),
        barostat: Optional[str] = typer.Option(None, "--barostat", help="npt: mtk_iso (default) | mtk | langevin."),
        friction: Optional[float] = typer.Option(None, "--friction", help="Langevin friction (1/fs)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of velocities and thermostat noise."),
        log_interval: Optional[int] = typer.Option(None, "--log-interval", help="Steps between thermo.csv rows."),
        trajectory_interval: Optional[int] = typer.Option(None, "--trajectory-interval", help="Steps between trajectory frames."),
        checkpoint_interval: Optional[int] = typer.Option(None, "--checkpoint-interval", help="Steps between checkpoints."),
        out: Path = typer.Option(Path("md_run"), "--out", help="Run folder (thermo.csv, trajectory.*, checkpoint.npz)."),
        restart: bool = typer.Option(False, "--restart", help="Continue the run in --out from its checkpoint."),
        device: str = typer.Option("cpu", "--device", help="Device of the ML potential (cpu, cuda)."),
        dtype: str = typer.Option("float32", "--dtype", help="Precision of the ML potential (float32, float64)."),
        engine: str = typer.Option("ase", "--engine", help="MD engine: ase | openmm (the model inside OpenMM; needs --model)."),
        openmm_platform: str = typer.Option("Reference", "--openmm-platform", help="OpenMM platform for --engine openmm (Reference, CPU, CUDA)."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    ) -> None:
        """Run NVE / NVT / NPT molecular dynamics; writes a trajectory (ASE + mdtraj), a log and checkpoints."""
        from mlmd.errors import ConfigError
        from mlmd.md import load_config, make_config, run_md

        overrides = dict(
            ensemble=ensemble, temperature_K=temperature, pressure_bar=pressure, timestep_fs=timestep,
            steps=steps, thermostat=thermostat, barostat=barostat, friction_per_fs=friction, seed=seed,
            log_interval=log_interval, trajectory_interval=trajectory_interval,
            checkpoint_interval=checkpoint_interval,
        )
        previous = out / "config.json"
        if restart and config is None and previous.is_file():
            # A restart without --config continues with the run's own settings (flags still override them).
            import json

            cfg = make_config(json.loads(previous.read_text()), source=str(previous), **overrides)
        else:
            cfg = load_config(config, **overrides)
        if engine not in ("ase", "openmm"):
            raise ConfigError(f"--engine {engine!r} is not accepted; use ase or openmm")
        if (model is None) == (calculator is None):
            raise ConfigError("give exactly one of --model NAME_OR_PATH or --calculator module:factory")
        if engine == "openmm" and model is None:
            raise ConfigError("--engine openmm runs an mlmd potential: give --model NAME_OR_PATH (--calculator needs --engine ase)")
        if structure is None:
            first_frame = out / "trajectory.extxyz"
            if not restart:
                raise ConfigError("give a STRUCTURE file (it may only be omitted with --restart)")
            if not first_frame.is_file():
                raise ConfigError(f"--restart without STRUCTURE needs {str(first_frame)!r}; give the structure file")
            import ase.io

            atoms = ase.io.read(str(first_frame), index=0, format="extxyz")
        else:
            atoms = _read_structure(structure)
        if engine == "openmm":
            from functools import partial

            from mlmd.openmm.engine import run_openmm_md

            calc = model
            run_md = partial(run_openmm_md, device=device, dtype=dtype, platform=openmm_platform)  # noqa: F811
        elif calculator is not None:
            calc = load_calculator_factory(calculator)
        else:
            try:
                from mlmd.calculator import MLMDCalculator
            except ImportError as exc:
                raise ConfigError(f"--model needs mlmd.calculator, which cannot be imported ({_first_line(exc)})") from None
            calc = MLMDCalculator(model, device=device, dtype=dtype)

        if no_progress:
            result = run_md(atoms, calc, cfg, out, restart=restart)
        else:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            columns = (
                TextColumn(f"md {cfg.ensemble}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                TimeElapsedColumn(), TimeRemainingColumn(),
            )
            # The bar appears at the first progress report, i.e. after the input checks passed.
            bar = Progress(*columns, console=Console(stderr=True))
            task = None

            def progress(step: int, total: int) -> None:
                nonlocal task
                if task is None:
                    bar.start()
                    task = bar.add_task("md", total=total, completed=step)
                bar.update(task, completed=step, total=total)

            try:
                result = run_md(atoms, calc, cfg, out, restart=restart, progress=progress)
            finally:
                if task is not None:
                    bar.stop()
        rate = result.steps_run / result.wall_time_s if result.wall_time_s > 0 else float("nan")
        typer.echo(
            f"md: steps {result.first_step} -> {result.last_step} ({result.time_fs / 1000:.3f} ps) in "
            f"{result.wall_time_s:.1f} s ({rate:.1f} steps/s); {result.n_frames} frames; outputs in {result.workdir}"
        )
        s = result.summary
        parts = []
        if s.get("temperature_K_mean") is not None:
            parts.append(f"T = {s['temperature_K_mean']:.1f} ± {s['temperature_K_std']:.1f} K")
        if s.get("density_g_cm3_mean") is not None:
            parts.append(f"density = {s['density_g_cm3_mean']:.4f} ± {s['density_g_cm3_std']:.4f} g/cm³")
        if s.get("pressure_bar_mean") is not None:
            parts.append(f"P = {s['pressure_bar_mean']:.0f} ± {s['pressure_bar_std']:.0f} bar")
        if s.get("conserved_drift_meV_per_atom_per_ps") is not None:
            parts.append(f"conserved-energy drift = {s['conserved_drift_meV_per_atom_per_ps']:.3g} meV/atom/ps")
        if parts:
            typer.echo("md: " + "; ".join(parts))
