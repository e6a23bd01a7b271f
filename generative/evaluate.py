"""Evaluate a generator on its own test split (the split recorded in the checkpoint) and write JSON."""

from __future__ import annotations

import glob
import os
import time
import warnings
from pathlib import Path

from mlmd.errors import CheckpointError, InputError

from .data import CrystalRecord, load_split
from .metrics import COV_CUTOFFS, csp_metrics, generation_metrics
from .models import CrystalGenerator
from .sample import sample_crystals


def model_test_split(model: CrystalGenerator, data: str | None = None, split: str = "test") -> tuple[list[CrystalRecord], dict]:
    """Re-create the split recorded in ``model.metadata``; ``data`` overrides the recorded source."""
    meta = getattr(model, "metadata", {}) or {}
    source = data or meta.get("data_source")
    if not source or source == "in-memory":
        raise InputError("the model records no data file; pass the data set (e.g. --data perov_5)")
    if not os.path.isfile(source):
        # checkpoints built elsewhere: fall back to the data-set name in the recorded path
        name = Path(source).parent.name
        source = name if name else source
    splits, ds = load_split(source, int(meta.get("split_seed", 42)), tuple(meta.get("split_fractions", (0.8, 0.1, 0.1))))
    if split not in splits:
        raise InputError(f"split {split!r} unknown; use train, val or test")
    info = {"data_source": ds.source, "data_hash": ds.data_hash, "split": split, "n_skipped": ds.n_skipped,
            "data_hash_matches_checkpoint": (ds.data_hash == meta.get("data_hash")) if meta.get("data_hash") else None}
    return splits[split], info


def dataset_name(source: str) -> str:
    p = Path(source)
    for name in COV_CUTOFFS:
        if name in p.parts or p.name == name:
            return name
    return p.parent.name


def evaluate_csp(model: CrystalGenerator, refs: list[CrystalRecord], steps: int | None = 10, k: int = 1, seed: int = 0) -> dict:
    if model.task != "csp":
        raise CheckpointError(f"model is a {model.task!r} model; structure-prediction metrics need a 'csp' model")
    from pymatgen.core import Composition, Element

    comps = []
    for r in refs:
        c: dict[str, int] = {}
        for z in r.numbers:
            sym = Element.from_Z(int(z)).symbol
            c[sym] = c.get(sym, 0) + 1
        comps.append(Composition(c))
    ref_structs = [r.to_structure() for r in refs]
    model.net.n_calls = 0
    t0 = time.perf_counter()
    cands = [sample_crystals(model, compositions=comps, steps=steps, seed=seed + j) for j in range(k)]
    wall = time.perf_counter() - t0
    calls = model.net.n_calls
    per_ref = [[cands[j][i] for j in range(k)] for i in range(len(refs))]
    out = {"task": "csp", "method": model.method, "steps": steps, "k": k, "network_calls_per_sample": calls // max(k, 1) // max(_n_batches(len(refs)), 1),
           "sampling_wall_s": round(wall, 3)}
    out.update(csp_metrics(per_ref, ref_structs))
    if k > 1:
        out["match_rate_at_1"] = csp_metrics([p[:1] for p in per_ref], ref_structs)["match_rate"]
    return out


def _n_batches(n: int, batch_size: int = 1000) -> int:
    return (n + batch_size - 1) // batch_size


def evaluate_gen(model: CrystalGenerator, refs: list[CrystalRecord], n: int = 1000, steps: int | None = 10, seed: int = 0,
                 dataset: str = "perov_5", n_cov: int | None = None, cutoffs: tuple[float, float] | None = None) -> dict:
    if model.task != "gen":
        raise CheckpointError(f"model is a {model.task!r} model; generation metrics need a 'gen' model")
    model.net.n_calls = 0
    t0 = time.perf_counter()
    gen = sample_crystals(model, n=n, steps=steps, seed=seed)
    wall = time.perf_counter() - t0
    out = {"task": "gen", "method": model.method, "steps": steps, "n_generated": n,
           "network_calls_per_sample": model.net.n_calls // max(_n_batches(n), 1), "sampling_wall_s": round(wall, 3)}
    out.update(generation_metrics(gen, [r.to_structure() for r in refs], dataset=dataset, n_cov=n_cov, cutoffs=cutoffs))
    return out


def read_cif_dir(path: str | os.PathLike) -> tuple[list, list[str]]:
    """Read ``*.cif`` in sorted order. Malformed files are skipped and returned by name, not fatal."""
    from pymatgen.core import Structure

    files = sorted(glob.glob(os.path.join(str(path), "*.cif")))
    if not files:
        raise InputError(f"no .cif files in {str(path)!r}")
    structs, bad = [], []
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = Structure.from_file(f)
            if len(s) == 0:
                raise ValueError
            structs.append(s)
        except Exception:  # noqa: BLE001
            bad.append(os.path.basename(f))
            structs.append(None)
    return structs, bad
