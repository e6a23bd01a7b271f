"""``mlmd align CONFIG.yaml``: align a BAMBOO model's liquid densities to experiment.

Each round, for every liquid of the experimental-density table, the current model runs MD of the liquid and
keeps frames; then :func:`potentials.alignment.align_energy_head` moves the energy head so that every liquid's
molecular pressure on its frames shifts by a target. Two ways to set the target:

- ``target: density`` (default): NPT at ``pressure_bar``; a liquid at model density ρ with experimental density
  ρ_exp gets the shift K ln(ρ/ρ_exp) (times ``step_fraction``), which to first order moves its density to ρ_exp.
  K is each liquid's bulk modulus: ``bulk_modulus_bar`` at first, then measured (secant) from how far the
  previous round's shift moved that liquid's density. What is fitted is what is validated: the NPT density.
- ``target: pressure``: NVT at ρ_exp; the shift is ``pressure_bar − ⟨P⟩``. Cheaper per round, but a liquid held far
  from its own density relaxes slowly, and a short run's ⟨P⟩ is biased.

Round 0 starts from a packed, minimised box at ρ_exp (or from ``start_frames``); later rounds start from the
liquid's last frame of the previous round. With ``check`` the aligned model is sampled once more, and its
densities against experiment are the alignment's result. The table is a CSV with columns name, smiles,
temperature_K, density_g_cm3 (the layout of ``shared/data/experimental_densities.csv``; ``#`` lines are comments).

Output folder::

    round_<k>/<liquid>/        box and MD run folders (resumable), frames.extxyz
    round_<k>/aligned.pt       the model after round k's fine-tuning
    round_<k>/summary.json     per liquid before the round's fit: ⟨ρ⟩ or ⟨P⟩ ± sem, drift, target; achieved shifts
    round_<rounds>/            with ``check``: the aligned model's liquids (check.json: densities vs experiment)
    aligned.pt                 the final model (metadata: base model, table, measurements per round)
    alignment.json             every round's summary and the check
"""

from __future__ import annotations

import csv
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlmd.errors import ConfigError, InputError
from mlmd.units import G_PER_CM3_PER_AMU_PER_A3
from potentials.alignment import AlignmentSettings

FRAMES = "frames.extxyz"


