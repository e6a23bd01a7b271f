"""``mlmd align CONFIG.yaml``: align a BAMBOO model's liquid densities to experiment (workflows.alignment)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def align(
        config: Optional[Path] = typer.Argument(None, help="YAML file with AlignConfig fields (CLI flags override it)."),
        model: Optional[str] = typer.Option(None, "--model", help="Bundled model name or checkpoint to align."),
        densities: Optional[Path] = typer.Option(None, "--densities", help="CSV: name,smiles,temperature_K,density_g_cm3."),
        output: Optional[Path] = typer.Option(None, "--output", help="Output folder (resumable)."),
        rounds: Optional[int] = typer.Option(None, "--rounds", help="Sampling + fine-tuning rounds."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Liquids sampled in parallel."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress lines."),
    ) -> None:
        """Fine-tune the energy head so each liquid's NPT density (or its pressure at the experimental density) meets
        experiment."""
        from workflows.alignment import align as run_align, load_align_config

        cfg = load_align_config(config, {"model": model, "densities": densities, "output": output, "rounds": rounds,
                                         "workers": workers})
        result = run_align(cfg, progress=None if quiet else (lambda line: typer.echo(line, err=True)))
        last = result["rounds"][-1]
        summary = {"model": result["model"], "rounds": len(result["rounds"]),
                   "before_last_fit": {m["name"]: {"density_g_cm3": round(m["density_model_g_cm3"], 4),
                                                   "pressure_bar": round(m["pressure_bar"], 1)}
                                       for m in last["liquids"]},
                   "anchors": last["fit"]["anchors"]}
        if result["check"] is not None:
            summary["check"] = {"density_mae_g_cm3": round(result["check"]["mae_g_cm3"], 4),
                                "error_g_cm3": {r["name"]: round(r["error_g_cm3"], 4) for r in result["check"]["liquids"]}}
        typer.echo(json.dumps(summary, indent=2))
