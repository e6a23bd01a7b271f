"""mlmd potentials inside OpenMM through openmmml: ``MLPotential("mlmd", model=...)``.

    from openmmml import MLPotential
    potential = MLPotential("mlmd", model="bamboo-electrolyte")          # bundled name or checkpoint path
    system = potential.createSystem(topology)                            # everything ML
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)   # ML subset, the rest classical

Registered under the entry-point group ``openmmml.potentials`` with the name ``mlmd``, so it is found after
``pip install`` with no further step. Options (to ``MLPotential(...)`` or to ``createSystem``/``createMixedSystem``;
the latter win): ``model``, ``dtype`` ("float32" | "float64"), ``device`` ("cpu", "cuda", ...), ``skin`` (Å, the
neighbour-list skin), ``total_charge`` (e, of the ML atoms; default: the sum of the topology's formal charges when
every ML atom has one, else 0), ``periodic`` (None | True | False).

The force is an ``openmm.PythonForce`` that calls :meth:`mlmd.calculator.MLMDCalculator.evaluate` (same skin
neighbour list and numbers as the ASE path). Units change only here: positions and box nm -> Å, energy eV ->
kJ/mol, forces eV/Å -> kJ/mol/nm. torch is imported when a System is created, not when openmmml is imported.

Periodicity rule: a topology with periodic box vectors gives a periodic ML force (the box is read from the
State at every evaluation, so barostats work); a topology without them is a cluster (no box, no images).
``periodic=True`` — or a model whose metadata says ``"requires_pbc": true`` — with a box-less topology is an
error; ``periodic=False`` with a box is an error too (the ML atoms would see no images).

Every bad input is rejected before any simulation step, with a one-line :class:`mlmd.errors.MLMDError`: an unknown
model name or a bundled model that is not installed (:class:`InputError`, already at ``MLPotential(...)``); at System
creation an element the model does not know
(:class:`mlmd.errors.UnknownElementError`), an atom without element, an empty / out-of-range / repeated ML subset
(:class:`SubsetError`), a periodicity mismatch (:class:`PeriodicityError`), an unknown option (:class:`ConfigError`).

Molecules: the topology's bonds among the ML atoms go into a zero-strength ``HarmonicBondForce``, so OpenMM's Monte
Carlo barostats scale whole molecules (a PythonForce declares no bonds). It adds no energy.

Uncertainty: when the model returns ``forces_std`` (posterior / ensemble wrappers), each evaluation records it;
:func:`find_compute` returns the force's :class:`MLMDForceCompute`, whose ``last_results`` and
:meth:`MLMDForceCompute.take_max_forces_std` give reporters and guards the spread at every step
(:class:`mlmd.openmm.reporters.ForceSpreadReporter` for plain OpenMM scripts).
"""

from __future__ import annotations

import uuid
import weakref
from typing import Any, Iterable

import numpy as np

from mlmd import keys
from mlmd.errors import ConfigError, InputError, UnknownElementError
from mlmd.units import ANGSTROM_PER_NM, KJ_PER_MOL_PER_EV


class MLMDPotentialImplFactory:
    """Creates :class:`MLMDPotentialImpl` objects for ``MLPotential("mlmd", ...)`` (the entry point's target).

    Duck-typed ``openmmml.mlpotential.MLPotentialImplFactory`` and defined before openmmml is imported: importing
    openmmml loads every ``openmmml.potentials`` entry point, this one included, so when this module is imported
    first, openmmml finds the factory in the still-initialising module instead of failing on a circular import.
    """

    def createImpl(self, name: str, **args: Any) -> "MLMDPotentialImpl":
        return MLMDPotentialImpl(name, **args)


from openmmml.mlpotential import MLPotential, MLPotentialImpl  # noqa: E402  (see MLMDPotentialImplFactory)

FORCE_NAME_PREFIX = "mlmd:"
_OPTIONS = ("model", "dtype", "device", "skin", "total_charge", "periodic")
# Options of openmmml's generic embeddings that they pass on to addForces; not ours, ignored.
_EMBEDDING_OPTIONS = ("mlLongRange", "linkAtomDistances")
_DTYPES = ("float32", "float64")
_COMPUTES: "weakref.WeakValueDictionary[str, MLMDForceCompute]" = weakref.WeakValueDictionary()


class SubsetError(InputError):
    """The ML subset of a mixed system is empty, out of range or repeats atoms."""


class PeriodicityError(InputError):
    """The topology's box (or its absence) does not fit what the model or the options ask for."""