class AlignConfig(BaseModel):
    """Settings of a density alignment (YAML; CLI flags override)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "bamboo-electrolyte"
    anchor_model: Optional[str] = Field(None, description="model the anchor energies/forces are held to (default: model)")
    densities: Path = Field(..., description="CSV: name, smiles, temperature_K, density_g_cm3")
    liquids: Optional[list[str]] = Field(None, description="subset of the table's names (default: all)")
    anchors: list[str] = Field(default_factory=list, description="labelled cluster files whose E/F must stay put")
    n_anchors: int = Field(64, ge=0, description="anchor frames drawn from the anchor files")
    output: Path = Path("runs/align")
    n_atoms: int = Field(200, ge=1, description="atoms per liquid box (whole molecules, rounded)")
    pressure_bar: float = 1.0
    target: Literal["density", "pressure"] = "density"
    bulk_modulus_bar: float = Field(20000.0, gt=0, description="first guess of each liquid's bulk modulus (density target)")
    # One energy head serves every liquid, so a large shift for one moves the others' densities too (measured:
    # linear carbonates overshot while cyclic ones caught up); taking a fraction of each step damps that.
    step_fraction: float = Field(1.0, gt=0, le=1, description="fraction of K ln(ρ/ρ_exp) each round's fit targets")
    barostat_time_fs: float = Field(1000.0, gt=0)
    start_frames: Optional[Path] = Field(None, description="folder of <liquid>/frames.extxyz whose last frames start round 0")
    check: bool = Field(True, description="sample the aligned model once more and report its densities (density target)")
    timestep_fs: float = Field(1.0, gt=0, le=5)
    minimise_steps: int = Field(200, ge=0)
    equilibration_steps: int = Field(2000, ge=0, description="MD steps discarded before sampling")
    sample_steps: int = Field(1500, ge=1, description="MD steps sampled after equilibration")
    sample_interval: int = Field(25, ge=1, description="keep a frame every this many steps")
    rounds: int = Field(2, ge=1)
    # A fresh packmol box is still relaxing after a short equilibration (its pressure falls through the sampling
    # window), which biases ⟨P⟩ high; later rounds start from the liquid's last frame of the previous round instead.
    warm_start: bool = True
    # Pressure target: the liquid re-packs under the aligned model and takes back part of each shift, so from the
    # second round on, targets are divided by the previous round's pooled response (clamped to [0.25, 1]).
    correct_for_response: bool = True
    workers: int = Field(2, ge=1, description="liquids sampled in parallel (one thread each)")
    seed: int = Field(0, ge=0)
    fit: AlignmentSettings = Field(default_factory=AlignmentSettings)


def load_align_config(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> AlignConfig:
    from mlmd.config import read_yaml_mapping

    data = read_yaml_mapping(path, "alignment config") if path is not None else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    source = str(path) if path is not None else "alignment config"
    try:
        return AlignConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown key {loc!r} (accepted: {', '.join(AlignConfig.model_fields)})") from None
        if err["type"] == "missing":
            raise ConfigError(f"{source}: {loc} is required") from None
        raise ConfigError(f"{source}: {loc} = {err.get('input')!r}: {err['msg'].lower()}") from None


def read_density_table(path: Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows {name, smiles, temperature_K, density_g_cm3} of the experimental-density CSV (InputError if bad)."""
    if not path.is_file():
        raise InputError(f"density table {path} does not exist (a CSV with name,smiles,temperature_K,density_g_cm3)")
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    need = ("name", "smiles", "temperature_K", "density_g_cm3")
    missing = [c for c in need if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"density table {path}: missing column(s) {', '.join(missing)} (needs {', '.join(need)})")
    rows = []
    for k, row in enumerate(reader, start=1):
        try:
            t, rho = float(row["temperature_K"]), float(row["density_g_cm3"])
        except (TypeError, ValueError):
            raise InputError(f"density table {path}, row {k} ({row.get('name')}): temperature_K and density_g_cm3 "
                             "must be numbers") from None
        if not (t > 0 and math.isfinite(t)) or not (rho > 0 and math.isfinite(rho)):
            raise InputError(f"density table {path}, row {k} ({row['name']}): temperature_K and density_g_cm3 must be "
                             f"positive; got {t:g} K, {rho:g} g/cm³")
        rows.append({"name": row["name"].strip(), "smiles": row["smiles"].strip(), "temperature_K": t,
                     "density_g_cm3": rho})
    if not rows:
        raise InputError(f"density table {path} has no rows")
    if names:
        known = {r["name"] for r in rows}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(f"liquid(s) {', '.join(unknown)} not in {path} (it has: {', '.join(sorted(known))})")
        rows = [r for r in rows if r["name"] in names]
    return rows


def _plan(row: dict[str, Any], cfg: AlignConfig, model_path: str):
    from workflows.screening.composition import plan_formulation
    from workflows.screening.spec import formulation_from_dict

    spec = formulation_from_dict({"name": f"align-{row['name']}", "temperature_K": row["temperature_K"],
                                  "solvents": [{"smiles": row["smiles"], "density_g_cm3": row["density_g_cm3"]}],
                                  "n_atoms": cfg.n_atoms, "model": model_path, "seed": cfg.seed},
                                 source=f"liquid {row['name']!r}")
    return plan_formulation(spec)


