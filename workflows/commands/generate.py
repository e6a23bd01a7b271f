"""``mlmd generate crystals``: sample crystals from a generator, write CIFs and an ASE database."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlmd.errors import InputError


def read_compositions_file(path: Path) -> list[str]:
    """One formula per line; blank lines and ``#`` comments ignored."""
    if not path.is_file():
        raise InputError(f"compositions file {str(path)!r} not found; give a text file with one formula per line")
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    comps = [ln for ln in lines if ln]
    if not comps:
        raise InputError(f"compositions file {str(path)!r} holds no formulas")
    return comps


def write_crystals(structures, out: Path, info: dict) -> dict:
    """Write ``out/00000.cif``... (atomic) and ``out/crystals.db`` (ASE db, one row per crystal, same order)."""
    from ase.db import connect
    from pymatgen.io.ase import AseAtomsAdaptor

    from mlmd.io import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(len(structures))))
    names = []
    for i, s in enumerate(structures):
        name = f"{i:0{width}d}.cif"
        with atomic_path(out / name) as tmp:
            s.to(filename=str(tmp), fmt="cif")
        names.append(name)
    with atomic_path(out / "crystals.db") as tmp:
        tmp.unlink()
        with connect(str(tmp), type="db") as db:
            for i, (s, name) in enumerate(zip(structures, names)):
                db.write(AseAtomsAdaptor.get_atoms(s), index=i, cif=name, reduced_formula=s.composition.reduced_formula, **info)
    return {"n": len(structures), "out": str(out), "db": str(out / "crystals.db")}


def register(app: typer.Typer) -> None:
    gen_app = typer.Typer(help="Generate candidate structures.", no_args_is_help=True)
    app.add_typer(gen_app, name="generate")

    @gen_app.command("crystals")
    def crystals(
        model: str = typer.Option(..., "--model", help="bundled name (perov5-csp, perov5-gen) or checkpoint path"),
        out: Path = typer.Option(..., "--out", help="output folder for CIFs and crystals.db"),
        n: Optional[int] = typer.Option(None, "--n", help="number of crystals (generation models)"),
        compositions_file: Optional[Path] = typer.Option(None, "--compositions-file", help="one formula per line (structure prediction)"),
        steps: Optional[int] = typer.Option(None, "--steps", help="sampling steps (default: 10 for CrysBFN, trained timesteps for diffusion)"),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Generate crystals (``--n``) or predict structures (``--compositions-file``); CIFs keep the input order."""
        import json

        from generative.checkpoint import load_generator
        from generative.sample import sample_crystals

        if steps is not None and steps <= 0:
            raise InputError(f"--steps {steps} must be a positive integer")
        gen = load_generator(model)
        comps = read_compositions_file(compositions_file) if compositions_file is not None else None
        if gen.task == "csp" and comps is None:
            raise InputError(f"model {model!r} does structure prediction; give --compositions-file (one formula per line)")
        if gen.task == "gen" and comps is not None:
            raise InputError(f"model {model!r} generates from scratch; use --n, or a csp model for --compositions-file")
        if steps is None:
            steps = 10 if gen.method == "crysbfn" else gen.config.timesteps
        structures = sample_crystals(gen, n=n, compositions=comps, steps=steps, seed=seed)
        summary = write_crystals(structures, out, {"model": str(model), "method": gen.method, "task": gen.task, "steps": steps, "seed": seed})
        typer.echo(json.dumps(summary))