def _check_options(args: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(args) - set(_OPTIONS) - set(_EMBEDDING_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(map(repr, unknown))} for MLPotential('mlmd'); "
                          f"accepted: {', '.join(_OPTIONS)}")
    options = {k: v for k, v in args.items() if k in _OPTIONS}
    if "dtype" in options and options["dtype"] not in _DTYPES:
        raise ConfigError(f"dtype {options['dtype']!r} is not supported; use one of {', '.join(_DTYPES)}")
    if options.get("periodic") not in (None, True, False):
        raise ConfigError(f"periodic={options['periodic']!r} is not accepted; use None (follow the topology), True or False")
    if "skin" in options:
        skin = options["skin"]
        if not isinstance(skin, (int, float)) or not np.isfinite(skin) or skin < 0:
            raise ConfigError(f"skin={skin!r} is not accepted; give a non-negative number of Å")
    return options


def _describe(atom) -> str:
    return f"atom {atom.index} ({atom.name} in residue {atom.residue.name} {atom.residue.id})"


def check_subset(atoms: Iterable[int] | None, n_atoms: int) -> list[int] | None:
    """The ML subset as a list of ints; SubsetError when it is empty, out of range or repeats atoms."""
    if atoms is None:
        return None
    subset = list(atoms)
    if not subset:
        raise SubsetError(f"the ML subset is empty; give at least one atom index in 0..{n_atoms - 1}")
    for k in subset:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise SubsetError(f"ML subset entry {k!r} is not an atom index; give integers in 0..{n_atoms - 1}")
        if not 0 <= int(k) < n_atoms:
            raise SubsetError(f"ML atom index {int(k)} is out of range for a topology of {n_atoms} atoms; "
                              f"give indices in 0..{n_atoms - 1}")
    seen: set[int] = set()
    for k in map(int, subset):
        if k in seen:
            raise SubsetError(f"ML atom index {k} appears more than once in the ML subset; list each atom once")
        seen.add(k)
    return [int(k) for k in subset]


class MLMDForceCompute:
    """The PythonForce computation: an OpenMM State in, (energy kJ/mol, forces kJ/mol/nm) out.

    Holds an :class:`mlmd.calculator.MLMDCalculator` and an ASE ``Atoms`` for the ML atoms. The last two results
    are cached by (positions, box), so a reporter's ``getState`` between steps and a rejected Monte Carlo barostat
    move cost no extra model evaluation. ``want_stress = True`` makes the next fresh evaluation compute the stress.
    Pickles as its settings (the model is reloaded from its path), so a System holding it can be serialised when
    the model came from a name or path.
    """

    def __init__(self, spec: dict[str, Any], model: Any = None):
        self.spec = spec
        self._model = model
        self.name = FORCE_NAME_PREFIX + uuid.uuid4().hex
        self._calculator = None
        self._atoms = None
        self._cache: list[tuple[np.ndarray, np.ndarray | None, dict]] = []
        self.last_results: dict[str, Any] = {}
        self.n_evaluations = 0
        self.want_stress = False
        self.last_error: Exception | None = None  # the exception of the last failed evaluation
        self._max_forces_std = float("nan")
        _COMPUTES[self.name] = self

    # -- pickling: settings only ------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A copy (XmlSerializer, copy.deepcopy of the System) reloads the model lazily on its first evaluation.
        # Its force keeps the original's name, so find_compute on the copy finds the original's object.
        self.__init__(state["spec"])

    # -- evaluation --------------------------------------------------------------------------------------
    @property
    def calculator(self):
        if self._calculator is None:
            from ase import Atoms

            from mlmd.calculator import MLMDCalculator

            spec = self.spec
            model = self._model
            if model is None:
                if spec["model"] is None:
                    raise InputError("this mlmd force was copied from a System built with an in-memory model; "
                                     "build it from a model name or checkpoint path to copy or serialise it")
                model = spec["model"]
            self._calculator = MLMDCalculator(model, device=spec["device"], dtype=spec["dtype"], skin=spec["skin"])
            atoms = Atoms(numbers=spec["numbers"], pbc=spec["periodic"])
            atoms.arrays[keys.MOL_ID] = np.asarray(spec["mol_id"], dtype=np.int64)
            atoms.info[keys.TOTAL_CHARGE] = spec["total_charge"]
            self._atoms = atoms
        return self._calculator

    def evaluate(self, positions_A: np.ndarray, cell_A: np.ndarray | None) -> dict[str, Any]:
        """Model results (eV, Å) for positions (n, 3) Å and cell (3, 3) Å (None for a cluster), cached."""
        stress = self.want_stress
        for pos, cell, results in self._cache:
            if (np.array_equal(pos, positions_A) and (cell is None or np.array_equal(cell, cell_A))
                    and (not stress or "stress" in results)):
                self.last_results = results
                return results
        calculator = self.calculator
        atoms = self._atoms
        atoms.positions = positions_A
        if cell_A is not None:
            atoms.set_cell(cell_A)
        results = calculator.evaluate(atoms, stress=stress)
        self.want_stress = False
        self.n_evaluations += 1
        self._cache = [(positions_A.copy(), None if cell_A is None else cell_A.copy(), results)] + self._cache[:1]
        self.last_results = results
        std = results.get(keys.FORCES_STD)
        if std is not None:
            std = np.asarray(std, dtype=np.float64).reshape(len(atoms), -1)
            per_atom = np.linalg.norm(std, axis=1) if std.shape[1] == 3 else std[:, 0]
            value = float(per_atom.max()) if len(per_atom) else 0.0
            if not np.isfinite(value):
                value = float("inf")
            if np.isnan(self._max_forces_std) or value > self._max_forces_std:
                self._max_forces_std = value
        return results

    def take_max_forces_std(self) -> float | None:
        """Largest per-atom force spread (eV/Å) over the evaluations since the last call; None without ensemble."""
        value = self._max_forces_std
        self._max_forces_std = float("nan")
        return None if np.isnan(value) else value

    def __call__(self, state):
        from openmm import unit

        positions = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
        positions = positions * ANGSTROM_PER_NM
        cell = None
        if self.spec["periodic"]:
            cell = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
            cell = cell * ANGSTROM_PER_NM
        try:
            results = self.evaluate(positions, cell)
        except Exception as exc:  # OpenMM re-raises it as an OpenMMException with the message only
            self.last_error = exc
            raise
        energy = results["energy"] * KJ_PER_MOL_PER_EV
        forces = results["forces"] * (KJ_PER_MOL_PER_EV * ANGSTROM_PER_NM)
        return energy, forces


