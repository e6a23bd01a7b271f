"""Typed configuration of crystal generators and their training (read from YAML by ``mlmd train-generator``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlmd.errors import ConfigError


class ModelConfig(BaseModel):
    """Network and generative-process settings (stored in every checkpoint)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["crysbfn", "diffcsp"] = "crysbfn"
    task: Literal["csp", "gen"] = "csp"
    hidden: int = Field(128, gt=0)
    layers: int = Field(4, gt=0)
    n_freq: int = Field(16, gt=0)
    time_dim: int = Field(64, gt=1)
    # CrysBFN
    bfn_steps: int = Field(10, gt=0, description="N of the training schedule (sampling may use another N)")
    beta1_coord: float = Field(1000.0, gt=0, description="final von Mises concentration of fractional coordinates")
    sigma1_lattice: float = Field(0.03, gt=0, lt=1, description="final std of the Gaussian flow on the scaled lattice")
    beta1_types: float = Field(3.0, gt=0, description="final accuracy of the discrete flow on atom types")
    coord_loss: Literal["uniform", "kl"] = "uniform"
    final_prediction: bool = Field(False, description="after the N-th Bayesian update, one more network call at t = 1 "
                                   "reads the full-accuracy posterior (N + 1 calls); off: the N-th call's prediction, "
                                   "from the posterior of N - 1 updates, is the sample")
    # DiffCSP
    timesteps: int = Field(1000, gt=0)
    sigma_begin: float = Field(0.005, gt=0)
    sigma_end: float = Field(0.5, gt=0)
    step_lr: float = Field(5e-7, gt=0, description="Langevin corrector step size scale")


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = "perov_5"
    split_seed: int = 42
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_steps: int = Field(20000, gt=0)
    max_minutes: float = Field(10.0, gt=0, description="CPU-time budget (process time, all threads) in minutes; training stops after it")
    eval_every: int = Field(500, gt=0)
    seed: int = 0
    threads: int = Field(1, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    collision_rate: float = Field(0.0, ge=0, lt=1, description="CrysBFN: share of training crystals in which one atom's "
                                  "input position is moved onto another atom's, teaching the network to separate atoms "
                                  "that sampling has brought together (its target stays the atom's true site)")
    init_from: str | None = Field(None, description="generator checkpoint (name or path) whose weights start a new run; "
                                  "its model settings and species must equal this run's")


class GeneratorConfig(BaseModel):
    """Top-level YAML: ``model``, ``data``, ``train`` sections plus the output directory."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    out: str = "runs/generator"

    @model_validator(mode="after")
    def _collisions_need_crysbfn(self):
        if self.train.collision_rate > 0 and self.model.method != "crysbfn":
            raise ValueError("train.collision_rate applies to crysbfn models only")
        return self


def load_config(path: str | Path) -> GeneratorConfig:
    from mlmd.config import read_yaml_mapping

    raw = read_yaml_mapping(path, "model/data/train sections")
    try:
        return GeneratorConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        if not loc:  # a rule across sections
            raise ConfigError(f"config {str(path)!r}: {err['msg'].removeprefix('Value error, ')}") from None
        raise ConfigError(f"config {str(path)!r}: {loc}={err.get('input')!r} invalid ({err['msg']})") from None
