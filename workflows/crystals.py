"""Crystal feedback loop: relax generated crystals (cell + positions), check they survive a short NVT run, rank them.

Works with any ASE calculator; GFN1-xTB through tblite is the default for periodic solids. Results go to an ASE
database, one row per candidate (``candidate`` = input index); a rerun skips candidates already in the database, so an
interrupted screen resumes where it stopped.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from mlmd.errors import InputError


@dataclass
class RelaxSettings:
    fmax: float = 0.05  # eV/Å
    max_steps: int = 300
    relax_cell: bool = True
    # A relaxation that changes the volume by more than this factor either way has left the region the potential
    # knows (e.g. carbon squeezed to 12-fold coordination); the candidate is reported and does not survive.
    max_volume_factor: float = 2.0


@dataclass
class MDSettings:
    temperature_K: float = 300.0
    timestep_fs: float = 1.0
    steps: int = 200
    friction_per_fs: float = 0.02
    max_rms_displacement: float = 0.6  # Å, drift removed, against the relaxed positions
    min_distance: float = 0.7  # Å, anywhere along the run
    seed: int = 0


def _single_blas_thread():
    """BLAS threads only spin on the 3x3 cell algebra of the cell filter (25x slower on a busy 2-core machine)."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()


#: Smallest perpendicular width (Å) of the cell a Gamma-point tight-binding calculation sees; small crystal cells
#: are repeated up to it (diamond's 8-atom cell is 1.2 eV/atom off at Gamma only, the 64-atom cell 35 meV/atom).
XTB_MIN_WIDTH = 10.0


def perpendicular_widths(cell) -> np.ndarray:
    """Distances between opposite faces of the cell (3,), Å."""
    cell = np.asarray(cell, float)
    volume = abs(np.linalg.det(cell))
    return np.array([volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)])


class SupercellCalculator(Calculator):
    """Evaluates ``inner`` on the smallest diagonal supercell (of the Minkowski-reduced cell) whose periodic widths
    are all >= ``min_width`` Å and maps the results back: energy / n_images, forces of the first image, the same
    stress. For Gamma-point methods (xTB in tblite), whose small-cell results are wrong without k-points.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, inner, min_width: float = XTB_MIN_WIDTH):
        super().__init__()
        self.inner, self.min_width = inner, float(min_width)

    def repeats(self, atoms) -> tuple[int, int, int]:
        widths = perpendicular_widths(atoms.cell) if atoms.cell.rank == 3 else np.full(3, np.inf)
        return tuple(int(math.ceil(self.min_width / w - 1e-9)) if pbc else 1 for w, pbc in zip(widths, atoms.pbc))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        cell = self.atoms.copy()
        if cell.pbc.all():  # a skewed cell (relaxations make them) would need far more repeats than its reduced form
            from ase.geometry import minkowski_reduce

            cell.set_cell(minkowski_reduce(cell.cell)[0], scale_atoms=False)
            cell.wrap()
        reps = self.repeats(cell)
        n = int(np.prod(reps))
        big = cell.repeat(reps)  # the first len(atoms) atoms are the original cell's, in order
        big.calc = self.inner
        energy = float(big.get_potential_energy()) / n
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": np.asarray(big.get_forces())[: len(self.atoms)].copy()}
        if self.atoms.pbc.all():
            self.results["stress"] = np.asarray(big.get_stress(voigt=True)).copy()


def make_calculator(name: str = "gfn1-xtb", min_width: float = XTB_MIN_WIDTH):
    """``gfn1-xtb`` (default for periodic solids), ``gfn2-xtb`` (tblite, on a supercell at least ``min_width`` Å
    wide), ``emt`` (ASE, for tests), or an mlmd model: a bundled name (e.g. ``bamboo-carbon``) or a checkpoint path."""
    key = name.lower()
    if key in ("gfn1-xtb", "gfn2-xtb"):
        from tblite.ase import TBLite

        return SupercellCalculator(TBLite(method="GFN1-xTB" if key == "gfn1-xtb" else "GFN2-xTB", verbosity=0), min_width)
    if key == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    from mlmd.registry import available_pretrained

    if name in available_pretrained() or Path(name).is_file():
        from mlmd.calculator import MLMDCalculator

        return MLMDCalculator(name)
    raise InputError(f"calculator {name!r} unknown; use gfn1-xtb, gfn2-xtb, emt, a bundled mlmd model "
                     f"({', '.join(available_pretrained()) or 'none installed'}) or a checkpoint path")


def describe_calculator(calc) -> str:
    """A short identity of ``calc`` for provenance: an mlmd model's weights checksum, xTB's method and supercell width."""
    if isinstance(calc, SupercellCalculator):
        inner = getattr(calc.inner, "parameters", {}).get("method", type(calc.inner).__name__)
        return f"{inner} (supercell >= {calc.min_width:g} Å)"
    model = getattr(calc, "model", None)
    if model is not None and hasattr(model, "state_dict"):
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().double().numpy().tobytes())
        return f"mlmd {getattr(model, 'model_type', type(model).__name__)} (weights sha256 {digest.hexdigest()[:12]})"
    return type(calc).__name__


def _to_atoms(crystal):
    from ase import Atoms

    if isinstance(crystal, Atoms):
        return crystal.copy()
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(crystal)


def relax(atoms, calc, settings: RelaxSettings = RelaxSettings()):
    """Relax positions (and the cell with FrechetCellFilter). Returns (atoms, converged, n_steps)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms = atoms.copy()
    atoms.calc = calc
    target = FrechetCellFilter(atoms) if settings.relax_cell else atoms
    opt = FIRE(target, logfile=None)
    with _single_blas_thread():
        converged = bool(opt.run(fmax=settings.fmax, steps=settings.max_steps))
    return atoms, converged, int(opt.nsteps)