def sample_liquid(row: dict[str, Any], cfg: AlignConfig, model_path: str, folder: Path,
                  start: Path | None = None) -> Path:
    """MD frames of one liquid with the model at ``model_path`` -> frames file: NPT at ``cfg.pressure_bar`` (density
    target) or NVT at the experimental density (pressure target). ``start``: a frames file whose last frame is the
    initial state (else a box packed at the experimental density and minimised)."""
    import io

    import torch
    from ase.io import read, write
    from ase.optimize import FIRE

    from mlmd import keys
    from mlmd.calculator import MLMDCalculator
    from mlmd.io import atomic_path
    from mlmd.md.config import make_config
    from mlmd.md.engine import run_md
    from workflows.screening.composition import pack_box

    out = folder / FRAMES
    if out.is_file():
        return out
    torch.set_num_threads(1)
    folder.mkdir(parents=True, exist_ok=True)
    plan = _plan(row, cfg, model_path)
    box_path = folder / "box.extxyz"
    if box_path.is_file():
        atoms = read(box_path)
    elif start is not None:
        atoms = read(start, index=-1)
        with atomic_path(box_path) as tmp:
            write(tmp, atoms, format="extxyz")
    else:
        atoms = pack_box(plan, seed=cfg.seed, density_g_cm3=row["density_g_cm3"])
        calc = MLMDCalculator(model_path)
        atoms.calc = calc
        FIRE(atoms, logfile=io.StringIO(), maxstep=0.1).run(fmax=0.5, steps=cfg.minimise_steps)
        atoms.calc = None
        with atomic_path(box_path) as tmp:
            write(tmp, atoms, format="extxyz")
    mol_id = np.asarray(atoms.arrays["mol_id"])
    if cfg.target == "density":
        ensemble = dict(ensemble="npt", pressure_bar=cfg.pressure_bar, barostat_time_fs=cfg.barostat_time_fs)
    else:
        ensemble = dict(ensemble="nvt", log_pressure=False)
    base = dict(ensemble, timestep_fs=cfg.timestep_fs, temperature_K=row["temperature_K"], thermostat="bussi",
                checkpoint_interval=500)
    calc = MLMDCalculator(model_path)
    equil = run_md(atoms, calc, make_config(dict(base, steps=cfg.equilibration_steps, seed=cfg.seed,
                                                 trajectory_interval=max(cfg.equilibration_steps, 1))),
                   folder / "equilibrate", restart=(folder / "equilibrate" / "checkpoint.npz").is_file())
    prod_dir = folder / "sample"
    run_md(equil.atoms, calc, make_config(dict(base, steps=cfg.sample_steps, seed=cfg.seed + 1,
                                               initial_velocities="keep", trajectory_interval=cfg.sample_interval)),
           prod_dir, restart=(prod_dir / "checkpoint.npz").is_file())
    frames = read(prod_dir / "trajectory.extxyz", index=":")
    keep = []
    for frame in frames:
        clean = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=True)
        clean.arrays["mol_id"] = mol_id
        clean.info[keys.TOTAL_CHARGE] = 0
        keep.append(clean)
    with atomic_path(out) as tmp:
        write(tmp, keep, format="extxyz")
    return out


def _sample_all(rows, cfg: AlignConfig, model_path: str, round_dir: Path, previous: Path | None) -> dict[str, Path]:
    todo = [r for r in rows if not (round_dir / r["name"] / FRAMES).is_file()]
    starts = [None] * len(todo)
    if previous is not None:
        starts = [p if (p := previous / r["name"] / FRAMES).is_file() else None for r in todo]
    folders = [round_dir / r["name"] for r in todo]
    if cfg.workers > 1 and len(todo) > 1:
        import multiprocessing

        with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(sample_liquid, todo, [cfg] * len(todo), [model_path] * len(todo), folders, starts))
    else:
        for args in zip(todo, [cfg] * len(todo), [model_path] * len(todo), folders, starts):
            sample_liquid(*args)
    return {r["name"]: round_dir / r["name"] / FRAMES for r in rows}