def mlpotential(**options: Any):
    """``openmmml.MLPotential("mlmd", **options)``, registering the factory first if the entry point was not seen
    (stale package metadata on ``sys.path``, e.g. an old ``mlmd.egg-info`` in a source checkout)."""
    if "mlmd" not in MLPotential._implFactories:
        MLPotential.registerImplFactory("mlmd", MLMDPotentialImplFactory())
    return MLPotential("mlmd", **options)


def find_compute(system) -> MLMDForceCompute | None:
    """The :class:`MLMDForceCompute` of the first mlmd force in ``system`` (None if it has none)."""
    for force in system.getForces():
        name = force.getName()
        if name.startswith(FORCE_NAME_PREFIX) and name in _COMPUTES:
            return _COMPUTES[name]
    return None


class MLMDPotentialImpl(MLPotentialImpl):
    """Adds an mlmd potential to an OpenMM System (see the module docstring for options and rules)."""

    def __init__(self, name: str, **args: Any):
        self.name = name
        self.options = {"model": "bamboo-electrolyte", "dtype": "float32", "device": "cpu", "skin": 0.5,
                        "total_charge": None, "periodic": None}
        self.options.update(_check_options(args))
        self._model_cache: dict[tuple, Any] = {}
        self._resolve(self.options["model"])  # unknown names fail here, before any System exists
        self.last_compute: MLMDForceCompute | None = None

    @staticmethod
    def _resolve(model: Any) -> str | None:
        """Checkpoint path of a name/path (InputError when neither); None for an in-memory Potential."""
        if hasattr(model, "forward") and hasattr(model, "species"):
            return None
        if not isinstance(model, (str, bytes)) and not hasattr(model, "__fspath__"):
            raise InputError(f"model={model!r} is not accepted; give a bundled model name, a checkpoint path or a Potential")
        from mlmd.registry import resolve_model_path

        path = resolve_model_path(model)
        if not path.is_file():  # a bundled name whose checkpoint is not installed (not trained yet)
            raise InputError(f"bundled model {str(model)!r} is not installed (no file {path}); "
                             "give a checkpoint path or install the trained model")
        return str(path)

    def _load(self, options: dict[str, Any]):
        model = options["model"]
        path = self._resolve(model)
        if path is None:
            return None, model
        key = (path, options["device"], options["dtype"])
        if key not in self._model_cache:
            import torch

            from mlmd.checkpoint import load_potential

            dtype = {"float32": torch.float32, "float64": torch.float64}[options["dtype"]]
            self._model_cache[key] = load_potential(path, device=options["device"], dtype=dtype)
        return path, self._model_cache[key]

    def getMLLongRange(self) -> bool | None:
        """True when the model adds long-range (PME) electrostatics in periodic boxes; None if unknown."""
        _, model = self._load(self.options)
        config = getattr(model, "config", {}) or {}
        return bool(config["coulomb"]) if "coulomb" in config else None

    def getSupportedEmbeddings(self) -> list[str]:
        # Every generic embedding goes through createMixedSystem below, so the ML subset is checked first
        # (openmmml's embeddings would otherwise fail on a bad index with an unrelated message).
        return sorted(MLPotential._embeddingFactories)

    def createMixedSystem(self, topology, system, atoms, forceGroup, interpolate, embedding, returnInfo=False, **args):
        check_subset(atoms, topology.getNumAtoms())
        _check_options(args)
        factory = MLPotential._embeddingFactories[embedding]
        embedder = factory.createEmbedding(embedding)
        return embedder.createMixedSystem(self, topology, system, list(atoms), forceGroup, interpolate,
                                          returnInfo=returnInfo, **args)

    def addForces(self, topology, system, atoms, forceGroup, **args):
        import openmm

        options = dict(self.options)
        options.update(_check_options(args))
        all_atoms = list(topology.atoms())
        subset = check_subset(atoms, len(all_atoms))
        chosen = all_atoms if subset is None else [all_atoms[k] for k in subset]
        for atom in chosen:
            if atom.element is None:
                raise InputError(f"{_describe(atom)} has no element; the ML atoms must be real atoms, not virtual sites")
        path, model = self._load(options)

        numbers = np.array([atom.element.atomic_number for atom in chosen], dtype=np.int64)
        species = set(int(z) for z in model.species)
        unknown = sorted(set(numbers.tolist()) - species)
        if unknown:
            from ase.data import chemical_symbols

            first = next(atom for atom in chosen if atom.element.atomic_number in unknown)
            names = ", ".join(chemical_symbols[z] for z in unknown)
            accepted = " ".join(chemical_symbols[z] for z in sorted(species))
            raise UnknownElementError(f"element(s) {names} not known to the model (first: {_describe(first)}); "
                                      f"it accepts {accepted}")

        has_box = topology.getPeriodicBoxVectors() is not None
        metadata = getattr(model, "metadata", {}) or {}
        if options["periodic"] is True and not has_box:
            raise PeriodicityError("periodic=True but the topology has no periodic box vectors; "
                                   "call topology.setPeriodicBoxVectors(...) or use periodic=None for a cluster")
        if metadata.get("requires_pbc") and not has_box:
            raise PeriodicityError("the model is for periodic systems only (metadata requires_pbc) but the topology has "
                                   "no periodic box vectors; call topology.setPeriodicBoxVectors(...)")
        if options["periodic"] is False and has_box:
            raise PeriodicityError("periodic=False but the topology has periodic box vectors; "
                                   "remove the box (topology.setPeriodicBoxVectors(None)) or use periodic=None")
        if not has_box and system.usesPeriodicBoundaryConditions():
            raise PeriodicityError("the System is periodic but the topology has no periodic box vectors; "
                                   "give the topology the System's box")
        periodic = has_box

        total_charge = options["total_charge"]
        if total_charge is None:
            formal = [atom.formalCharge for atom in chosen]
            total_charge = int(sum(formal)) if all(q is not None for q in formal) else 0
        try:
            charge_ok = float(total_charge) == round(float(total_charge))
        except (TypeError, ValueError):
            charge_ok = False
        if not charge_ok:
            raise ConfigError(f"total_charge={total_charge!r} is not an integer; give the ML atoms' charge in e")

        spec = {
            "model": path, "dtype": options["dtype"], "device": str(options["device"]), "skin": float(options["skin"]),
            "numbers": numbers.tolist(), "mol_id": [atom.residue.index for atom in chosen],
            "total_charge": int(round(float(total_charge))), "periodic": periodic,
        }
        compute = MLMDForceCompute(spec, model=model)
        _ = compute.calculator  # build the calculator now: construction errors belong to System creation
        force = openmm.PythonForce(compute)
        force.setName(compute.name)
        force.setForceGroup(forceGroup)
        force.setUsesPeriodicBoundaryConditions(periodic)
        if subset is not None:
            force.setParticles(subset)
        system.addForce(force)
        self.last_compute = compute
        _add_molecule_bonds(topology, system, subset, forceGroup)


def _add_molecule_bonds(topology, system, subset: list[int] | None, force_group: int) -> None:
    """A zero-strength HarmonicBondForce over the topology's bonds among the ML atoms.

    OpenMM finds molecules from bonded forces; a PythonForce declares none, so without this a Monte Carlo barostat
    would scale every atom's position separately (stretching covalent bonds on every volume move) instead of
    moving whole molecules. The force adds no energy.
    """
    import openmm

    chosen = None if subset is None else set(subset)
    bonds = [(a.index, b.index) for a, b in topology.bonds()
             if chosen is None or (a.index in chosen and b.index in chosen)]
    if not bonds:
        return
    force = openmm.HarmonicBondForce()
    force.setName(FORCE_NAME_PREFIX + "molecules")
    force.setForceGroup(force_group)
    for a, b in bonds:
        force.addBond(a, b, 0.1, 0.0)
    system.addForce(force)

