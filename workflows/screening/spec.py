"""The formulation spec: what to screen and how long to simulate it.

A spec file is YAML::

    defaults:                      # optional; merged into every formulation (protocol merged key by key)
      temperature_K: 298.15
      model: bamboo-electrolyte
      protocol: {n_replicas: 4, replica_steps: 5000}
    formulations:
      - name: LiPF6-EC-DMC
        solvents: {EC: 0.5, DMC: 0.5}        # fractions summing to 1, or
        # solvents: [EC, DMC]  with  ratio: "1:1"
        # solvents: [{smiles: "COCCOC", fraction: 1.0}]  or  [{xyz: mol.xyz, fraction: 1.0, density_g_cm3: 0.9}]
        ratio_basis: mass                    # mole | mass | volume
        salt: LiPF6
        concentration: 1.0
        concentration_unit: molar            # molar (mol/L) | molal (mol/kg solvent)
        n_atoms: 600                         # or n_molecules: solvent molecules

Every model forbids unknown keys, so a typo is an error. :func:`load_spec` and :func:`spec_from_flags` turn pydantic
errors into one-line :class:`mlmd.errors.ConfigError` messages that name the formulation and the bad value.
Checks that need the model or the chemistry (unknown solvent, SMILES, elements, box size) live in
:func:`workflows.screening.composition.plan_formulation`; together they run before any MD starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlmd.errors import ConfigError

RatioBasis = Literal["mole", "mass", "volume"]
ConcentrationUnit = Literal["molar", "molal"]
Engine = Literal["ase", "openmm"]

_UNIT_ALIASES = {"m": "molar", "mol/l": "molar", "molar": "molar", "mol/kg": "molal", "molal": "molal"}
#: Tolerance on the sum of solvent fractions.
FRACTION_TOL = 1e-3


class ProtocolSpec(BaseModel):
    """Lengths and settings of the simulation stages (steps of ``timestep_fs``)."""

    model_config = ConfigDict(extra="forbid")

    timestep_fs: float = Field(1.0, gt=0, le=5)
    thermostat_time_fs: float = Field(100.0, gt=0, description="Bussi thermostat time constant (equilibration, NPT)")
    barostat_time_fs: float = Field(1000.0, gt=0, description="MTK barostat time constant")
    minimise_steps: int = Field(200, ge=0, description="FIRE steps at fixed cell (0: skip)")
    minimise_fmax_eV_A: float = Field(0.5, gt=0)
    equilibration_steps: int = Field(5000, ge=0, description="NPT equilibration (discarded)")
    density_chunk_steps: int = Field(2000, ge=1, description="NPT production is extended in chunks of this length")
    density_min_steps: int = Field(4000, ge=1)
    density_max_steps: int = Field(40000, ge=1)
    density_target_sem: float = Field(0.002, gt=0, description="stop production when the density's standard error (g/cm³) falls below")
    density_log_interval: int = Field(10, ge=1)
    n_replicas: int = Field(4, ge=0, description="independent transport replicas (0: density only; Green-Kubo needs ≥ 2)")
    replica_ensemble: Literal["nvt", "nve"] = "nvt"
    replica_thermostat_time_fs: float = Field(2000.0, gt=0, description="weak global (Bussi) thermostat of the replicas")
    replica_equilibration_steps: int = Field(1000, ge=0, description="NVT at the mean NPT volume before production")
    replica_steps: int = Field(10000, ge=1)
    stress_interval: int = Field(1, ge=1, description="steps between stress samples (Green-Kubo wants 1)")
    trajectory_interval: int = Field(20, ge=1, description="steps between frames for MSD and RDF")
    checkpoint_interval: int = Field(500, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "ProtocolSpec":
        if self.density_max_steps < self.density_min_steps:
            raise ValueError(f"protocol.density_max_steps = {self.density_max_steps} is below density_min_steps = "
                             f"{self.density_min_steps}; give max ≥ min")
        if self.n_replicas == 1:
            raise ValueError("protocol.n_replicas = 1: transport needs ≥ 2 replicas (Green-Kubo time decomposition), "
                             "or 0 for density only")
        if self.replica_steps // self.trajectory_interval < 10:
            raise ValueError(f"protocol.replica_steps = {self.replica_steps} gives fewer than 10 frames at "
                             f"trajectory_interval = {self.trajectory_interval}; lengthen the replicas")
        return self


class SolventSpec(BaseModel):
    """One solvent: a registered name, a SMILES string or a single-molecule XYZ file, and its fraction."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    smiles: str | None = None
    xyz: str | None = None
    fraction: float | None = None
    density_g_cm3: float | None = Field(None, description="pure-solvent density; overrides the built-in table")

    @model_validator(mode="after")
    def _one_source(self) -> "SolventSpec":
        given = [k for k in ("name", "smiles", "xyz") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"a solvent needs exactly one of name, smiles or xyz; got {given or 'none'}")
        if self.fraction is not None and not (self.fraction > 0 and math.isfinite(self.fraction)):
            raise ValueError(f"solvent {self.text!r}: fraction {self.fraction} must be > 0")
        if self.density_g_cm3 is not None and not self.density_g_cm3 > 0:
            raise ValueError(f"solvent {self.text!r}: density_g_cm3 {self.density_g_cm3} must be > 0")
        return self

    @property
    def text(self) -> str:
        return self.name or self.smiles or self.xyz or ""


