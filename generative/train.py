"""Training of crystal generators (``mlmd train-generator CONFIG.yaml``).

Resumable: ``<out>/last.pt`` holds model, EMA, optimiser, step and elapsed time; rerunning the same config continues.
The final EMA weights go to ``<out>/model.pt`` (+ ``model.json``) with the split and data hash in the metadata.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from mlmd.errors import ConfigError
from mlmd.io import atomic_path

from .checkpoint import load_generator, save_generator
from .config import GeneratorConfig
from .data import CrystalRecord, collate, load_split
from .models import CrystalGenerator, build_model


def dataset_statistics(train: list[CrystalRecord], all_records: list[CrystalRecord]) -> tuple[list[int], float, list[float]]:
    """Vocabulary (all elements in the file), lattice scale (mean train lattice length), atom-count distribution."""
    species = sorted({int(z) for r in all_records for z in r.numbers})
    lengths = [float(np.linalg.norm(v)) for r in train for v in r.lattice]
    scale = float(np.mean(lengths))
    counts = Counter(r.n_atoms for r in train)
    max_atoms = max(r.n_atoms for r in all_records)
    total = sum(counts.values())
    probs = [counts.get(k, 0) / total for k in range(max_atoms + 1)]
    return species, scale, probs


@torch.no_grad()
def evaluate_loss(model: CrystalGenerator, records: list[CrystalRecord], batch_size: int = 256, seed: int = 1234) -> float:
    g = torch.Generator().manual_seed(seed)
    model.eval()
    tot, cnt = 0.0, 0
    for k in range(0, len(records), batch_size):
        chunk = records[k:k + batch_size]
        loss, _ = model.loss(collate(chunk, model.vocab_index), g)
        tot += float(loss) * len(chunk)
        cnt += len(chunk)
    model.train()
    return tot / max(cnt, 1)


def _init_weights(model: CrystalGenerator, ema: CrystalGenerator, cfg: GeneratorConfig) -> dict:
    """Copy the weights of ``cfg.train.init_from`` into ``model`` and ``ema``; return the parent's training record."""
    parent = load_generator(cfg.train.init_from, task=cfg.model.task, method=cfg.model.method)
    if parent.config != cfg.model or parent.species != model.species:
        raise ConfigError(f"train.init_from={cfg.train.init_from!r} has other model settings or species than this config; "
                          "use a checkpoint trained with the same model section and data")
    model.load_state_dict(parent.state_dict())
    ema.load_state_dict(parent.state_dict())
    return dict(parent.metadata.get("train") or {})


def train_generator(cfg: GeneratorConfig, log=print, records=None) -> dict:
    """Train per ``cfg``; return a summary dict. ``records`` (dict of splits) overrides reading ``cfg.data.path``."""
    torch.set_num_threads(cfg.train.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if records is None:
        splits, ds = load_split(cfg.data.path, cfg.data.split_seed, cfg.data.split_fractions)
        data_meta = {"data_source": ds.source, "data_hash": ds.data_hash, "n_skipped": ds.n_skipped}
        all_records = ds.records
    else:
        splits = records
        all_records = [r for v in splits.values() for r in v]
        data_meta = {"data_source": "in-memory", "data_hash": "", "n_skipped": 0}
    train, val = splits["train"], splits["val"] or splits["train"][:64]
    species, scale, probs = dataset_statistics(train, all_records)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, species, scale, probs)
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    rng = np.random.default_rng(cfg.train.seed)
    step, elapsed, history = 0, 0.0, []
    parent_train = None
    last = out / "last.pt"
    if cfg.train.init_from and not last.is_file():
        parent_train = _init_weights(model, ema, cfg)
    if last.is_file():
        st = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        step, elapsed = int(st["step"]), float(st["elapsed"])
        gen.set_state(st["gen"])
        rng = np.random.default_rng([cfg.train.seed, step])
        history = json.loads(st["history"])
        parent_train = json.loads(st.get("parent_train", "null"))
        log(f"resumed from {last} at step {step} ({elapsed / 60:.1f} min)")
    meta = {
        "split_seed": cfg.data.split_seed,
        "split_fractions": list(cfg.data.split_fractions),
        "split_sizes": {k: len(v) for k, v in splits.items()},
        **data_meta,
    }
    budget = cfg.train.max_minutes * 60
    ema_decay = 0.999
    model.train()
    t0 = time.process_time() - elapsed
    order = rng.permutation(len(train))
    pos = 0
    loss_options = {"collision_rate": cfg.train.collision_rate} if cfg.train.collision_rate else {}

    def save_state():
        with atomic_path(last) as tmp:
            torch.save(
                {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                 "elapsed": time.process_time() - t0, "gen": gen.get_state(), "history": json.dumps(history),
                 "parent_train": json.dumps(parent_train)},
                tmp,
            )

    while step < cfg.train.max_steps and (time.process_time() - t0) < budget:
        progress = max(step / cfg.train.max_steps, (time.process_time() - t0) / budget)
        for group in opt.param_groups:
            group["lr"] = cfg.train.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        if pos + cfg.train.batch_size > len(order):
            order, pos = rng.permutation(len(train)), 0
        idx = order[pos:pos + cfg.train.batch_size]
        pos += len(idx)
        batch = collate([train[i] for i in idx], model.vocab_index)
        loss, parts = model.loss(batch, gen, **loss_options)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        step += 1
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        if step % cfg.train.eval_every == 0 or step == 1:
            vl = evaluate_loss(ema, val[:512])
            rec = {"step": step, "cpu_minutes": round((time.process_time() - t0) / 60, 2), "train_loss": float(loss.detach()), **parts, "val_loss_ema": vl}
            history.append(rec)
            log(json.dumps(rec))
            save_state()
    elapsed = time.process_time() - t0
    save_state()
    final_val = evaluate_loss(ema, val[:512])
    meta["train"] = {"steps": step, "cpu_minutes": round(elapsed / 60, 2), "threads": cfg.train.threads, "batch_size": cfg.train.batch_size,
                     "lr": cfg.train.lr, "final_val_loss": final_val}
    if cfg.train.collision_rate:
        meta["train"]["collision_rate"] = cfg.train.collision_rate
    if cfg.train.init_from:
        meta["train"]["init_from"] = cfg.train.init_from
        if parent_train:
            meta["train"]["parent_train"] = parent_train
            parent_total = parent_train.get("total_cpu_minutes", parent_train.get("cpu_minutes", 0.0))
            meta["train"]["total_cpu_minutes"] = round(parent_total + elapsed / 60, 2)
    meta["metrics"] = {}
    ema.metadata = meta
    save_generator(ema, out / "model.pt", meta)
    summary = {"out": str(out / "model.pt"), "steps": step, "cpu_minutes": round(elapsed / 60, 2), "final_val_loss": final_val}
    log(json.dumps(summary))
    return summary