def _liquid_frames(row, path: Path, model):
    from ase.io import read

    from mlmd.data import make_sample
    from potentials.alignment import LiquidFrames, molecular_offsets
    from workflows.screening.protocol import make_whole

    frames = read(path, index=":")
    samples, offsets = [], []
    for atoms in frames:
        samples.append(make_sample(atoms, model.cutoff, model.species))
        offsets.append(molecular_offsets(make_whole(atoms), atoms.get_masses(), atoms.arrays["mol_id"]))
    liquid = LiquidFrames(row["name"], samples, offsets, int(frames[0].arrays["mol_id"].max()) + 1,
                          row["temperature_K"])
    densities = np.array([a.get_masses().sum() * G_PER_CM3_PER_AMU_PER_A3 / a.get_volume() for a in frames])
    return liquid, densities


def _anchors(cfg: AlignConfig, model):
    from mlmd import keys
    from mlmd.data import make_sample, read_frames

    if not cfg.anchors or cfg.n_anchors == 0:
        return []
    frames = [a for a in read_frames(cfg.anchors, required=(keys.REF_ENERGY,)) if not a.pbc.any()]
    if not frames:
        raise InputError(f"anchors {cfg.anchors}: no cluster (non-periodic) frames found")
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(len(frames), size=min(cfg.n_anchors, len(frames)), replace=False)
    return [make_sample(frames[k], model.cutoff, model.species) for k in sorted(chosen)]


def _mean_sem(values: np.ndarray) -> tuple[float, float]:
    from workflows.analysis.statistics import standard_error

    if len(values) < 2:
        return float(values.mean()), math.nan
    if len(values) < 8:  # too short for a correlation time
        return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
    return float(values.mean()), float(standard_error(values, method="inefficiency"))


def pooled_response(previous: dict[str, Any], measured: list[dict[str, Any]]) -> float:
    """Σ (⟨P⟩ now − ⟨P⟩ before) / Σ (shift the previous fit achieved on its frames), over the liquids of both
    rounds, clamped to [0.25, 1]: the fraction of a fitted shift that survives re-sampling with the new model."""
    before = {m["name"]: m["pressure_bar"] for m in previous["liquids"]}
    achieved = {f["name"]: f["achieved_shift_bar"] for f in previous["fit"]["liquids"]}
    names = [m["name"] for m in measured if m["name"] in before and m["name"] in achieved]
    applied = sum(achieved[n] for n in names)
    if not names or abs(applied) < 1e-9:
        return 1.0
    change = sum(m["pressure_bar"] - before[m["name"]] for m in measured if m["name"] in names)
    return float(min(max(change / applied, 0.25), 1.0))


def bulk_moduli(previous: dict[str, Any] | None, measured: list[dict[str, Any]], first_guess: float) -> dict[str, float]:
    """Each liquid's bulk modulus K (bar) for the density target: the secant K = A / ln(ρ_before/ρ_now) from the
    shift A the previous fit achieved and the density change it caused, when that change is beyond twice its
    noise and has the expected sign, clamped to [1/4, 4] times ``first_guess``; otherwise the previous K."""
    if previous is None:
        return {m["name"]: first_guess for m in measured}
    before = {m["name"]: m for m in previous["liquids"]}
    achieved = {f["name"]: f["achieved_shift_bar"] for f in previous["fit"]["liquids"]}
    out = {}
    for m in measured:
        name = m["name"]
        k = before.get(name, {}).get("bulk_modulus_bar", first_guess)
        if name in before and name in achieved:
            b = before[name]
            change = math.log(b["density_model_g_cm3"] / m["density_model_g_cm3"])
            noise = math.hypot(b["density_sem_g_cm3"] / b["density_model_g_cm3"],
                               m["density_sem_g_cm3"] / m["density_model_g_cm3"])
            if achieved[name] * change > 0 and abs(change) > 2 * noise:
                k = min(max(achieved[name] / change, first_guess / 4), first_guess * 4)
        out[name] = float(k)
    return out


