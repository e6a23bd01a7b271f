"""Training of mlmd potentials: typed config, losses, EMA, early stopping, checkpoint/resume, JSON-lines log,
data parallel over ``torchrun`` processes (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as nn_functional
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlmd import keys, units
from mlmd.allocator import keep_freed_memory
from mlmd.checkpoint import read_checkpoint, save_checkpoint
from mlmd.config import read_yaml_mapping
from mlmd.data import Sample, collate_samples, frames_hash, make_sample, read_frames, split_indices
from mlmd.errors import ConfigError
from mlmd.io import atomic_path
from potentials.bamboo import ELECTROSTATIC_ENERGIES, BambooConfig, BambooPotential, widened_state_dict


class LossWeights(BaseModel):
    model_config = ConfigDict(extra="forbid")

    energy: float = 200.0  # on (eV/atom)^2
    forces: float = 1.0  # on (eV/Å)^2
    virial: float = 10.0  # on (eV/atom)^2
    charges: float = 0.5  # on e^2
    dipole: float = 0.02  # on (e·Å)^2
    charge_residual: float = 0.01  # variance of dE_elec/dq within a structure, eV^2
    # Huber on force components (quadratic below the threshold, linear above): hot frames with forces of tens of
    # eV/Å then cannot dominate the gradient. None = plain mean squared error.
    force_huber_eV_per_A: float | None = 1.0


class TrainConfig(BaseModel):
    """Everything a training run needs; loaded from YAML, overridable from the CLI."""

    model_config = ConfigDict(extra="forbid")

    data: list[str]
    # Relative sampling weight of a data path's training frames: weight 3 draws each of its frames three times per
    # epoch, 0.5 half of them (a fresh random half each epoch). Paths not listed weigh 1. Balances a small data set
    # whose distribution matters (e.g. the one the test split comes from) against a large one.
    data_weights: dict[str, float] = Field(default_factory=dict)
    output: str = "runs/train"
    model: BambooConfig = Field(default_factory=BambooConfig)
    init_from: str | None = None  # fine-tune from an existing checkpoint
    split: tuple[float, float, float] = (0.9, 0.05, 0.05)
    # Frames whose info[split_key] is train/valid/test keep that assignment (e.g. set per cluster by `mlmd label`,
    # so correlated frames of one cluster never straddle train and test); otherwise a seeded random split.
    split_key: str | None = "split"
    seed: int = 0
    batch_size: int = 8
    epochs: int = 100
    max_time_min: float | None = None
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 200
    grad_clip: float = 10.0
    ema_decay: float = 0.995
    patience: int = 20
    weights: LossWeights = Field(default_factory=LossWeights)
    dtype: str = "float32"
    # "cuda" trains on a GPU (with torchrun, rank k uses cuda:k and NCCL); "cpu" data-parallel runs use gloo.
    device: str = "cpu"
    num_threads: int | None = None

    @model_validator(mode="after")
    def _check_data_weights(self) -> "TrainConfig":
        for path, weight in self.data_weights.items():
            if path not in self.data:
                raise ValueError(f"data_weights names {path!r}, which is not in data ({', '.join(self.data)})")
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"data_weights[{path!r}] = {weight}; a sampling weight must be a finite number > 0")
        return self


def load_train_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (unknown keys and wrong types are errors) and apply ``overrides`` (dotted keys allowed)."""
    raw = read_yaml_mapping(path, "training settings")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return TrainConfig(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "value_error" and not err["loc"]:  # a cross-field check of the whole config
            raise ConfigError(str(err["ctx"]["error"])) from None
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"unknown setting {where!r}; accepted: {', '.join(TrainConfig.model_fields)}") from None
        raise ConfigError(f"setting {where!r}: {err['msg']} (got {err.get('input')!r})") from None


