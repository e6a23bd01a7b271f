"""``mlmd screen``: electrolyte formulations -> properties with error bars, in a database, on Dask."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def screen(
        spec: Optional[Path] = typer.Argument(None, help="Formulation spec (YAML). Without it, the flags define one formulation."),
        db: Optional[str] = typer.Option(None, "--db", help="Results database: SQLite file (default screen.db) or a URL ase.db accepts."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder of the per-formulation run folders (default: <db>_runs)."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Local Dask worker processes (default: CPU cores, at most 4)."),
        scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Use an existing Dask scheduler, tcp://HOST:PORT."),
        threads: bool = typer.Option(False, "--threads", help="Local workers as threads in this process instead of processes."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No live progress table."),
        solvents: Optional[str] = typer.Option(None, "--solvents", help="Solvents by name or SMILES, e.g. EC:DMC."),
        ratio: Optional[str] = typer.Option(None, "--ratio", help="Relative amounts of the solvents, e.g. 1:1."),
        ratio_basis: Optional[str] = typer.Option(None, "--ratio-basis", help="mole | mass | volume."),
        salt: Optional[str] = typer.Option(None, "--salt", help="LiPF6 | LiBF4 | LiFSI | LiTFSI."),
        concentration: Optional[float] = typer.Option(None, "--concentration", help="Salt concentration."),
        unit: Optional[str] = typer.Option(None, "--unit", help="molar (mol/L) | molal (mol/kg)."),
        temperature: Optional[float] = typer.Option(None, "--temperature", help="Temperature (K)."),
        n_molecules: Optional[int] = typer.Option(None, "--n-molecules", help="Number of solvent molecules."),
        n_atoms: Optional[int] = typer.Option(None, "--n-atoms", help="Approximate number of atoms."),
        model: Optional[str] = typer.Option(None, "--model", help="Bundled model name or checkpoint path."),
        engine: Optional[str] = typer.Option(None, "--engine", help="MD engine: ase | openmm."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of packing, velocities and thermostats."),
        name: Optional[str] = typer.Option(None, "--name", help="Formulation name (flags only)."),
    ) -> None:
        """Screen electrolyte formulations: box -> NPT density -> transport replicas -> properties with error bars."""
        from workflows.screening.runner import screen as run_screen
        from workflows.screening.spec import load_spec, spec_from_flags

        common = dict(temperature_K=temperature, n_molecules=n_molecules, n_atoms=n_atoms, model=model,
                      engine=engine, seed=seed)
        if spec is not None:
            formulation_flags = dict(solvents=solvents, ratio=ratio, ratio_basis=ratio_basis, salt=salt,
                                     concentration=concentration, concentration_unit=unit, name=name)
            given = [k for k, v in formulation_flags.items() if v is not None]
            if given:
                from mlmd.errors import ConfigError

                raise ConfigError(f"--{given[0].replace('_', '-')} defines a formulation; put it in the spec file "
                                  "or drop the spec argument")
            parsed = load_spec(spec, overrides=common)
        else:
            parsed = spec_from_flags(solvents=solvents, ratio=ratio, ratio_basis=ratio_basis, salt=salt,
                                     concentration=concentration, concentration_unit=unit, name=name, **common)
        result = run_screen(parsed, database=db, output_dir=out, workers=workers, scheduler=scheduler,
                            processes=not threads, progress=not no_progress)
        from workflows.screening.report import results_table

        typer.echo(results_table(result.database))
        counts = ", ".join(f"{n} {state}" for state, n in sorted(result.counts.items()))
        rate = f" ({result.formulations_per_hour:.1f} formulations/hour)" if result.counts.get("done") else ""
        typer.echo(f"screen: {counts} in {result.wall_s:.0f} s with {result.workers or 0} worker(s){rate}; "
                   f"database {result.database}")
        if result.counts.get("failed"):
            raise typer.Exit(1)
