"""Typed settings of an MD run (:class:`MDConfig`) and its safety guards (:class:`GuardConfig`).

Units follow ``mlmd.units``: fs, K, bar, Å, eV. Unknown keys are rejected (``extra="forbid"``), so a typo in a
YAML file is an error rather than a silently ignored setting. :func:`load_config` turns pydantic's validation
errors into one-line :class:`mlmd.errors.ConfigError` messages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlmd.errors import ConfigError

Ensemble = Literal["nve", "nvt", "npt"]
Thermostat = Literal["langevin", "bussi", "nose_hoover"]
Barostat = Literal["mtk_iso", "mtk", "langevin"]


class GuardConfig(BaseModel):
    """Checks that stop a run going bad. Evaluated every ``interval`` steps and before every write."""

    model_config = ConfigDict(extra="forbid")

    interval: int = Field(10, ge=1, description="check every this many steps")
    min_distance_A: float = Field(0.5, gt=0, description="trip when two atoms come closer than this (Å)")
    temperature_factor: float | None = Field(
        5.0, gt=1, description="trip when T exceeds this times the target temperature (None: off)"
    )
    max_temperature_K: float | None = Field(10000.0, gt=0, description="trip when T exceeds this (None: off)")
    max_forces_std_eV_A: float | None = Field(
        None, gt=0, description="trip when the calculator's per-atom force uncertainty exceeds this (eV/Å)"
    )


class MDConfig(BaseModel):
    """Settings of an MD run.

    ``steps`` is the *total* number of steps of the run: a restart continues from the checkpoint's step until
    ``steps`` is reached, so a run of 2N steps equals N steps plus a restart with ``steps = 2N``.
    """

    model_config = ConfigDict(extra="forbid")

    ensemble: Ensemble = "nvt"
    timestep_fs: float = Field(0.5, gt=0, le=20)
    steps: int = Field(1000, ge=0)
    temperature_K: float | None = Field(
        300.0, gt=0, description="thermostat target; also the initial-velocity temperature (None: start at rest, nve only)"
    )
    pressure_bar: float = Field(1.0, description="barostat target (npt)")
    thermostat: Thermostat = "langevin"
    barostat: Barostat = "mtk_iso"
    friction_per_fs: float = Field(0.01, gt=0, description="Langevin friction (1/fs); also the particle friction of the langevin barostat")
    thermostat_time_fs: float = Field(100.0, gt=0, description="Bussi / Nose-Hoover chain time constant (fs)")
    barostat_time_fs: float = Field(1000.0, gt=0, description="barostat time constant (fs)")
    seed: int = Field(0, ge=0)
    initial_velocities: Literal["auto", "maxwell", "keep"] = Field(
        "auto", description="auto: Maxwell-Boltzmann at temperature_K unless the structure carries momenta"
    )
    log_interval: int = Field(10, ge=1)
    trajectory_interval: int = Field(100, ge=1)
    checkpoint_interval: int = Field(1000, ge=1)
    log_pressure: bool = Field(True, description="compute the stress for the log when the calculator provides it")
    guards: GuardConfig = Field(default_factory=GuardConfig)

    @model_validator(mode="after")
    def _check_combination(self) -> "MDConfig":
        if self.ensemble in ("nvt", "npt") and self.temperature_K is None:
            raise ValueError(f"ensemble {self.ensemble!r} needs temperature_K (a positive number in K)")
        return self


def _format_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    kind = err["type"]
    if kind == "extra_forbidden":
        model = GuardConfig if err["loc"][:1] == ("guards",) else MDConfig
        accepted = ", ".join(model.model_fields)
        return f"{source}: unknown key {loc!r} (accepted: {accepted})"
    if kind == "literal_error":
        return f"{source}: {loc} = {err.get('input')!r} is not accepted; {err['msg'].lower()}"
    if kind == "value_error":
        return f"{source}: {err['msg'].removeprefix('Value error, ')}"
    return f"{source}: {loc} = {err.get('input')!r}: {err['msg'].lower()}"


def make_config(values: dict[str, Any] | None = None, source: str = "md config", **overrides: Any) -> MDConfig:
    """Validate ``values`` (plus non-None ``overrides``) into an :class:`MDConfig`; ConfigError on a bad value."""
    data: dict[str, Any] = dict(values or {})
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    try:
        return MDConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"][:1]
        if first and overrides.get(first[0]) is not None:
            source = "command line"
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> MDConfig:
    """Read a YAML config file (optional) and apply ``overrides`` (None values are ignored)."""
    from mlmd.config import read_yaml_mapping

    values = read_yaml_mapping(path, "MD settings")
    source = str(path) if path is not None else "md config"
    return make_config(values, source=source, **overrides)