# -- distributed helpers ------------------------------------------------------------------------------------
def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _init_distributed(device: torch.device) -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def training_device(name: str) -> torch.device:
    """The torch device a run trains on; under torchrun a bare "cuda" becomes this process's cuda:LOCAL_RANK."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was requested but this torch build sees no CUDA GPU; use device: cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _on_device(graph, targets: dict[str, torch.Tensor], device: torch.device):
    if device.type == "cpu":
        return graph, targets
    return graph.to(device), {k: v.to(device) for k, v in targets.items()}


def _all_reduce_mean(tensors: Sequence[torch.Tensor]) -> None:
    dist = _dist()
    if dist is None:
        return
    world = dist.get_world_size()
    for t in tensors:
        dist.all_reduce(t)
        t /= world


# -- reference energies ---------------------------------------------------------------------------------------
def fit_reference_energies(samples: Sequence[Sample], species: Sequence[int]) -> tuple[dict[int, float], float]:
    """Least-squares per-element energies from compositions, and an energy scale (RMS force component, eV/Å·Å)."""
    with_energy = [s for s in samples if s.energy is not None]
    counts = np.array([[int((s.graph.atomic_numbers == z).sum()) for z in species] for s in with_energy], dtype=float)
    energies = np.array([s.energy for s in with_energy])
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    present = counts.sum(axis=0) > 0
    reference = {int(z): float(e) if p else 0.0 for z, e, p in zip(species, solution, present)}
    forces = np.concatenate([s.forces.ravel() for s in samples if s.forces is not None])
    scale = float(np.sqrt(np.mean(forces**2))) if len(forces) else 1.0
    return reference, max(scale, 1e-3)


# -- losses ---------------------------------------------------------------------------------------------------
def compute_losses(model, graph, targets, weights: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    want_stress = bool(targets[keys.STRESS + "_mask"].any())
    out = model(graph, compute_forces=True, compute_stress=want_stress, create_graph=True)
    n_atoms = torch.bincount(graph.batch, minlength=graph.num_graphs).to(graph.positions.dtype)
    atom_mask_f = targets[keys.FORCES + "_mask"][graph.batch]
    atom_mask_q = targets[keys.CHARGES + "_mask"][graph.batch]
    parts: dict[str, torch.Tensor] = {}
    m = targets[keys.ENERGY + "_mask"]
    if m.any():
        parts["energy"] = (((out[keys.ENERGY] - targets[keys.ENERGY]) / n_atoms)[m] ** 2).mean()
    if atom_mask_f.any():
        diff = (out[keys.FORCES] - targets[keys.FORCES])[atom_mask_f]
        delta = weights.force_huber_eV_per_A
        parts["forces"] = (diff**2).mean() if delta is None else 2 * nn_functional.huber_loss(
            diff, torch.zeros_like(diff), delta=delta)
    if want_stress:
        m = targets[keys.STRESS + "_mask"]
        volume = graph.volumes().clamp_min(1e-9)
        diff = (out[keys.STRESS] - targets[keys.STRESS]) * (volume / n_atoms)[:, None, None]
        parts["virial"] = (diff[m] ** 2).mean()
    if keys.CHARGES in out and atom_mask_q.any():
        parts["charges"] = ((out[keys.CHARGES] - targets[keys.CHARGES])[atom_mask_q] ** 2).mean()
    m = targets[keys.DIPOLE + "_mask"] & ~graph.pbc.any(dim=1)
    if keys.DIPOLE in out and m.any():
        parts["dipole"] = ((out[keys.DIPOLE] - targets[keys.DIPOLE])[m] ** 2).mean()
    if weights.charge_residual > 0 and ELECTROSTATIC_ENERGIES in out:
        (mu,) = torch.autograd.grad(out[ELECTROSTATIC_ENERGIES].sum(), out[keys.CHARGES], create_graph=True)
        mean = torch.zeros_like(n_atoms).index_add(0, graph.batch, mu) / n_atoms
        parts["charge_residual"] = ((mu - mean[graph.batch]) ** 2).mean()
    total = sum(getattr(weights, name) * value for name, value in parts.items())
    return total, {name: float(value.detach()) for name, value in parts.items()}


# -- evaluation -----------------------------------------------------------------------------------------------
def _empty_metrics() -> dict[str, Any]:
    return {"e_abs": [], "e_signed": [], "e_sq": [], "f_abs": [], "f_sq": [], "q_abs": [], "s_abs": [],
            "n_structures": 0, "n_atoms": 0}


def _finish_metrics(acc: dict[str, Any], with_stress: bool = False, with_bias: bool = False) -> dict[str, Any]:
    def mean(values):
        return float(np.mean(np.concatenate(values))) if values and sum(len(v) for v in values) else None

    e_mae, e_mse = mean(acc["e_abs"]), mean(acc["e_sq"])
    f_mae, f_mse = mean(acc["f_abs"]), mean(acc["f_sq"])
    q_mae = mean(acc["q_abs"])
    extra = {}
    if with_bias:  # mean signed error (model - reference): the part of the energy MAE that is an offset
        bias = mean(acc["e_signed"])
        extra["energy_mean_error_meV_per_atom"] = None if bias is None else 1000 * bias
    if with_stress:
        s_mae = mean(acc["s_abs"])
        extra["stress_mae_GPa"] = None if s_mae is None else s_mae * units.BAR_PER_EV_PER_A3 / 1e4
    return {
        "energy_mae_meV_per_atom": None if e_mae is None else 1000 * e_mae,
        "energy_rmse_meV_per_atom": None if e_mse is None else 1000 * math.sqrt(e_mse),
        "force_mae_meV_per_A": None if f_mae is None else 1000 * f_mae,
        "force_rmse_meV_per_A": None if f_mse is None else 1000 * math.sqrt(f_mse),
        "charge_mae_e": q_mae,
        "n_structures": acc["n_structures"],
        "n_atoms": acc["n_atoms"],
        **extra,
    }


def evaluate_samples(model, samples: Sequence[Sample], batch_size: int = 16, dtype=torch.float32,
                     stress: bool = False, bias: bool = False) -> dict[str, Any]:
    """Error metrics over ``samples`` (overall and ``by_config_type``) in meV/atom, meV/Å and e; with ``stress``
    also ``stress_mae_GPa`` over the samples that carry a reference stress (all six components); with ``bias``
    also ``energy_mean_error_meV_per_atom`` (signed, model - reference)."""
    groups: dict[str, dict[str, Any]] = {}
    total = _empty_metrics()
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        graph, targets = collate_samples(chunk, dtype=dtype)
        ptr = graph.ptr.numpy()
        graph, targets = _on_device(graph, targets, device)
        want_stress = stress and bool(targets[keys.STRESS + "_mask"].any())
        out = model(graph, compute_forces=True, compute_stress=want_stress)

        def error(key: str) -> np.ndarray:
            return (out[key].detach() - targets[key]).cpu().numpy()

        n_atoms = torch.bincount(graph.batch, minlength=graph.num_graphs).to(dtype).cpu().numpy()
        e_signed = error(keys.ENERGY) / n_atoms
        e_err = np.abs(e_signed)
        f_err = np.abs(error(keys.FORCES))
        q_err = np.abs(error(keys.CHARGES)) if keys.CHARGES in out else None
        s_err = np.abs(error(keys.STRESS)) if want_stress else None
        for b, sample in enumerate(chunk):
            atoms = slice(ptr[b], ptr[b + 1])
            for acc in (total, groups.setdefault(sample.config_type, _empty_metrics())):
                acc["n_structures"] += 1
                acc["n_atoms"] += int(ptr[b + 1] - ptr[b])
                if sample.energy is not None:
                    acc["e_abs"].append(e_err[b:b + 1])
                    acc["e_signed"].append(e_signed[b:b + 1])
                    acc["e_sq"].append(e_err[b:b + 1] ** 2)
                if sample.forces is not None:
                    acc["f_abs"].append(f_err[atoms].ravel())
                    acc["f_sq"].append(f_err[atoms].ravel() ** 2)
                if sample.charges is not None and q_err is not None:
                    acc["q_abs"].append(q_err[atoms])
                if sample.stress is not None and s_err is not None:
                    acc["s_abs"].append(s_err[b][np.triu_indices(3)])
    result = _finish_metrics(total, stress, bias)
    result["by_config_type"] = {name: _finish_metrics(acc, stress, bias) for name, acc in sorted(groups.items())}
    return result


SPLIT_NAMES = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}


def split_of(atoms, key: str | None = "split") -> str | None:
    """'train' | 'valid' | 'test' from ``atoms.info[key]`` (also accepts 'val'), else None."""
    return SPLIT_NAMES.get(str(atoms.info.get(key))) if key else None


def _split(frames, cfg: TrainConfig) -> list[np.ndarray]:
    labels = np.array([split_of(a, cfg.split_key) for a in frames], dtype=object)
    if cfg.split_key and all(label is not None for label in labels):
        return [np.flatnonzero(labels == name) for name in ("train", "valid", "test")]
    return split_indices(len(frames), cfg.split, cfg.seed)


# -- training loop --------------------------------------------------------------------------------------------
# Settings a fine-tuning run may change on a loaded model: parameter-free physics terms, and two switches that add
# modules which start as the identity of the loaded model (the share head at equal shares, the carried-vector filter
# at zero). Those two may only be switched on; each maps to the parameter names it adds. mlp_width may only grow
# (the new hidden units start with zero output weights).
FINETUNE_MODEL_OVERRIDES = {"repulsion", "dispersion", "dispersion_cutoff", "coulomb_r0", "pme_smearing",
                            "pme_mesh_spacing", "excess_charge", "vector_messages", "mlp_width"}
_GROWABLE = {"excess_charge": (("uniform", "learned"), ("excess_head.",)),
             "vector_messages": ((False, True), (".radial_vv.", ".vector_in."))}


def _load_for_finetuning(cfg: TrainConfig) -> BambooPotential:
    """The ``init_from`` model, with the physics settings the config's ``model`` section sets explicitly."""
    from mlmd.checkpoint import load_potential

    model = load_potential(cfg.init_from)
    overrides = {name: getattr(cfg.model, name) for name in cfg.model.model_fields_set}
    changed = {name for name, value in overrides.items() if model.config.get(name) != value}
    if not changed:
        return model.train()
    refused = sorted(changed - FINETUNE_MODEL_OVERRIDES)
    if refused:
        raise ConfigError(f"model.{refused[0]} cannot change when fine-tuning from {cfg.init_from}; "
                          f"a fine-tuning run may change only {', '.join(sorted(FINETUNE_MODEL_OVERRIDES))}")
    grown: tuple[str, ...] = ()
    for name in sorted(changed & _GROWABLE.keys()):
        (off, on), prefixes = _GROWABLE[name]
        before, after = model.config.get(name, off), overrides[name]
        if (before, after) != (off, on):
            raise ConfigError(f"model.{name} cannot go from {before!r} to {after!r} when fine-tuning from "
                              f"{cfg.init_from}; only {off!r} -> {on!r} can")
        grown += prefixes
    trained = model.state_dict()
    tuned = BambooPotential({**model.config, **{name: overrides[name] for name in changed}})
    if "mlp_width" in changed:
        before = model.config.get("mlp_width") or model.config["num_features"]
        if overrides["mlp_width"] is None or overrides["mlp_width"] < before:
            raise ConfigError(f"model.mlp_width cannot go from {before} to {overrides['mlp_width']!r} when fine-tuning "
                              f"from {cfg.init_from}; it may only grow")
        trained = widened_state_dict(trained, tuned)
    missing, unexpected = tuned.load_state_dict(trained, strict=False)
    assert not unexpected and all(any(p in key for p in grown) for key in missing), (missing, unexpected)
    tuned.metadata = model.metadata
    return tuned.train()


