"""``mlmd train-generator``, ``mlmd evaluate-crystals`` and ``mlmd screen-crystals``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mlmd.errors import InputError


def _write_json(path: Optional[Path], obj: dict) -> None:
    text = json.dumps(obj, indent=2)
    if path is None:
        typer.echo(text)
        return
    from mlmd.io import atomic_write_text

    atomic_write_text(path, text + "\n")
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    @app.command("train-generator")
    def train_generator(config: Path = typer.Argument(..., help="YAML with model/data/train sections and out")) -> None:
        """Train a crystal generator (CrysBFN or the diffusion baseline); resumable from <out>/last.pt."""
        from generative.config import load_config
        from generative.train import train_generator as _train

        cfg = load_config(config)
        _train(cfg, log=lambda s: typer.echo(s))

    @app.command("evaluate-crystals")
    def evaluate_crystals(
        model: Optional[str] = typer.Option(None, "--model", help="generator to sample from (name or path)"),
        generated: Optional[Path] = typer.Option(None, "--generated", help="folder of CIFs to evaluate instead of sampling"),
        task: Optional[str] = typer.Option(None, "--task", help="csp or gen (default: the model's task; gen for --generated)"),
        data: Optional[str] = typer.Option(None, "--data", help="data set or CSV (default: the one recorded in the model)"),
        split: str = typer.Option("test", "--split"),
        split_seed: int = typer.Option(42, "--split-seed", help="split seed when no model records one"),
        steps: Optional[int] = typer.Option(None, "--steps", help="sampling steps (default 10 for CrysBFN; trained T for diffusion)"),
        k: int = typer.Option(1, "--k", help="candidates per composition (best-of-k match rate)"),
        n: int = typer.Option(1000, "--n", help="crystals to generate (gen task)"),
        limit: Optional[int] = typer.Option(None, "--limit", help="use only the first LIMIT reference crystals"),
        n_cov: Optional[int] = typer.Option(None, "--n-cov", help="crystals used for coverage (default all)"),
        struct_cutoff: Optional[float] = typer.Option(None, "--struct-cutoff", help="COV structure cutoff (default: the data set's)"),
        comp_cutoff: Optional[float] = typer.Option(None, "--comp-cutoff", help="COV composition cutoff (default: the data set's)"),
        seed: int = typer.Option(0, "--seed"),
        out: Optional[Path] = typer.Option(None, "--out", help="JSON file (default: stdout)"),
    ) -> None:
        """Community metrics: match rate/RMS (csp); validity, COV-R/P, Wasserstein distances (gen); calls and time."""
        from generative.checkpoint import load_generator
        from generative.data import load_split
        from generative.evaluate import dataset_name, evaluate_csp, evaluate_gen, model_test_split, read_cif_dir
        from generative.metrics import csp_metrics, generation_metrics

        if steps is not None and steps <= 0:
            raise InputError(f"--steps {steps} must be a positive integer")
        if k <= 0 or n <= 0:
            raise InputError(f"--k {k} and --n {n} must be positive integers")
        if task not in (None, "csp", "gen"):
            raise InputError(f"--task {task!r} unknown; use csp or gen")
        if model is None and generated is None:
            raise InputError("give --model (sample and evaluate) or --generated (a folder of CIFs)")
        if model is not None:
            gen = load_generator(model, task=task)
            refs, info = model_test_split(gen, data, split)
            if steps is None:
                steps = 10 if gen.method == "crysbfn" else gen.config.timesteps
        else:
            if data is None:
                raise InputError("--generated needs --data (the reference data set or CSV)")
            splits, ds = load_split(data, split_seed)
            refs, info = splits[split], {"data_source": ds.source, "data_hash": ds.data_hash, "split": split, "n_skipped": ds.n_skipped}
        refs = refs[:limit] if limit else refs
        name = dataset_name(info["data_source"])
        cutoffs = None
        if struct_cutoff is not None or comp_cutoff is not None:
            from generative.metrics import COV_CUTOFFS

            base = COV_CUTOFFS.get(name, (None, None))
            cutoffs = (struct_cutoff if struct_cutoff is not None else base[0], comp_cutoff if comp_cutoff is not None else base[1])
            if None in cutoffs:
                raise InputError(f"data set {name!r} has no default coverage cutoffs; give both --struct-cutoff and --comp-cutoff")
        if model is not None:
            if gen.task == "csp":
                result = evaluate_csp(gen, refs, steps=steps, k=k, seed=seed)
            else:
                result = evaluate_gen(gen, refs, n=n, steps=steps, seed=seed, dataset=name, n_cov=n_cov, cutoffs=cutoffs)
            result["model"] = model
        else:
            structs, bad = read_cif_dir(generated)
            ref_structs = [r.to_structure() for r in refs]
            if (task or "gen") == "csp":
                if len(structs) != len(ref_structs):
                    raise InputError(f"{len(structs)} CIFs in {str(generated)!r} but {len(ref_structs)} reference crystals; csp needs one per reference, in order")
                result = {"task": "csp", **csp_metrics(structs, ref_structs)}
            else:
                result = {"task": "gen", **generation_metrics(structs, ref_structs, dataset=name, n_cov=n_cov, cutoffs=cutoffs)}
            result.update(generated=str(generated), n_unreadable=len(bad), unreadable=bad[:20])
        result.update(info)
        _write_json(out, result)

    @app.command("screen-crystals")
    def screen_crystals(
        cifs: Path = typer.Argument(..., help="folder of CIFs (e.g. from `mlmd generate crystals`)"),
        db: Path = typer.Option(..., "--db", help="ASE database for results (resumable)"),
        calculator: str = typer.Option("gfn1-xtb", "--calculator",
                                       help="gfn1-xtb, gfn2-xtb (on supercells >= 10 Å wide), emt, or an mlmd model name or checkpoint"),
        fmax: float = typer.Option(0.05, "--fmax"),
        relax_steps: int = typer.Option(300, "--relax-steps"),
        md_steps: int = typer.Option(200, "--md-steps"),
        temperature: float = typer.Option(300.0, "--temperature"),
        max_volume_factor: float = typer.Option(2.0, "--max-volume-factor",
                                                help="a relaxation changing the volume more than this factor fails"),
        out: Optional[Path] = typer.Option(None, "--out", help="ranking JSON (default: stdout)"),
    ) -> None:
        """Relax (cell + positions), run a short Langevin NVT, rank survivors by energy per atom."""
        from generative.evaluate import read_cif_dir

        from workflows.crystals import MDSettings, RelaxSettings, make_calculator
        from workflows.crystals import screen_crystals as _screen

        if fmax <= 0 or relax_steps <= 0 or md_steps <= 0 or temperature <= 0:
            raise InputError("--fmax, --relax-steps, --md-steps and --temperature must be positive")
        if max_volume_factor <= 1:
            raise InputError(f"--max-volume-factor must be above 1 (got {max_volume_factor})")
        structs, bad = read_cif_dir(cifs)
        names = sorted(p.name for p in Path(cifs).glob("*.cif"))
        ranking = _screen(structs, db, make_calculator(calculator), RelaxSettings(fmax=fmax, max_steps=relax_steps, max_volume_factor=max_volume_factor),
                          MDSettings(steps=md_steps, temperature_K=temperature), names=names)
        _write_json(out, {"n": len(structs), "n_unreadable": len(bad), "n_survived": sum(bool(r.get("survived")) for r in ranking),
                          "ranking": ranking})
