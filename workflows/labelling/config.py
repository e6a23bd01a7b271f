"""Typed configuration of ``mlmd label`` (YAML file + CLI overrides)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlmd.config import one_line, read_yaml_mapping
from mlmd.errors import ConfigError

from .clusters import KINDS
from .species import SALTS, SOLVENTS


class SamplingConfig(BaseModel):
    """How configurations of one cluster are sampled (units: K, fs, Å)."""

    model_config = ConfigDict(extra="forbid")

    temperature_k: tuple[float, float] = (400.0, 1000.0)  # MD temperature, uniform per cluster
    timestep_fs: tuple[float, float] = (0.5, 1.0)  # MD time step, uniform per cluster
    friction_per_fs: float = Field(0.02, gt=0)
    md_steps: int = Field(20, ge=0)  # MD steps after the initial single point
    keep_every: int = Field(4, ge=1)  # keep every k-th MD frame
    keep_initial: bool = True  # keep the packed starting geometry
    n_compressed: int = Field(1, ge=0)  # MD snapshots with intermolecular distances scaled below 1
    n_expanded: int = Field(1, ge=0)  # ... and above 1
    scale_range: tuple[float, float] = (0.9, 1.1)
    n_rattled: int = Field(1, ge=0)  # MD snapshots with Gaussian noise on every atom
    rattle_std: tuple[float, float] = (0.02, 0.08)  # Å
    max_force: float = Field(50.0, gt=0)  # eV/Å; frames with a larger force component are dropped

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("temperature_k", "timestep_fs", "scale_range", "rattle_std"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi):
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {(lo, hi)}")
        return self


DEFAULT_KINDS = {"solvent": 0.15, "mixture": 0.2, "li_shell": 0.2, "anion_shell": 0.1, "ion_pair": 0.2,
                 "aggregate": 0.15}


class LabelConfig(BaseModel):
    """Everything ``mlmd label`` needs. ``out`` is a folder of extxyz shards plus MANIFEST.json."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Path("data/electrolyte")
    n_clusters: int = Field(1000, ge=1)
    seed: int = Field(0, ge=0)
    workers: int = Field(1, ge=1, le=64)
    shard_size: int = Field(50, ge=1)  # clusters per shard file
    min_atoms: int = Field(20, ge=1)
    max_atoms: int = Field(100, ge=1)
    solvents: list[str] = Field(default_factory=lambda: list(SOLVENTS))  # names or SMILES
    salts: list[str] = Field(default_factory=lambda: list(SALTS))
    kinds: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_KINDS))  # kind -> weight
    density_g_cm3: float = Field(1.0, gt=0)  # packing density of the initial cluster
    packmol_tolerance: float = Field(2.0, gt=0)  # Å
    calculator: str = "tblite"  # reference: 'tblite' (GFN2-xTB) or module:factory
    calculator_kwargs: dict[str, Any] = Field(default_factory=dict)
    sampler: str | None = None  # MD driver: None = the reference itself, or module:factory
    sampler_kwargs: dict[str, Any] = Field(default_factory=dict)
    retry: dict[str, Any] = Field(default_factory=lambda: {"max_iterations": 1000, "mixer_damping": 0.2})
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @model_validator(mode="after")
    def _check(self):
        if self.min_atoms > self.max_atoms:
            raise ValueError(f"min_atoms ({self.min_atoms}) must not exceed max_atoms ({self.max_atoms})")
        bad = sorted(set(self.kinds) - set(KINDS))
        if bad:
            raise ValueError(f"unknown cluster kind(s) {bad}; accepted: {', '.join(KINDS)}")
        if any(w < 0 for w in self.kinds.values()) or sum(self.kinds.values()) <= 0:
            raise ValueError("kind weights must be >= 0 with a positive sum")
        if not self.solvents:
            raise ValueError("solvents must not be empty")
        needs_salt = any(w > 0 for k, w in self.kinds.items() if k not in ("solvent", "mixture"))
        if needs_salt and not self.salts:
            raise ValueError("salts must not be empty when ion-containing kinds have weight > 0")
        return self

    def fingerprint_dict(self) -> dict:
        """The settings that decide the content of cluster i (not: out, n_clusters, workers)."""
        d = self.model_dump(mode="json")
        for k in ("out", "n_clusters", "workers"):
            d.pop(k)
        return d


def build_config(data: dict | None = None, **overrides: Any) -> LabelConfig:
    """Validate ``data`` (from YAML) with non-None ``overrides`` applied; errors become one-line ConfigError."""
    merged = dict(data or {})
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return LabelConfig(**merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid label config: {one_line(exc)}") from None


def load_config(path: str | Path | None, **overrides: Any) -> LabelConfig:
    return build_config(read_yaml_mapping(path, "LabelConfig fields"), **overrides)