def _lr_at(step: int, total_steps: int, cfg: TrainConfig, steps_per_s: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to ``min_lr`` by the last step or by ``max_time_min``, whichever comes first.

    ``steps_per_s`` is the measured rate (0 until an epoch has ended); with it the time budget becomes a step count,
    so the rate decays every step and every data-parallel rank computes the same value.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    if cfg.max_time_min and steps_per_s > 0:
        budget_steps = steps_per_s * 60 * cfg.max_time_min
        progress = max(progress, min(1.0, (step - cfg.warmup_steps) / max(1.0, budget_steps - cfg.warmup_steps)))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def _epoch_draws(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training-set indices for one epoch: index k floor(w_k) times, plus once more with probability frac(w_k)."""
    counts = np.floor(weights).astype(int)
    fractions = weights - counts
    if fractions.any():  # whole weights draw no random numbers, so unweighted runs keep their order
        counts += rng.random(len(weights)) < fractions
    return np.repeat(np.arange(len(weights)), counts)


def _rank_batches(order: np.ndarray, batch_size: int, rank: int, world: int) -> list[np.ndarray]:
    """This rank's share of each global batch of ``batch_size * world`` draws from ``order``.

    The last ``len(order) % world`` draws are dropped, so every rank has a share of every batch: a rank without one
    would skip the gradient all-reduce and leave the others waiting in it for ever.
    """
    usable = len(order) - len(order) % world
    step = batch_size * world
    return [order[start:min(start + step, usable)][rank::world] for start in range(0, usable, step)]


def selection_score(valid: dict[str, Any]) -> float:
    """What ``best.pt`` minimises over epochs: validation energy MAE (meV/atom) x 10 + force MAE (meV/Å)."""
    return valid["energy_mae_meV_per_atom"] * 10 + valid["force_mae_meV_per_A"]


def _log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a BAMBOO potential. Writes ``output/{last,best}.pt``, ``metrics.jsonl``, ``final_metrics.json``."""
    device = training_device(cfg.device)
    rank, world = _init_distributed(device)
    keep_freed_memory()  # every step allocates the same large edge tensors again
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(cfg.dtype)
    if dtype is None:
        raise ConfigError(f"dtype {cfg.dtype!r} is not supported; use float32 or float64")
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    per_path = [read_frames(path) for path in cfg.data]
    frames = [atoms for path_frames in per_path for atoms in path_frames]
    frame_weights = np.repeat([cfg.data_weights.get(path, 1.0) for path in cfg.data], [len(f) for f in per_path])
    model = _load_for_finetuning(cfg) if cfg.init_from else BambooPotential(cfg.model)
    samples = [make_sample(a, model.cutoff, model.species) for a in frames]
    parts = _split(frames, cfg)
    train_set = [samples[k] for k in parts[0]]
    valid_set = [samples[k] for k in parts[1]] or train_set[: max(1, len(train_set) // 10)]
    test_set = [samples[k] for k in parts[2]]
    train_weights = frame_weights[parts[0]]
    data_hash = frames_hash(frames)
    if not cfg.init_from:
        reference, scale = fit_reference_energies(train_set, model.species)
        model.set_reference_energies(reference, scale)
    model = model.to(device=device, dtype=dtype)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(train_weights.sum() / (cfg.batch_size * world))
    total_steps = steps_per_epoch * cfg.epochs
    state = {"epoch": 0, "step": 0, "best": float("inf"), "bad_epochs": 0, "elapsed": 0.0}

    last = out_dir / "last.pt"
    log_path = out_dir / "metrics.jsonl"
    if last.exists():  # resume
        payload = read_checkpoint(last)
        model.load_state_dict(payload["state_dict"])
        ema.load_state_dict({k[4:]: v for k, v in payload.items() if k.startswith("ema.")})
        optimizer.load_state_dict(_unflatten_optimizer(payload))
        state.update(json.loads(payload["train_state"]))
        torch.set_rng_state(payload["rng_state"])

    metadata = {"data_hash": data_hash, "data": list(cfg.data), "split_seed": cfg.seed, "split": list(cfg.split),
                "split_key": cfg.split_key,
                "n_train": len(train_set), "n_valid": len(valid_set), "n_test": len(test_set),
                "train_config": json.loads(cfg.model_dump_json())}

    def save(path: Path, target_model, with_state: bool) -> None:
        extra = None
        if with_state:
            extra = {"train_state": json.dumps(state), "rng_state": torch.get_rng_state()}
            extra.update({f"ema.{k}": v.detach().clone() for k, v in ema.state_dict().items()})
            extra.update(_flatten_optimizer(optimizer))
        save_checkpoint(target_model, path, metadata=metadata, extra=extra)

    bar = None
    if progress and rank == 0:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), TextColumn("{task.fields[info]}"),
                       TimeRemainingColumn(), transient=False)
        bar.start()
        task = bar.add_task("train", total=total_steps, completed=state["step"], epoch=state["epoch"], info="")
    start_time = time.time() - state["elapsed"]
    rng = np.random.default_rng(cfg.seed + 1000 * state["epoch"])
    while state["epoch"] < cfg.epochs:
        model.train()
        # measured training rate; the same on every rank (the step count is, and rank 0's elapsed time is broadcast)
        steps_per_s = state["step"] / state["elapsed"] if state["elapsed"] > 0 else 0.0
        order = rng.permutation(_epoch_draws(train_weights, rng))
        sums: dict[str, float] = {}
        for chunk in _rank_batches(order, cfg.batch_size, rank, world):
            graph, targets = _on_device(*collate_samples([train_set[k] for k in chunk], dtype=dtype), device)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(state["step"], total_steps, cfg, steps_per_s)
            loss, parts = compute_losses(model, graph, targets, cfg.weights)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            _all_reduce_mean([p.grad for p in model.parameters() if p.grad is not None])
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1.0 - cfg.ema_decay)
            state["step"] += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            sums["n"] = sums.get("n", 0) + 1
            if bar is not None:
                bar.update(task, completed=state["step"], epoch=state["epoch"], info=f"loss {loss.item():.4g}")
        state["epoch"] += 1
        state["elapsed"] = time.time() - start_time
        if rank == 0:
            valid = evaluate_samples(ema, valid_set, dtype=dtype, bias=True)
            score = selection_score(valid)
            record = {"epoch": state["epoch"], "step": state["step"], "time_s": round(state["elapsed"], 1),
                      "lr": optimizer.param_groups[0]["lr"],
                      **{f"train_{k}": v / sums["n"] for k, v in sums.items() if k != "n"},
                      **{f"valid_{k}": v for k, v in valid.items() if k != "by_config_type"}}
            _log(log_path, record)
            if score < state["best"]:
                state["best"], state["bad_epochs"] = score, 0
                save(out_dir / "best.pt", ema, with_state=False)
            else:
                state["bad_epochs"] += 1
            save(last, model, with_state=True)
            if bar is not None:
                bar.update(task, info=f"valid E {valid['energy_mae_meV_per_atom']:.2f} meV/atom, "
                                      f"F {valid['force_mae_meV_per_A']:.1f} meV/Å")
        # rank 0 decides; every rank then uses the same elapsed time for the learning-rate schedule
        decision = torch.tensor([float(state["bad_epochs"] >= cfg.patience or (
            cfg.max_time_min is not None and state["elapsed"] > 60 * cfg.max_time_min)), state["elapsed"]],
            dtype=torch.float64, device=device)
        dist = _dist()
        if dist is not None:
            dist.broadcast(decision, 0)
        state["elapsed"] = float(decision[1])
        if bool(decision[0]):
            break
    if bar is not None:
        bar.stop()
    result: dict[str, Any] = {}
    if rank == 0:
        from mlmd.checkpoint import load_potential

        best = load_potential(out_dir / "best.pt", device=device, dtype=dtype)
        result = {"epochs": state["epoch"], "train_time_s": round(state["elapsed"], 1),
                  "valid": evaluate_samples(best, valid_set, dtype=dtype),
                  "test": evaluate_samples(best, test_set, dtype=dtype) if test_set else None}
        metadata["metrics"] = {"valid": _summary(result["valid"]), "test": _summary(result["test"])}
        metadata["train_time_s"] = result["train_time_s"]
        metadata["epochs"] = result["epochs"]
        save(out_dir / "best.pt", best, with_state=False)
        with atomic_path(out_dir / "final_metrics.json") as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    return result


def _summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if metrics is None else {k: v for k, v in metrics.items() if k != "by_config_type"}


def _flatten_optimizer(optimizer) -> dict[str, Any]:
    """Optimiser state as tensors + JSON (weights_only checkpoints hold no arbitrary objects)."""
    state = optimizer.state_dict()
    flat: dict[str, Any] = {"optim.param_groups": json.dumps(state["param_groups"])}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            flat[f"optim.state.{index}.{name}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return flat


def _unflatten_optimizer(payload: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in payload.items():
        if key.startswith("optim.state."):
            _, _, index, name = key.split(".", 3)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": json.loads(payload["optim.param_groups"])}
