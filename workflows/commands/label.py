"""``mlmd label``: electrolyte clusters labelled with GFN2-xTB (or any ASE calculator) into extxyz shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def label(
        config: Optional[Path] = typer.Argument(None, help="YAML file with LabelConfig fields (CLI flags override it)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (extxyz shards + MANIFEST.json)."),
        n_clusters: Optional[int] = typer.Option(None, "--n-clusters", help="Number of clusters to label."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Global seed; cluster i uses a seed derived from it."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes."),
        shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Clusters per shard file."),
        min_atoms: Optional[int] = typer.Option(None, "--min-atoms", help="Smallest cluster (atoms)."),
        max_atoms: Optional[int] = typer.Option(None, "--max-atoms", help="Largest cluster (atoms)."),
        solvent: Optional[list[str]] = typer.Option(None, "--solvent", help="Solvent name or SMILES (repeatable; replaces the list)."),
        salt: Optional[list[str]] = typer.Option(None, "--salt", help="Salt name (repeatable; replaces the list)."),
        calculator: Optional[str] = typer.Option(None, "--calculator", help="Reference: 'tblite' (GFN2-xTB) or module:factory."),
        sampler: Optional[str] = typer.Option(None, "--sampler", help="MD driver module:factory (default: the reference)."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    ) -> None:
        """Build electrolyte clusters with packmol, sample them with hot MD, label them, write extxyz shards."""
        from workflows.labelling.config import load_config
        from workflows.labelling.label import run_label

        cfg = load_config(
            config, out=out, n_clusters=n_clusters, seed=seed, workers=workers, shard_size=shard_size,
            min_atoms=min_atoms, max_atoms=max_atoms, solvents=solvent or None, salts=salt or None,
            calculator=calculator, sampler=sampler,
        )
        run_label(cfg, progress=not no_progress)

    @app.command("label-crystals")
    def label_crystals(
        config: Optional[Path] = typer.Argument(None, help="YAML file with CrystalLabelConfig fields (CLI flags override it)."),
        data: Optional[str] = typer.Option(None, "--data", help="CSV with a 'cif' column, carbon_24 / perov_5, or a folder of CIFs."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (extxyz shards + MANIFEST.json)."),
        n_structures: Optional[int] = typer.Option(None, "--n-structures", help="About this many crystals in all."),
        calculator: Optional[str] = typer.Option(None, "--calculator", help="gfn1-xtb, gfn2-xtb, emt or module:factory."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    ) -> None:
        """Label crystals (as given, strained, rattled, hot MD) with energy, forces and stress for a crystal potential."""
        from workflows.labelling.crystals import load_crystal_label_config, run_label_crystals

        cfg = load_crystal_label_config(config, data=data, out=str(out) if out else None, n_structures=n_structures,
                                        calculator=calculator, workers=workers)
        m = run_label_crystals(cfg, progress=not no_progress)
        typer.echo(f"{m['n_frames']} frames from {m['n_crystals']} crystals in {cfg.out} "
                   f"(by split {m['frames_by_split']}; dropped {m['dropped'] or 'none'}; "
                   f"{m['n_malformed_rows']} unreadable crystals skipped)")