def _parse_ratio(text: Any) -> list[float]:
    parts = str(text).replace(",", ":").split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"ratio {text!r} is not of the form 'a:b[:c...]' with numbers, e.g. '1:1'") from None
    if any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError(f"ratio {text!r} must hold positive numbers, e.g. '3:7'")
    return values


class FormulationSpec(BaseModel):
    """One electrolyte: solvents, salt, temperature, size, protocol, engine, model and seed."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    solvents: list[SolventSpec]
    ratio: str | None = Field(None, description="'a:b[:c]' relative amounts of the solvents (instead of fractions)")
    ratio_basis: RatioBasis = "mole"
    salt: str | None = None
    concentration: float | None = None
    concentration_unit: ConcentrationUnit = "molar"
    temperature_K: float = 298.15
    pressure_bar: float = 1.0
    n_molecules: int | None = Field(None, description="number of solvent molecules")
    n_atoms: int | None = Field(None, description="approximate total number of atoms (default 600)")
    protocol: ProtocolSpec = Field(default_factory=ProtocolSpec)
    engine: Engine = "ase"
    model: str = "bamboo-electrolyte"
    calculator: str | None = Field(
        None, description="module:factory of an ASE calculator, called as factory(model_path, dtype); default: the model")
    dtype: Literal["float32", "float64"] = "float32"
    seed: int = Field(0, ge=0)

    @field_validator("solvents", mode="before")
    @classmethod
    def _solvent_forms(cls, value: Any) -> Any:
        if isinstance(value, str):           # "EC:DMC"
            value = [v for v in value.split(":")]
        if isinstance(value, dict):          # {EC: 0.5, DMC: 0.5}
            return [{"name": k, "fraction": v} for k, v in value.items()]
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("concentration_unit", mode="before")
    @classmethod
    def _unit_alias(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _UNIT_ALIASES.get(value.strip().lower(), value)
        return value

    @model_validator(mode="after")
    def _check(self) -> "FormulationSpec":
        if not self.solvents:
            raise ValueError("solvents is empty; give at least one solvent")
        if not (self.temperature_K > 0 and math.isfinite(self.temperature_K)):
            raise ValueError(f"temperature_K = {self.temperature_K} must be > 0 K")
        if self.ratio is not None:
            values = _parse_ratio(self.ratio)
            if len(values) != len(self.solvents):
                raise ValueError(f"ratio {self.ratio!r} has {len(values)} parts for {len(self.solvents)} solvents")
            if any(s.fraction is not None for s in self.solvents):
                raise ValueError("give either ratio or per-solvent fractions, not both")
            total = sum(values)
            for s, v in zip(self.solvents, values):
                s.fraction = v / total
            self.ratio = None           # now spelled as fractions (the same formulation, the same key)
        elif len(self.solvents) == 1 and self.solvents[0].fraction is None:
            self.solvents[0].fraction = 1.0
        missing = [s.text for s in self.solvents if s.fraction is None]
        if missing:
            raise ValueError(f"solvent(s) {missing} have no fraction; give fractions summing to 1 or a ratio like '1:1'")
        total = sum(s.fraction for s in self.solvents)
        if abs(total - 1.0) > FRACTION_TOL:
            parts = " + ".join(f"{s.fraction:g}" for s in self.solvents)
            raise ValueError(f"solvent {self.ratio_basis} fractions {parts} sum to {total:g}, not 1; "
                             "give fractions that sum to 1 or a ratio like '1:1'")
        if self.salt is None:
            if self.concentration not in (None, 0):
                raise ValueError(f"concentration {self.concentration} given without a salt; add salt: LiPF6 (or another)")
        elif self.concentration is None or not (self.concentration > 0 and math.isfinite(self.concentration)):
            raise ValueError(f"salt {self.salt} needs a concentration > 0 ({self.concentration_unit}); "
                             f"got {self.concentration}")
        if self.n_molecules is not None and self.n_atoms is not None:
            raise ValueError("give n_molecules or n_atoms, not both")
        if self.n_molecules is not None and self.n_molecules <= 0:
            raise ValueError(f"n_molecules = {self.n_molecules} must be > 0")
        if self.n_atoms is not None and self.n_atoms <= 0:
            raise ValueError(f"n_atoms = {self.n_atoms} must be > 0")
        if self.n_molecules is None and self.n_atoms is None:
            self.n_atoms = 600
        if self.name is None:
            self.name = default_name(self)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+\-]*", self.name):
            raise ValueError(f"name {self.name!r} may hold only letters, digits and _ . + - (it names a folder)")
        return self

    def key(self) -> str:
        """sha256 of the canonical spec (what decides whether a stored result is still valid)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.key()[:8]}"


