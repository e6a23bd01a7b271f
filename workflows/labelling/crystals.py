"""``mlmd label-crystals``: periodic reference data for a crystal potential (e.g. carbon_24 with GFN1-xTB).

Each crystal of a CDVAE-style CSV gives frames labelled with energy, forces and stress: the crystal as given,
``n_strained`` copies under a random symmetric strain, ``n_rattled`` copies with Gaussian displacements, and
``md_keep`` snapshots of a short hot Langevin run. A Gamma-point reference (xTB) needs the cell repeated to at least
``min_width`` Å anyway, so with ``supercell: true`` (default) the frames *are* that supercell: every image is strained
alike but rattled independently, which gives as many independent force labels as atoms in the supercell for the
cost of one calculation (a repeated small cell gives only its own atoms' worth). Crystals whose supercell would
exceed ``max_supercell_atoms`` are skipped and counted. Every frame carries the crystal's ``split`` from the same seeded
split the crystal generators use (:func:`generative.data.split_indices`), so a potential trained on the train
crystals is tested on crystals it never saw, and the generators' test crystals stay unseen by both.

Output folder::

    OUT/shard_000.extxyz.gz   crystals [0, shard_size) of the (shuffled) selection, written atomically when complete
    OUT/MANIFEST.json         settings, frame counts, skipped crystals and why (rewritten after every shard)

A rerun skips finished shards (resume); a failed label (SCF not converged, forces above ``max_force``) drops that
frame and is counted, never fatal.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import time
from collections import Counter
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlmd import keys
from mlmd.errors import ConfigError
from mlmd.io import atomic_path, atomic_write_text


class CrystalLabelConfig(BaseModel):
    """Settings of ``mlmd label-crystals`` (YAML; CLI flags override)."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="CSV with a 'cif' column, a data-set name (carbon_24, perov_5) or a folder of CIFs")
    out: str
    n_structures: int | None = Field(None, gt=0, description="about this many crystals in all, from each split in proportion")
    split_seed: int = 42  # the generators' default: the same crystals are train/val/test for both
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    calculator: str = "gfn1-xtb"  # gfn1-xtb | gfn2-xtb | emt | module:factory
    min_width: float = Field(10.0, gt=0)  # Å; xTB (Gamma point only) sees the cell repeated at least this wide
    max_atoms: int = Field(24, gt=0)
    supercell: bool = True  # label the >= min_width supercell itself (independent rattles per image)
    max_supercell_atoms: int = Field(400, gt=0)
    n_strained: int = Field(2, ge=0)
    strain_max: float = Field(0.04, ge=0, lt=0.5)
    n_rattled: int = Field(2, ge=0)
    rattle_std: tuple[float, float] = (0.03, 0.12)
    md_steps: int = Field(20, ge=0)
    md_keep: int = Field(2, ge=0)
    md_temperature_K: tuple[float, float] = (500.0, 2000.0)
    md_timestep_fs: float = Field(1.0, gt=0)
    max_force: float = Field(50.0, gt=0)  # eV/Å; frames above are dropped as unphysical
    shard_size: int = Field(25, gt=0)
    workers: int = Field(1, gt=0)


def load_crystal_label_config(path: str | Path | None, **overrides: Any) -> CrystalLabelConfig:
    """YAML file (or None) with non-None ``overrides`` applied; errors become one-line ConfigErrors."""
    from mlmd.config import one_line, read_yaml_mapping

    raw = read_yaml_mapping(path, "CrystalLabelConfig fields")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CrystalLabelConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid label-crystals config: {one_line(exc)}") from None


def make_reference(name: str, min_width: float = 10.0):
    """An ASE calculator by name (:func:`workflows.crystals.make_calculator`) or ``module:factory``."""
    if ":" in name:
        from mlmd.registry import load_callable

        return load_callable(name, "calculator")()
    from workflows.crystals import make_calculator

    return make_calculator(name, min_width)


def _read_crystals(data: str):
    """A CDVAE-style CSV / data-set name, or a folder of CIFs (e.g. ``mlmd generate crystals`` output, read in
    sorted order, unreadable files skipped and counted). Returns an object with ``records`` and ``n_skipped``."""
    from generative.data import CrystalRecord, read_crystal_csv

    if not Path(data).is_dir():
        return read_crystal_csv(data)
    from types import SimpleNamespace

    from generative.evaluate import read_cif_dir

    structures, bad = read_cif_dir(data)
    names = sorted(p.stem for p in Path(data).glob("*.cif"))
    records = [CrystalRecord.from_structure(s, name) for s, name in zip(structures, names) if s is not None]
    return SimpleNamespace(records=records, n_skipped=len(bad))