def _measure(rows, paths: dict[str, Path], model) -> tuple[list, list[dict[str, Any]]]:
    """LiquidFrames and the measurements (density and molecular pressure: mean, sem, drift) of each liquid."""
    from potentials.alignment import molecular_pressures_bar
    from workflows.analysis.statistics import half_drift

    liquids, measured = [], []
    for row in rows:
        liquid, rho = _liquid_frames(row, paths[row["name"]], model)
        p = molecular_pressures_bar(model, liquid)
        (p_mean, p_sem), (rho_mean, rho_sem) = _mean_sem(p), _mean_sem(rho)
        entry = {"name": row["name"], "temperature_K": row["temperature_K"], "density_g_cm3": row["density_g_cm3"],
                 "pressure_bar": p_mean, "pressure_sem_bar": p_sem, "pressure_drift_bar": half_drift(p),
                 "density_model_g_cm3": rho_mean, "density_sem_g_cm3": rho_sem, "density_drift_g_cm3": half_drift(rho),
                 "n_frames": len(p)}
        liquids.append(liquid)
        measured.append(entry)
    return liquids, measured


def _density_check(measured: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [{"name": m["name"], "temperature_K": m["temperature_K"], "experiment_g_cm3": m["density_g_cm3"],
             "predicted_g_cm3": m["density_model_g_cm3"], "sem_g_cm3": m["density_sem_g_cm3"],
             "drift_g_cm3": m["density_drift_g_cm3"], "error_g_cm3": m["density_model_g_cm3"] - m["density_g_cm3"]}
            for m in measured]
    return {"mae_g_cm3": float(np.mean([abs(r["error_g_cm3"]) for r in rows])), "liquids": rows}


def align(cfg: AlignConfig, progress=None) -> dict[str, Any]:
    """Run ``cfg.rounds`` rounds of sampling + head fine-tuning (and the check); resumes from finished rounds,
    liquids and MD stages."""
    from mlmd.checkpoint import load_potential, resolve_model_path, save_checkpoint
    from mlmd.io import atomic_write_text, file_sha256

    rows = read_density_table(Path(cfg.densities), cfg.liquids)
    base_path = str(resolve_model_path(cfg.model))
    base = load_potential(base_path)
    if getattr(base, "energy_head", None) is None:
        raise InputError(f"model {cfg.model!r} has no energy head to align (a BAMBOO model is needed)")
    anchor_model = load_potential(resolve_model_path(cfg.anchor_model)) if cfg.anchor_model else base
    if cfg.start_frames is not None:
        missing = [r["name"] for r in rows if not (cfg.start_frames / r["name"] / FRAMES).is_file()]
        if missing:
            raise InputError(f"start_frames {cfg.start_frames}: no {FRAMES} for {', '.join(missing)} "
                             f"(expected {cfg.start_frames}/<liquid>/{FRAMES})")
    for row in rows:  # chemistry, species and box size checked before any MD
        _plan(row, cfg, base_path)
    cfg.output.mkdir(parents=True, exist_ok=True)
    density_target = cfg.target == "density"

    def previous_dir(k: int) -> Path | None:
        if k == 0:
            return cfg.start_frames
        return cfg.output / f"round_{k - 1}" if cfg.warm_start else None

    summaries = []
    current = base_path
    for k in range(cfg.rounds):
        round_dir = cfg.output / f"round_{k}"
        summary_path, model_path = round_dir / "summary.json", round_dir / "aligned.pt"
        if summary_path.is_file() and model_path.is_file():
            summaries.append(json.loads(summary_path.read_text()))
            current = str(model_path)
            continue
        if progress:
            progress(f"round {k}: sampling {len(rows)} liquids")
        paths = _sample_all(rows, cfg, current, round_dir, previous_dir(k))
        model = load_potential(current)
        liquids, measured = _measure(rows, paths, model)
        previous = summaries[-1] if summaries else None
        if density_target:
            moduli = bulk_moduli(previous, measured, cfg.bulk_modulus_bar)
            response = 1.0
            for liquid, m in zip(liquids, measured):
                m["bulk_modulus_bar"] = moduli[m["name"]]
                liquid.target_shift_bar = cfg.step_fraction * m["bulk_modulus_bar"] * math.log(
                    m["density_model_g_cm3"] / m["density_g_cm3"])
            report = ", ".join(f"{m['name']} {m['density_model_g_cm3']:.3f} ({m['density_g_cm3']:.3f})" for m in measured)
        else:
            response = pooled_response(previous, measured) if cfg.correct_for_response and previous else 1.0
            for liquid, m in zip(liquids, measured):
                liquid.target_shift_bar = (cfg.pressure_bar - m["pressure_bar"]) / response
            report = ", ".join(f"{m['name']} {m['pressure_bar']:+.0f} bar" for m in measured)
        if progress:
            progress(f"round {k}: {report}")
        anchors = _anchors(cfg, model)

        def fit_progress(step: int, total: int, record: dict[str, float]) -> None:
            if progress and (step % 25 == 0 or step == total):
                progress(f"round {k}: fit step {step}/{total}: " +
                         ", ".join(f"{name} {value:.3g}" for name, value in record.items() if name != "step"))

        from potentials.alignment import align_energy_head

        fit = align_energy_head(model, liquids, anchors, cfg.fit.model_copy(update={"seed": cfg.seed + k}),
                                progress=fit_progress, anchor_model=anchor_model)
        summary = {"round": k, "model_in": current, "target": cfg.target, "liquids": measured, "response": response,
                   "fit": {key: fit[key] for key in ("liquids", "anchors")}, "fit_final_loss": fit["history"][-1]}
        save_checkpoint(model, model_path, metadata={"alignment": {"base_model": cfg.model, "round": k}})
        atomic_write_text(summary_path, json.dumps(summary, indent=1))
        summaries.append(summary)
        current = str(model_path)
    check = None
    if cfg.check and density_target:
        check_dir = cfg.output / f"round_{cfg.rounds}"
        check_path = check_dir / "check.json"
        if check_path.is_file():
            check = json.loads(check_path.read_text())
        else:
            if progress:
                progress(f"check: sampling {len(rows)} liquids with the aligned model")
            paths = _sample_all(rows, cfg, current, check_dir, previous_dir(cfg.rounds))
            check = _density_check(_measure(rows, paths, load_potential(current))[1])
            atomic_write_text(check_path, json.dumps(check, indent=1))
        if progress:
            progress(f"check: density MAE {check['mae_g_cm3']:.3f} g/cm³")
    final = cfg.output / "aligned.pt"
    model = load_potential(current)
    meta = {"alignment": {"base_model": cfg.model, "base_sha256": file_sha256(base_path), "target": cfg.target,
                          "anchor_model": cfg.anchor_model or cfg.model,
                          "densities": str(cfg.densities), "pressure_bar": cfg.pressure_bar, "rounds": cfg.rounds,
                          "density_per_round_g_cm3": [{m["name"]: round(m["density_model_g_cm3"], 4)
                                                      for m in s["liquids"]} for s in summaries],
                          "pressure_per_round_bar": [{m["name"]: round(m["pressure_bar"], 1) for m in s["liquids"]}
                                                     for s in summaries]}}
    if check is not None:
        meta["alignment"]["check_density_mae_g_cm3"] = round(check["mae_g_cm3"], 4)
    save_checkpoint(model, final, metadata=dict(getattr(model, "metadata", {}), **meta))
    result = {"model": str(final), "base_model": cfg.model, "rounds": summaries, "check": check}
    atomic_write_text(cfg.output / "alignment.json", json.dumps(result, indent=1))
    return result