def _short(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", text)[:12] or "mol"


def default_name(f: FormulationSpec) -> str:
    solvents = "-".join(_short(Path(s.xyz).stem if s.xyz else (s.name or s.smiles or "")) for s in f.solvents)
    if f.salt is None:
        return solvents
    unit = "M" if f.concentration_unit == "molar" else "m"
    return f"{_short(f.salt)}_{f.concentration:g}{unit}_{solvents}"


class ScreenSpec(BaseModel):
    """A list of formulations plus optional defaults, output folder and database."""

    model_config = ConfigDict(extra="forbid")

    defaults: dict[str, Any] = Field(default_factory=dict)
    formulations: list[FormulationSpec]
    output_dir: str | None = None
    database: str | None = None

    @model_validator(mode="after")
    def _unique(self) -> "ScreenSpec":
        if not self.formulations:
            raise ValueError("formulations is empty; list at least one formulation")
        seen: set[str] = set()
        for f in self.formulations:
            if f.name in seen:
                raise ValueError(f"formulation name {f.name!r} appears twice; names must be unique")
            seen.add(f.name)
        return self


# ------------------------------------------------------------------------------------------ parsing

def _merge(defaults: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for k, v in item.items():
        if k == "protocol" and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _format(exc: ValidationError, source: str, where: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    prefix = f"{source}: {where}"
    if err["type"] == "extra_forbidden":
        field = err["loc"][-1]
        models = {"protocol": ProtocolSpec, "solvents": SolventSpec}
        model = next((m for k, m in models.items() if k in err["loc"][:-1]), FormulationSpec)
        if not where:
            model = ScreenSpec
        return f"{prefix}unknown key {field!r} (accepted: {', '.join(model.model_fields)})"
    if err["type"] == "value_error":
        return f"{prefix}{msg}"
    if err["type"] == "literal_error":
        return f"{prefix}{loc} = {err.get('input')!r} is not accepted; {msg[0].lower() + msg[1:]}"
    if err["type"] == "missing":
        return f"{prefix}missing required key {loc!r}"
    return f"{prefix}{loc} = {err.get('input')!r}: {msg[0].lower() + msg[1:]}"


def formulation_from_dict(data: dict[str, Any], source: str = "spec", index: int | None = None) -> FormulationSpec:
    label = data.get("name") if isinstance(data, dict) else None
    where = f"formulation {label!r}: " if label else (f"formulation #{index + 1}: " if index is not None else "")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where}expected a mapping of settings, got {type(data).__name__}")
    try:
        return FormulationSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source, where)) from None


def spec_from_dict(data: Any, source: str = "spec") -> ScreenSpec:
    """Validate a loaded YAML document into a :class:`ScreenSpec` (ConfigError with one line otherwise)."""
    if isinstance(data, list):
        data = {"formulations": data}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with 'formulations' at the top level, got {type(data).__name__}")
    unknown = sorted(set(data) - set(ScreenSpec.model_fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (accepted: {', '.join(ScreenSpec.model_fields)})")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}: defaults must be a mapping of formulation settings")
    items = data.get("formulations")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{source}: 'formulations' must be a non-empty list of formulations")
    formulations = [formulation_from_dict(_merge(defaults, it) if isinstance(it, dict) else it, source, k)
                    for k, it in enumerate(items)]
    try:
        return ScreenSpec(defaults=defaults, formulations=formulations,
                          output_dir=data.get("output_dir"), database=data.get("database"))
    except ValidationError as exc:
        raise ConfigError(_format(exc, source, "")) from None


def load_spec(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> ScreenSpec:
    """Read a spec YAML file; ``overrides`` (non-None values) replace the settings of every formulation.

    Relative ``xyz`` paths are resolved against the spec file's folder.
    """
    from mlmd.config import read_yaml_mapping

    p = Path(path)
    source = str(p)
    data = read_yaml_mapping(p, "a 'formulations' list")
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    if over:
        data["formulations"] = [_merge(it, over) if isinstance(it, dict) else it for it in (data.get("formulations") or [])]
    for it in data.get("formulations") or []:
        for s in (it.get("solvents") if isinstance(it, dict) else None) or []:
            if isinstance(s, dict) and isinstance(s.get("xyz"), str) and not os.path.isabs(s["xyz"]):
                s["xyz"] = str((p.parent / s["xyz"]).resolve())
    return spec_from_dict(data, source)


def spec_from_flags(**flags: Any) -> ScreenSpec:
    """A one-formulation spec from command-line flags (None values are left at their defaults).

    ``solvents`` is "EC:DMC" (names or SMILES), ``ratio`` "1:1"; protocol keys may be given in ``protocol``.
    """
    data = {k: v for k, v in flags.items() if v is not None}
    if "solvents" not in data:
        raise ConfigError("command line: give a spec file or --solvents (e.g. --solvents EC:DMC --ratio 1:1)")
    if data.get("ratio") is None and isinstance(data["solvents"], str) and ":" in data["solvents"]:
        raise ConfigError("command line: --solvents with several solvents needs --ratio (e.g. --ratio 1:1)")
    return spec_from_dict({"formulations": [data]}, "command line")
