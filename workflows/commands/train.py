"""``mlmd train CONFIG.yaml`` and ``mlmd eval --model M --data FILE``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        config: Optional[Path] = typer.Argument(None, help="YAML training config (see potentials.training.TrainConfig)."),
        data: Optional[List[str]] = typer.Option(None, "--data", help="Labelled extxyz/db files or folders (overrides config)."),
        output: Optional[str] = typer.Option(None, "--output", help="Run folder (checkpoints, metrics.jsonl)."),
        epochs: Optional[int] = typer.Option(None, "--epochs"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size"),
        lr: Optional[float] = typer.Option(None, "--lr"),
        seed: Optional[int] = typer.Option(None, "--seed"),
        max_time_min: Optional[float] = typer.Option(None, "--max-time-min", help="Stop after this many minutes."),
        init_from: Optional[str] = typer.Option(None, "--init-from", help="Fine-tune from a model name or checkpoint."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 or float64."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu (default), cuda or cuda:N."),
        no_progress: bool = typer.Option(False, "--no-progress"),
    ) -> None:
        """Train a BAMBOO-style potential; resumes when the output folder holds last.pt. Use torchrun for data parallel."""
        from potentials.training import load_train_config, train as run_training

        overrides = {"data": data or None, "output": output, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                     "seed": seed, "max_time_min": max_time_min, "init_from": init_from, "dtype": dtype,
                     "device": device}
        cfg = load_train_config(config, overrides)
        result = run_training(cfg, progress=not no_progress)
        if result:
            summary = {"output": cfg.output, "epochs": result["epochs"], "train_time_s": result["train_time_s"],
                       "test": {k: v for k, v in (result["test"] or result["valid"]).items() if k != "by_config_type"}}
            typer.echo(json.dumps(summary, indent=2))

    @app.command("eval")
    def evaluate(
        model: str = typer.Option(..., "--model", help="Bundled model name or checkpoint path."),
        data: List[str] = typer.Option(..., "--data", help="Labelled extxyz/db file(s) with REF_energy and REF_forces."),
        batch_size: int = typer.Option(16, "--batch-size"),
        dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    ) -> None:
        """Print error metrics (meV/atom, meV/Å, e) as one JSON object, overall and by config_type."""
        import torch

        from mlmd import keys
        from mlmd.checkpoint import load_potential
        from mlmd.data import make_sample, read_frames
        from mlmd.errors import InputError
        from potentials.training import evaluate_samples

        torch_dtype = {"float32": torch.float32, "float64": torch.float64}.get(dtype)
        if torch_dtype is None:
            raise InputError(f"--dtype {dtype!r} is not supported; use float32 or float64")
        potential = load_potential(model, dtype=torch_dtype)
        frames = read_frames(data, required=(keys.REF_ENERGY, keys.REF_FORCES))
        samples = [make_sample(a, potential.cutoff, potential.species) for a in frames]
        typer.echo(json.dumps(evaluate_samples(potential, samples, batch_size=batch_size, dtype=torch_dtype)))