def min_distance(atoms) -> float:
    if len(atoms) < 2:
        cell = np.asarray(atoms.cell)
        return float(min(np.linalg.norm(v) for v in cell))
    d = atoms.get_all_distances(mic=True)
    d = d + np.eye(len(atoms)) * 1e9
    return float(d.min())


def nvt_survival(atoms, calc, settings: MDSettings = MDSettings()) -> dict:
    """Short Langevin NVT from the relaxed structure. Intact = no close contacts and small drift-free RMS displacement."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = atoms.copy()
    atoms.calc = calc
    ref = atoms.get_positions().copy()
    rng = np.random.default_rng(settings.seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature_K, rng=rng)
    Stationary(atoms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        dyn = Langevin(atoms, settings.timestep_fs * units.fs, temperature_K=settings.temperature_K,
                       friction=settings.friction_per_fs / units.fs, rng=rng, fixcm=False)
    dmin = [min_distance(atoms)]
    dyn.attach(lambda: dmin.append(min_distance(atoms)), interval=10)
    ok = True
    try:
        with _single_blas_thread():
            dyn.run(settings.steps)
    except Exception:  # noqa: BLE001 - SCF failure / blow-up counts as not surviving
        ok = False
    disp = atoms.get_positions() - ref  # positions are not wrapped by Langevin
    disp -= disp.mean(axis=0)
    rms = float(np.sqrt((disp**2).sum(axis=1).mean()))
    temp = float(atoms.get_temperature())
    intact = ok and math.isfinite(rms) and rms <= settings.max_rms_displacement and min(dmin) >= settings.min_distance
    return {"md_ok": ok, "rms_displacement": rms, "min_distance_md": float(min(dmin)), "final_temperature": temp, "survived": bool(intact)}


def screen_crystals(crystals, db_path: str | os.PathLike, calc=None, relax_settings: RelaxSettings = RelaxSettings(),
                    md_settings: MDSettings = MDSettings(), names: list[str] | None = None, log=None) -> list[dict]:
    """Relax, run NVT and rank ``crystals`` (pymatgen Structures or ase.Atoms; ``None`` entries are skipped and counted).

    Each candidate's row (relaxed atoms + results) is written to the ASE database ``db_path`` as soon as it is done.
    Returns all rows' results, survivors first, ranked by energy per atom.
    """
    from ase.db import connect

    calc = calc if calc is not None else make_calculator("gfn1-xtb")
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    signature = {"calculator": describe_calculator(calc), "relax": asdict(relax_settings), "md": asdict(md_settings)}
    with connect(str(db_path)) as db:
        done = {row.candidate for row in db.select("candidate>=0")}
        previous = db.metadata.get("screen")
        if done and previous is not None and previous != signature:
            changed = sorted(k for k in signature if previous.get(k) != signature[k])
            raise InputError(f"{db_path} holds a screen with another {' and '.join(changed)} "
                             f"({previous.get('calculator')}); resume it with the same settings or use a new database")
        if previous != signature:
            db.metadata = {**db.metadata, "screen": signature}
        for i, crystal in enumerate(crystals):
            if i in done:
                continue
            name = names[i] if names else f"candidate-{i}"
            if crystal is None:
                db.write(_empty_atoms(), candidate=i, name=name, status="unreadable", survived=False)
                continue
            atoms = _to_atoms(crystal)
            row = {"candidate": i, "name": name, "chemical_formula": atoms.get_chemical_formula(mode="hill"), "n_atoms": len(atoms)}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    relaxed, conv, nsteps = relax(atoms, calc, relax_settings)
                    e = float(relaxed.get_potential_energy())
                row.update(status="relaxed", relax_converged=conv, relax_steps=nsteps, relaxed_energy=e, energy_per_atom=e / len(relaxed),
                           volume_per_atom=float(relaxed.get_volume() / len(relaxed)), min_distance=min_distance(relaxed))
                if atoms.pbc.all():
                    row["volume_ratio"] = float(relaxed.get_volume() / atoms.get_volume())
                if not 1 / relax_settings.max_volume_factor <= row.get("volume_ratio", 1.0) <= relax_settings.max_volume_factor:
                    row.update(status="volume collapsed" if row["volume_ratio"] < 1 else "volume exploded", survived=False)
                else:
                    row.update(nvt_survival(relaxed, calc, md_settings))
            except Exception as exc:  # noqa: BLE001 - a failed calculation is a result, not a crash
                relaxed = atoms
                row.update(status=f"failed: {type(exc).__name__}", survived=False)
            relaxed.calc = None
            db.write(relaxed, **row)
            if log:
                log(row)
        rows = [dict(r.key_value_pairs) for r in db.select("candidate>=0")]
    return rank(rows)


def rank(rows: list[dict]) -> list[dict]:
    """Survivors by energy per atom (lowest first), then the rest."""
    surv = sorted([r for r in rows if r.get("survived")], key=lambda r: r["energy_per_atom"])
    rest = sorted([r for r in rows if not r.get("survived")], key=lambda r: r.get("candidate", 0))
    for k, r in enumerate(surv):
        r["rank"] = k + 1
    return surv + rest


def _empty_atoms():
    from ase import Atoms

    return Atoms()
