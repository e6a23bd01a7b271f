"""From a formulation spec to molecule counts and a packed periodic box.

Conversions
-----------
- **Solvent ratio -> mole fractions.** mole: x_i ∝ f_i; mass: x_i ∝ f_i / M_i; volume: x_i ∝ f_i ρ_i / M_i.
- **Salt per solvent molecule.** molal (mol per kg of solvent): s = c Σ x_i M_i / 1000.
  molar (mol per litre of solution): s = c V_m / 1000 with the solvent molar volume V_m = Σ x_i M_i / ρ_i (cm³/mol,
  ideal mixing). The salt's own volume is neglected here, so the nominal molarity is slightly high (≈ 3 % for
  1 M LiPF6 in EC:DMC); the property step reports the molarity actually reached, n_salt / (N_A ⟨V⟩), from the NPT
  volume.
- **Counts.** With ``n_molecules`` the solvent counts are round(x_i N); with ``n_atoms`` N is chosen so the total
  atom count is close to the target. The salt count is round(s Σ n_i); zero salt pairs is an error.
- **Packing density** (packmol, then NPT finds the real one): (solvent + salt mass) / solvent volume.

Solvent densities come from :data:`KNOWN_DENSITIES`, copied from ``shared/data/experimental_densities.csv``
(CRC Handbook of Chemistry and Physics and supplier data sheets, ±0.005 g/cm³; EC at 313 K, the others at 298 K;
no temperature correction is applied), or from ``density_g_cm3`` in the spec. A solvent with neither (a SMILES or
XYZ molecule) is assumed to have :data:`ASSUMED_DENSITY` for packing and for molar/volume conversions; the plan
records ``density_source: "assumed"`` and the NPT run then gives its real density.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from mlmd import keys
from mlmd.errors import ConfigError, InputError, UnknownElementError
from mlmd.io import file_sha256
from mlmd.units import G_PER_CM3_PER_AMU_PER_A3
from workflows.screening.spec import FormulationSpec, SolventSpec

#: Avogadro constant (1/mol).
AVOGADRO = 6.02214076e23
#: Pure-solvent densities (g/cm³) and the temperature (K) they were measured at; source:
#: shared/data/experimental_densities.csv (CRC Handbook of Chemistry and Physics and supplier data sheets).
KNOWN_DENSITIES: dict[str, tuple[float, float]] = {
    "EC": (1.321, 313.15),
    "PC": (1.200, 298.15),
    "DMC": (1.063, 298.15),
    "EMC": (1.006, 298.15),
    "DEC": (0.969, 298.15),
    "FEC": (1.454, 298.15),
    "VC": (1.355, 298.15),
    "DME": (0.864, 298.15),
    "DOL": (1.058, 298.15),
}
#: Density assumed for a solvent of unknown density (g/cm³).
ASSUMED_DENSITY = 1.0
#: Residue label of the cation (what the solvation analysis looks for).
LI_LABEL = "Li"


@dataclass
class Component:
    """One kind of molecule in the box. ``symbols``/``positions`` are the template geometry (Å, centred)."""

    label: str
    role: str                    # solvent | cation | anion
    smiles: str | None
    charge: int
    count: int
    mass_amu: float
    symbols: list[str]
    positions: list[list[float]] = field(repr=False)
    density_g_cm3: float | None = None
    density_source: str | None = None   # table | spec | assumed (solvents only)

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)

    def atoms(self) -> Atoms:
        return Atoms(self.symbols, np.asarray(self.positions, dtype=float))


@dataclass
class ModelInfo:
    """What the screening needs to know about a model without building it."""

    name: str
    path: str
    sha256: str
    species: list[int]
    cutoff: float
    mlmd_version: str | None
    model_type: str | None
    uncertainty: bool


@dataclass
class Plan:
    """A validated formulation: spec, counts, densities and model; JSON-serialisable (``asdict``)."""

    name: str
    key: str
    spec: dict[str, Any]
    components: list[Component]
    mole_fractions: dict[str, float]
    n_salt: int
    salt: str | None
    nominal_molarity: float | None      # mol/L, from the solvent densities (salt volume neglected)
    nominal_molality: float | None      # mol/kg solvent
    packing_density_g_cm3: float
    box_length_A: float
    n_atoms: int
    total_mass_amu: float
    model: ModelInfo

    @property
    def formulation(self) -> FormulationSpec:
        return FormulationSpec.model_validate(self.spec)

    def labels(self) -> list[str]:
        """Per-atom species labels in box order."""
        return [c.label for c in self.components for _ in range(c.count) for _ in range(c.n_atoms)]

    def charges(self) -> np.ndarray:
        """Per-atom formal charges: each molecule's charge on its first atom (molecules move as one unit)."""
        out = []
        for c in self.components:
            per = [float(c.charge)] + [0.0] * (c.n_atoms - 1)
            out += per * c.count
        return np.asarray(out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        d = dict(data)
        d["components"] = [Component(**c) for c in d["components"]]
        d["model"] = ModelInfo(**d["model"])
        return cls(**d)


# ------------------------------------------------------------------------------------------ model

@functools.lru_cache(maxsize=16)
def _model_info_cached(name: str, path: str, mtime: float) -> ModelInfo:
    from mlmd.checkpoint import read_checkpoint

    payload = read_checkpoint(path)
    meta = payload["metadata"]
    species = [int(z) for z in meta.get("species") or payload["config"].get("species") or []]
    cutoff = float(meta.get("cutoff") or payload["config"].get("cutoff") or 0.0)
    uncertainty = payload.get("model_type") == "ensemble" or bool(
        meta.get("uncertainty") or meta.get("posterior_samples") or meta.get("ensemble_size"))
    return ModelInfo(name, str(Path(path).resolve()), file_sha256(path), species, cutoff, meta.get("mlmd_version"),
                     payload.get("model_type"), uncertainty)


def model_info(model: str) -> ModelInfo:
    """Resolve a bundled model name or checkpoint path and read its metadata (species, cutoff, checksum)."""
    from mlmd.registry import available_pretrained, resolve_model_path

    path = resolve_model_path(model)
    if not path.is_file():
        if model in available_pretrained():
            raise InputError(f"bundled model {model!r} is not installed (no file at {path}); "
                             "train it first or give a checkpoint path as model")
        raise InputError(f"model {model!r}: no checkpoint file at {path}")
    return _model_info_cached(model, str(path), path.stat().st_mtime)


# ------------------------------------------------------------------------------------------ species

def _read_xyz_molecule(s: SolventSpec, where: str) -> Atoms:
    from ase.io import read

    path = Path(s.xyz)
    if not path.is_file():
        raise InputError(f"{where}solvent xyz file {s.xyz!r} not found; give an existing single-molecule XYZ file")
    try:
        atoms = read(path, index=0)
    except Exception as exc:
        raise InputError(f"{where}cannot read solvent xyz {s.xyz!r} ({type(exc).__name__}); give a plain XYZ file") from None
    if len(atoms) == 0:
        raise InputError(f"{where}solvent xyz {s.xyz!r} holds no atoms")
    bad = sorted({a for a in atoms.get_chemical_symbols()} - set(_ALLOWED))
    if bad:
        raise UnknownElementError(f"{where}solvent xyz {s.xyz!r} contains element(s) {', '.join(bad)}; "
                                  f"accepted elements: {' '.join(_ALLOWED)}")
    atoms.positions -= atoms.get_center_of_mass()
    return atoms


def _allowed() -> tuple[str, ...]:
    from workflows.labelling.species import ALLOWED_ELEMENTS

    return ALLOWED_ELEMENTS


_ALLOWED = _allowed()


def _species_component(text: str, role: str, rng: np.random.Generator, where: str, label: str | None = None):
    from workflows.labelling.species import molecule_atoms, resolve_species

    try:
        sp = resolve_species(text)
    except InputError as exc:
        raise type(exc)(f"{where}{exc}") from None
    atoms = molecule_atoms(sp, rng)
    return sp, atoms


def _solvent_label(sp_name: str, smiles: str, index: int) -> str:
    from workflows.labelling.species import SOLVENTS

    return sp_name if sp_name in SOLVENTS else f"S{index + 1}"


def _component(label, role, smiles, charge, atoms: Atoms, count=0, density=None, source=None) -> Component:
    return Component(label, role, smiles, int(charge), int(count), float(atoms.get_masses().sum()),
                     atoms.get_chemical_symbols(), atoms.positions.round(6).tolist(), density, source)


def plan_formulation(f: FormulationSpec, model: ModelInfo | None = None) -> Plan:
    """Validate the chemistry of ``f`` against the model and work out the box; raises before any MD.

    Checks: unknown solvent names / invalid SMILES / unreadable XYZ, elements outside the model's species, salt
    name, engine availability, box edge ≥ 2 × model cutoff, at least one salt pair.
    """
    where = f"formulation {f.name!r}: "
    rng = np.random.default_rng(f.seed)
    if f.engine != "ase":
        check_engine(f.engine, where)
        if f.calculator:
            raise ConfigError(f"{where}calculator {f.calculator!r} runs only with engine: ase (the openmm engine runs "
                              "the model itself)")
    if f.calculator:
        from workflows.screening.protocol import load_factory

        try:
            load_factory(f.calculator)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None
    solvents: list[Component] = []
    for i, s in enumerate(f.solvents):
        if s.xyz:
            atoms = _read_xyz_molecule(s, where)
            label = "".join(ch for ch in Path(s.xyz).stem if ch.isalnum())[:8] or f"S{i + 1}"
            comp = _component(label, "solvent", None, 0, atoms)
        else:
            sp, atoms = _species_component(s.text, "solvent", rng, where)
            if sp.charge != 0:
                raise InputError(f"{where}solvent {s.text!r} carries charge {sp.charge:+d}; solvents must be neutral "
                                 "(give ions through salt)")
            comp = _component(_solvent_label(sp.name, sp.smiles, i), "solvent", sp.smiles, 0, atoms)
        if s.density_g_cm3 is not None:
            comp.density_g_cm3, comp.density_source = float(s.density_g_cm3), "spec"
        elif comp.label in KNOWN_DENSITIES:
            comp.density_g_cm3, comp.density_source = KNOWN_DENSITIES[comp.label][0], "table"
        else:
            comp.density_g_cm3, comp.density_source = ASSUMED_DENSITY, "assumed"
        solvents.append(comp)
    labels = [c.label for c in solvents]
    if len(set(labels)) != len(labels):
        raise InputError(f"{where}solvent {labels[[labels.count(x) > 1 for x in labels].index(True)]!r} is listed "
                         "twice; list each solvent once")
    ions: list[Component] = []
    if f.salt is not None:
        from workflows.labelling.species import SALTS, resolve_salt

        try:
            cation, anion = resolve_salt(f.salt)
        except InputError as exc:
            raise InputError(f"{where}{exc}") from None
        names = SALTS[next(k for k in SALTS if k.lower() == f.salt.strip().lower())]
        for sp, role, label in ((cation, "cation", names[0]), (anion, "anion", names[1])):
            from workflows.labelling.species import molecule_atoms

            ions.append(_component(label, role, sp.smiles, sp.charge, molecule_atoms(sp, rng)))
    # Elements against the model.
    if model is not None:
        allowed = set(model.species)
        for c in solvents + ions:
            bad = sorted({atomic_numbers[s] for s in c.symbols} - allowed)
            if bad:
                known = " ".join(chemical_symbols[z] for z in sorted(allowed))
                raise UnknownElementError(
                    f"{where}species {c.label!r} contains element(s) {', '.join(chemical_symbols[z] for z in bad)} "
                    f"that model {model.name!r} does not know (its species: {known})")

    # Mole fractions of the solvents.
    frac = np.array([s.fraction for s in f.solvents], dtype=float)
    masses = np.array([c.mass_amu for c in solvents])
    dens = np.array([c.density_g_cm3 for c in solvents])
    if f.ratio_basis == "mole":
        x = frac
    elif f.ratio_basis == "mass":
        x = frac / masses
    else:
        x = frac * dens / masses
    x = x / x.sum()
    m_solv_per_mol = float(x @ masses)                       # g per mol of solvent mixture
    v_solv_per_mol = float(x @ (masses / dens))              # cm³ per mol (ideal mixing)
    if f.salt is None:
        s_per_solvent = 0.0
    elif f.concentration_unit == "molal":
        s_per_solvent = f.concentration * m_solv_per_mol / 1000.0
    else:
        s_per_solvent = f.concentration * v_solv_per_mol / 1000.0
    salt_atoms = sum(c.n_atoms for c in ions)
    if f.n_molecules is not None:
        n_solv = float(f.n_molecules)
    else:
        atoms_per = float(x @ np.array([c.n_atoms for c in solvents])) + s_per_solvent * salt_atoms
        n_solv = f.n_atoms / atoms_per
    counts = np.maximum(1, np.rint(x * n_solv)).astype(int)
    for c, n in zip(solvents, counts):
        c.count = int(n)
    n_salt = 0
    if f.salt is not None:
        exact = s_per_solvent * counts.sum()
        n_salt = int(round(exact))
        if n_salt < 1:
            need = int(math.ceil(0.5 / s_per_solvent))
            raise InputError(f"{where}the box holds {exact:.2f} salt pairs at {f.concentration:g} "
                             f"{'mol/L' if f.concentration_unit == 'molar' else 'mol/kg'}; at least 1 is needed: "
                             f"use at least n_molecules: {need} solvent molecules or a higher concentration")
        for c in ions:
            c.count = n_salt
    comps = solvents + ions
    n_atoms = sum(c.n_atoms * c.count for c in comps)
    total_mass = sum(c.mass_amu * c.count for c in comps)
    solv_mass_g = float(sum(c.mass_amu * c.count for c in solvents)) / AVOGADRO
    solv_vol_cm3 = float(sum(c.mass_amu * c.count / c.density_g_cm3 for c in solvents)) / AVOGADRO
    packing_density = (total_mass / AVOGADRO) / solv_vol_cm3
    length = float((total_mass * G_PER_CM3_PER_AMU_PER_A3 / packing_density) ** (1 / 3))
    if model is not None and length < 2 * model.cutoff:
        need = int(math.ceil(n_atoms * (2 * model.cutoff / length) ** 3 / 10.0) * 10)
        raise InputError(f"{where}box edge {length:.1f} Å ({n_atoms} atoms at ~{packing_density:.2f} g/cm³) is smaller "
                         f"than twice the model cutoff (2 × {model.cutoff:g} Å); use at least n_atoms: {need}")
    molarity = n_salt / AVOGADRO / (solv_vol_cm3 / 1000.0) if f.salt else None
    molality = n_salt / AVOGADRO / (solv_mass_g / 1000.0) if f.salt else None
    return Plan(
        name=f.name, key=f.key(), spec=f.model_dump(mode="json"), components=comps,
        mole_fractions={c.label: float(v) for c, v in zip(solvents, x)}, n_salt=n_salt, salt=f.salt,
        nominal_molarity=molarity, nominal_molality=molality, packing_density_g_cm3=float(packing_density),
        box_length_A=length, n_atoms=int(n_atoms), total_mass_amu=float(total_mass),
        model=model if model is not None else ModelInfo(f.model, "", "", [], 0.0, None, None, False),
    )


def check_engine(engine: str, where: str = "") -> None:
    """ConfigError unless ``engine`` can run here ("ase" always; "openmm" needs openmm and mlmd.openmm.engine)."""
    if engine == "ase":
        return
    try:
        from mlmd.openmm.engine import run_openmm_md  # noqa: F401
        import openmm  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"{where}engine {engine!r} is not available in this installation ({exc}); "
                          "use engine: ase") from None


# ------------------------------------------------------------------------------------------ packing

def pack_box(plan: Plan, seed: int = 0, tolerance: float = 2.0, density_g_cm3: float | None = None) -> Atoms:
    """Pack the plan's molecules with packmol into a periodic cubic box at its packing density.

    Returns Atoms with pbc, per-atom ``mol_id`` and ``species`` labels, ``info['total_charge']`` and
    ``info['composition']``. Molecules are packed whole inside the box and left whole (not wrapped).
    """
    from workflows.boxes import pack_periodic

    rho = density_g_cm3 or plan.packing_density_g_cm3
    length = float((plan.total_mass_amu * G_PER_CM3_PER_AMU_PER_A3 / rho) ** (1 / 3))
    comps = [c for c in plan.components if c.count > 0]
    atoms = pack_periodic([(c.atoms(), c.count) for c in comps], length, seed, tolerance, name=repr(plan.name))
    atoms.arrays["species"] = np.asarray([c.label for c in comps for _ in range(c.count * c.n_atoms)])
    atoms.info[keys.TOTAL_CHARGE] = int(sum(c.charge * c.count for c in comps))
    atoms.info["composition"] = " ".join(f"{c.label}:{c.count}" for c in comps)
    return atoms
