"""Checkpoints: one torch file holding a state_dict plus JSON config and metadata — never a pickled module.

Layout: {"format": FORMAT, "model_type": str, "config": JSON str, "metadata": JSON str, "state_dict": {name: tensor}}.
Loaded with ``torch.load(..., weights_only=True)`` so a model file cannot run code.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from mlmd.errors import CheckpointError
from mlmd.io import atomic_path
from mlmd.registry import model_class, resolve_model_path

FORMAT = "mlmd-checkpoint-v1"


def mlmd_version() -> str:
    try:
        return version("mlmd")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def save_checkpoint(model, path: str | Path, metadata: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a Potential) atomically. ``extra`` adds tensors/str entries (e.g. optimiser state)."""
    meta = {
        "mlmd_version": mlmd_version(),
        "model_type": model.model_type,
        "species": model.species,
        "cutoff": model.cutoff,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "units": {"energy": "eV", "length": "Angstrom", "charge": "e", "stress": "eV/Angstrom^3"},
    }
    meta.update(metadata or {})
    payload = {
        "format": FORMAT,
        "model_type": model.model_type,
        "config": json.dumps(model.config),
        "metadata": json.dumps(meta),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    payload.update(extra or {})
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check the raw checkpoint dict (config and metadata parsed from JSON)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable mlmd checkpoint ({reason[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mlmd checkpoint (expected format {FORMAT!r})")
    try:
        payload["config"] = json.loads(payload["config"])
        payload["metadata"] = json.loads(payload["metadata"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has a damaged config/metadata section") from None
    return payload


def load_potential(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a bundled model by name (e.g. ``"bamboo-electrolyte"``) or a checkpoint path, in eval mode."""
    path = resolve_model_path(name_or_path)
    payload = read_checkpoint(path)
    cls = model_class(payload["model_type"])
    try:
        model = cls.from_config(payload["config"])
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:  # a config/state mismatch means a foreign or damaged file
        raise CheckpointError(f"{path} does not fit model type {payload['model_type']!r}: {str(exc).splitlines()[0][:160]}") from None
    model.metadata = payload["metadata"]
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device).eval()
