"""Generator checkpoints: ``state_dict`` + JSON config + JSON metadata, loaded with ``weights_only=True``.

Metadata keys: ``format``, ``method``, ``task``, ``species`` (atomic numbers, the vocabulary), ``max_atoms``,
``n_atoms_probs``, ``lattice_scale``, ``split_seed``, ``split_fractions``, ``data_hash``, ``data_source``,
``metrics``, ``mlmd_version``, ``train`` (budget actually used).
Bundled checkpoints live in ``generative/pretrained/<name>.pt`` (with ``<name>.json`` beside them for humans).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mlmd.errors import CheckpointError, InputError
from mlmd.io import atomic_path, atomic_write_text

from .config import ModelConfig
from .models import CrystalGenerator, build_model

FORMAT = "mlmd-generator/1"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def _mlmd_version() -> str:
    try:
        from importlib.metadata import version

        return version("mlmd")
    except Exception:  # noqa: BLE001
        return "unknown"


def generator_metadata(model: CrystalGenerator, **extra) -> dict:
    meta = {
        "format": FORMAT,
        "method": model.method,
        "task": model.task,
        "species": model.species,
        "max_atoms": model.max_atoms,
        "n_atoms_probs": model.n_atoms_probs,
        "lattice_scale": model.lattice_scale,
        "mlmd_version": _mlmd_version(),
    }
    meta.update(extra)
    return meta


def save_generator(model: CrystalGenerator, path: str | os.PathLike, metadata: dict | None = None, write_json: bool = True) -> Path:
    """Write ``path`` (.pt) atomically, plus ``path`` with suffix .json holding config + metadata."""
    meta = dict(getattr(model, "metadata", {}) or {})
    meta.update(generator_metadata(model))
    meta.update(metadata or {})
    model.metadata = meta
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": model.config.model_dump_json(),
        "metadata": json.dumps(meta),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    if write_json:
        atomic_write_text(path.with_suffix(".json"), json.dumps({"config": model.config.model_dump(), "metadata": meta}, indent=2))
    return path


def resolve_generator_path(name_or_path: str | os.PathLike) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    cand = PRETRAINED_DIR / f"{name_or_path}.pt"
    if cand.is_file():
        return cand
    names = sorted(x.stem for x in PRETRAINED_DIR.glob("*.pt")) if PRETRAINED_DIR.is_dir() else []
    raise InputError(f"generator {str(name_or_path)!r} not found; give a checkpoint path or one of {names}")


def load_generator(name_or_path: str | os.PathLike, task: str | None = None, method: str | None = None) -> CrystalGenerator:
    """Load a generator by bundled name (``perov5-csp``, ``perov5-gen``, ``carbon24-gen``) or path; check ``task``/``method`` if given."""
    path = resolve_generator_path(name_or_path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{str(path)!r} is not a readable generator checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an mlmd generator checkpoint (expected format {FORMAT})")
    try:
        config = ModelConfig.model_validate_json(payload["config"])
        meta = json.loads(payload["metadata"])
        model = build_model(config, meta["species"], meta["lattice_scale"], meta["n_atoms_probs"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{str(path)!r} has an inconsistent generator checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    if task is not None and config.task != task:
        raise CheckpointError(f"{str(path)!r} is a {config.task!r} model; this needs task {task!r}")
    if method is not None and config.method != method:
        raise CheckpointError(f"{str(path)!r} is a {config.method!r} model; this needs method {method!r}")
    model.metadata = meta
    model.eval()
    return model