def _supercell_repeats(record, cfg: CrystalLabelConfig) -> tuple[int, int, int]:
    from workflows.crystals import perpendicular_widths

    if not cfg.supercell:
        return (1, 1, 1)
    widths = perpendicular_widths(record.lattice)
    return tuple(int(np.ceil(cfg.min_width / w - 1e-9)) for w in widths)


def select(cfg: CrystalLabelConfig) -> tuple[list[tuple[str, Any]], dict[str, int]]:
    """(split, CrystalRecord) pairs to label, in a fixed seeded order that mixes the splits (so a partial run has
    crystals of each), and counts of what was left out (unreadable CSV rows, too many atoms)."""
    from generative.data import split_indices

    ds = _read_crystals(cfg.data)
    if not ds.records:
        raise ConfigError(f"no readable crystal in {cfg.data!r} ({ds.n_skipped} malformed rows)")
    idx = split_indices(len(ds.records), cfg.split_seed, cfg.split)
    left_out = {"malformed_rows": ds.n_skipped, "too_many_atoms": 0}
    chosen = []
    for split in ("train", "val", "test"):
        keep = []
        for i in idx[split]:
            rec = ds.records[i]
            if rec.n_atoms > cfg.max_atoms or rec.n_atoms * int(np.prod(_supercell_repeats(rec, cfg))) > cfg.max_supercell_atoms:
                left_out["too_many_atoms"] += 1
                continue
            keep.append(i)
        if cfg.n_structures is not None:
            keep = keep[: max(1, round(cfg.n_structures * len(idx[split]) / len(ds.records)))]
        chosen += [(split, ds.records[i]) for i in keep]
    if not chosen:
        raise ConfigError(f"no crystal in {cfg.data!r} fits max_atoms={cfg.max_atoms} and max_supercell_atoms="
                          f"{cfg.max_supercell_atoms} (supercells >= {cfg.min_width} Å wide); raise the limits")
    order = np.random.default_rng(cfg.seed).permutation(len(chosen))
    return [chosen[k] for k in order], left_out


def _reference_min_width(cfg: CrystalLabelConfig) -> float:
    """Width the reference's own supercell wrapper enforces: for frames that already are supercells, low enough that
    a compressive strain does not double them again."""
    return cfg.min_width * (1 - 2 * cfg.strain_max) if cfg.supercell else cfg.min_width


def _labels(atoms, calc, max_force: float) -> dict[str, np.ndarray] | None:
    atoms = atoms.copy()
    atoms.calc = calc
    try:
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), float)
        stress = np.asarray(atoms.get_stress(voigt=True), float)
    except Exception:  # noqa: BLE001 - SCF failure of the reference: the frame is dropped and counted
        return None
    if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
        return None
    if np.abs(forces).max(initial=0.0) > max_force:
        return None
    return {"energy": energy, "forces": forces, "stress": stress}


def _random_strain(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    e = rng.uniform(-amplitude, amplitude, size=(3, 3))
    return np.eye(3) + 0.5 * (e + e.T)


def sample_crystal(record, split: str, cfg: CrystalLabelConfig, calc, rng: np.random.Generator) -> tuple[list, Counter]:
    """Frames (ase.Atoms with REF_* labels) of one crystal and counts of dropped labels by reason."""
    from ase import Atoms, units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    base = Atoms(numbers=record.numbers, scaled_positions=record.frac, cell=record.lattice, pbc=True)
    base = base.repeat(_supercell_repeats(record, cfg))
    candidates = [("given", base)]
    for _ in range(cfg.n_strained):
        a = base.copy()
        a.set_cell(base.cell.array @ _random_strain(rng, cfg.strain_max), scale_atoms=True)
        candidates.append(("strained", a))
    for _ in range(cfg.n_rattled):
        a = base.copy()
        a.positions += rng.normal(scale=rng.uniform(*cfg.rattle_std), size=a.positions.shape)
        candidates.append(("rattled", a))
    dropped: Counter = Counter()
    if cfg.md_steps and cfg.md_keep:
        a = base.copy()
        a.calc = calc
        temperature = float(rng.uniform(*cfg.md_temperature_K))
        MaxwellBoltzmannDistribution(a, temperature_K=temperature, rng=rng)
        dyn = Langevin(a, cfg.md_timestep_fs * units.fs, temperature_K=temperature, friction=0.02 / units.fs, rng=rng,
                       fixcm=False)
        every = max(1, cfg.md_steps // cfg.md_keep)
        try:
            for k in range(cfg.md_keep):
                dyn.run(every)
                snap = Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=True)
                candidates.append(("md", snap))
        except Exception:  # noqa: BLE001 - the reference failed mid-run: keep what was sampled
            dropped["md_failed"] += 1
    frames = []
    for k, (sampling, a) in enumerate(candidates):
        labels = _labels(a, calc, cfg.max_force)
        if labels is None:
            dropped[f"{sampling}_label_failed"] += 1
            continue
        fr = Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=True)
        fr.info[keys.REF_ENERGY] = labels["energy"]
        fr.info[keys.REF_STRESS] = labels["stress"]
        fr.arrays[keys.REF_FORCES] = labels["forces"]
        fr.info[keys.CONFIG_TYPE] = sampling
        fr.info["material_id"] = record.material_id
        fr.info["frame"] = k
        fr.info["cell_atoms"] = record.n_atoms
        fr.info["split"] = split
        frames.append(fr)
    return frames, dropped


def _shard_path(out: Path, k: int) -> Path:
    return out / f"shard_{k:03d}.extxyz.gz"


def _label_shard(args: tuple[str, int, list]) -> dict:
    """Worker: label one shard's crystals and write it atomically. Returns its counts."""
    cfg_json, k, items = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = CrystalLabelConfig.model_validate_json(cfg_json)
    calc = make_reference(cfg.calculator, _reference_min_width(cfg))
    frames, dropped = [], Counter()
    t0 = time.perf_counter()
    for position, split, record in items:
        rng = np.random.default_rng([cfg.seed, position])
        got, lost = sample_crystal(record, split, cfg, calc, rng)
        frames += got
        dropped.update(lost)
    from ase.io import write

    buf = io.StringIO()
    write(buf, frames, format="extxyz")
    path = _shard_path(Path(cfg.out), k)
    with atomic_path(path) as tmp:
        with gzip.open(tmp, "wt") as fh:
            fh.write(buf.getvalue())
    return {"shard": k, "frames": len(frames), "by_split": dict(Counter(f.info["split"] for f in frames)),
            "dropped": dict(dropped), "seconds": round(time.perf_counter() - t0, 2)}


def _count_shard(out: Path, k: int) -> dict:
    """Counts of a shard on disk that the manifest does not list (a run stopped before recording it)."""
    from ase.io import read

    frames = read(_shard_path(out, k), ":")
    return {"shard": k, "frames": len(frames), "by_split": dict(Counter(str(f.info.get("split")) for f in frames)),
            "dropped": {}, "seconds": None}


def run_label_crystals(cfg: CrystalLabelConfig, progress: bool = True) -> dict:
    """Label the selection shard by shard (skipping finished shards); writes and returns the manifest."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    make_reference(cfg.calculator, _reference_min_width(cfg))  # fail on a bad calculator name before any work
    chosen, left_out = select(cfg)
    items = [(i, split, rec) for i, (split, rec) in enumerate(chosen)]
    shards = [items[s:s + cfg.shard_size] for s in range(0, len(items), cfg.shard_size)]
    todo = [(cfg.model_dump_json(), k, sh) for k, sh in enumerate(shards) if not _shard_path(out, k).is_file()]
    manifest_path = out / "MANIFEST.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if old:  # shards are only valid for the settings that made them (workers aside)
        changed = sorted(k for k, v in cfg.model_dump(mode="json").items()
                         if k != "workers" and old.get("config", {}).get(k) != v)
        if changed:
            raise ConfigError(f"{str(out)!r} was labelled with other settings ({', '.join(changed)} differ); "
                              "use the same settings to resume or a new --out")
    previous = old.get("shards", {})
    results = {k: previous.get(str(k)) or _count_shard(out, k) for k in range(len(shards)) if _shard_path(out, k).is_file()}

    def write_manifest() -> dict:  # after every shard, so an interrupted run keeps its settings on record
        dropped: Counter = Counter()
        for r in results.values():
            dropped.update(r.get("dropped", {}))
        manifest = {"config": cfg.model_dump(mode="json"), "complete": len(results) == len(shards),
                    "n_crystals": len(items), "n_shards": len(shards), "n_shards_done": len(results),
                    "n_malformed_rows": left_out["malformed_rows"], "n_left_out_too_many_atoms": left_out["too_many_atoms"],
                    "n_frames": sum(r["frames"] for r in results.values()),
                    "frames_by_split": dict(sum((Counter(r["by_split"]) for r in results.values()), Counter())),
                    "dropped": dict(dropped), "shards": {str(k): results[k] for k in sorted(results)}}
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
        return manifest

    write_manifest()
    from rich.progress import Progress

    with Progress(disable=not progress) as bar:
        task = bar.add_task("labelling crystals", total=len(shards), completed=len(shards) - len(todo))
        if cfg.workers > 1 and len(todo) > 1:
            with get_context("spawn").Pool(cfg.workers) as pool:
                for res in pool.imap_unordered(_label_shard, todo):
                    results[res["shard"]] = res
                    write_manifest()
                    bar.advance(task)
        else:
            for job in todo:
                res = _label_shard(job)
                results[res["shard"]] = res
                write_manifest()
                bar.advance(task)
    manifest = write_manifest()
    return manifest
