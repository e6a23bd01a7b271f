"""OpenMM integration: the openmmml plugin, topologies, the OpenMM MD engine."""

import os
import subprocess
import sys

import numpy as np
import openmm
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from openmm import app, unit

from mlmd import keys
from mlmd.calculator import MLMDCalculator
from mlmd.checkpoint import save_checkpoint
from mlmd.errors import ConfigError, InputError, UnknownElementError
from mlmd.openmm.plugin import PeriodicityError, SubsetError, find_compute
from mlmd.openmm.topology import atoms_from_topology, mdtraj_topology, openmm_positions, topology_from_atoms
from mlmd.units import KJ_PER_MOL_PER_EV
from potentials.bamboo import BambooPotential
from tests.conftest import periodic_box, water_cluster

SMALL = {"num_features": 16, "num_rbf": 8, "num_layers": 2, "num_heads": 2}
SPECIES = "H Li B C N O F P S"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(1)
    model = BambooPotential(SMALL)
    model.set_reference_energies({1: -0.5, 8: -2.0, 3: -0.3, 9: -1.0}, 0.1)
    return save_checkpoint(model, tmp_path_factory.mktemp("m") / "model.pt")


def _mlpotential(**kwargs):
    from openmmml import MLPotential

    return MLPotential("mlmd", **kwargs)


def _context(system, topology, positions_nm):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    if topology.getPeriodicBoxVectors() is not None:
        context.setPeriodicBoxVectors(*topology.getPeriodicBoxVectors())
    context.setPositions(positions_nm)
    return context


def _energy_forces(context, groups=-1):
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom) / KJ_PER_MOL_PER_EV
    return energy, np.asarray(forces)


def _general_triclinic() -> Atoms:
    """periodic_box() with its cell and positions rotated: a cell OpenMM must rotate back and reduce."""
    atoms = periodic_box(seed=3)
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    if np.linalg.det(rotation) < 0:
        rotation[:, 0] *= -1
    atoms.set_cell(np.asarray(atoms.cell) @ rotation.T, scale_atoms=False)
    atoms.positions = atoms.positions @ rotation.T
    return atoms


# --- agreement with the ASE calculator ---------------------------------------------------------------------

@pytest.mark.parametrize("make", [periodic_box, lambda: water_cluster(4), _general_triclinic],
                         ids=["periodic", "cluster", "rotated-triclinic"])
def test_openmm_energy_and_forces_equal_the_ase_calculator(model_path, make):
    atoms = make()
    atoms.calc = MLMDCalculator(str(model_path), dtype="float64")
    ref_energy, ref_forces = atoms.get_potential_energy(), atoms.get_forces()

    topology = topology_from_atoms(atoms)
    system = _mlpotential(model=str(model_path), dtype="float64").createSystem(topology)
    energy, forces = _energy_forces(_context(system, topology, openmm_positions(atoms)))
    if atoms.pbc.any():  # OpenMM's frame is rotated for a general cell: rotate the forces back
        from mlmd.openmm.topology import reduced_box

        forces = forces @ reduced_box(atoms)[1]
    assert energy == pytest.approx(ref_energy, rel=1e-5)
    assert np.abs(forces - ref_forces).max() <= 1e-5 * np.abs(ref_forces).max()


def test_positions_from_openmm_are_not_reevaluated_between_steps(model_path):
    atoms = water_cluster(3)
    topology = topology_from_atoms(atoms)
    system = _mlpotential(model=str(model_path), dtype="float64").createSystem(topology)
    context = _context(system, topology, openmm_positions(atoms))
    compute = find_compute(system)
    _energy_forces(context)
    _energy_forces(context)
    assert compute.n_evaluations == 1  # a reporter's getState at the same positions costs nothing
    context.getIntegrator().step(3)  # the first step reuses the forces of getState, each other costs one
    assert compute.n_evaluations == 3


# --- entry point ------------------------------------------------------------------------------------------

def test_entry_point_is_found_from_a_clean_interpreter_without_importing_torch(tmp_path):
    code = (
        "import sys, openmmml\n"
        "from openmmml import MLPotential\n"
        "assert 'mlmd' in MLPotential._implFactories, sorted(MLPotential._implFactories)\n"
        "print(type(MLPotential._implFactories['mlmd']).__module__, 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["mlmd.openmm.plugin", "False"]


# --- topology ---------------------------------------------------------------------------------------------

def _electrolyte_like() -> Atoms:
    """Two EC-like and one PF6-like molecules plus Li, with mol_id and composition as build_box writes them."""
    parts = [molecule("CH3COCH3"), molecule("CH3COCH3"), molecule("PF3"), Atoms("Li", positions=[[0, 0, 0]])]
    atoms = Atoms()
    mol_id = []
    for k, part in enumerate(parts):
        part.translate([4.0 * k + 2, 3.0, 3.0])
        atoms += part
        mol_id += [k] * len(part)
    atoms.arrays["mol_id"] = np.array(mol_id)
    atoms.info["composition"] = "EC:2 PF6:1 Li:1"
    atoms.set_cell([18.0, 8.0, 8.0])
    atoms.pbc = True
    return atoms


def test_topology_has_molecules_as_residues_elements_bonds_and_box_and_comes_back():
    atoms = _electrolyte_like()
    top = topology_from_atoms(atoms)
    assert [r.name for r in top.residues()] == ["EC", "EC", "PF6", "LI"]
    assert [len(list(r.atoms())) for r in top.residues()] == [10, 10, 4, 1]
    assert [a.element.atomic_number for a in top.atoms()] == atoms.numbers.tolist()
    assert top.getNumBonds() == 9 + 9 + 3  # acetone has 9 bonds, PF3 three, Li none
    assert all(b[0].residue is b[1].residue for b in top.bonds())
    box = np.array(top.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    assert np.allclose(box, np.diag([1.8, 0.8, 0.8]))
    names = [a.name for a in top.atoms()][:4]
    assert names == ["O1", "C1", "C2", "C3"]

    back = atoms_from_topology(top, openmm_positions(atoms))
    assert np.allclose(back.positions, atoms.positions) and np.allclose(back.cell, atoms.cell)
    assert back.pbc.all() and back.arrays[keys.MOL_ID].tolist() == atoms.arrays["mol_id"].tolist()
    traj_top = mdtraj_topology(atoms)
    assert traj_top.n_residues == 4 and traj_top.n_bonds == 21
    assert atoms_from_topology(traj_top).arrays[keys.MOL_ID].tolist() == atoms.arrays["mol_id"].tolist()


def test_topology_without_mol_id_uses_connected_components_and_ions_stay_alone():
    atoms = _electrolyte_like()
    del atoms.arrays["mol_id"]
    atoms.info.pop("composition")
    atoms.positions[-1] = atoms.positions[0] + [1.9, 0, 0]  # Li next to an oxygen: still its own residue
    top = topology_from_atoms(atoms)
    assert [len(list(r.atoms())) for r in top.residues()] == [10, 10, 4, 1]


# --- mixed ML/MM system ------------------------------------------------------------------------------------

def test_mixed_system_ml_waters_in_tip3p_water(model_path):
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3pfb.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, boxSize=openmm.Vec3(1.4, 1.4, 1.4) * unit.nanometer)
    topology = modeller.topology
    mm_system = forcefield.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=0.6 * unit.nanometer,
                                        constraints=app.HBonds)
    ml_atoms = [a.index for r in list(topology.residues())[:2] for a in r.atoms()]
    mixed = _mlpotential(model=str(model_path), dtype="float64").createMixedSystem(
        topology, mm_system, ml_atoms, forceGroup=1)
    assert mixed.getNumConstraints() == mm_system.getNumConstraints() - 6  # the two ML waters are flexible
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    context = openmm.Context(mixed, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(modeller.positions)
    context.setPeriodicBoxVectors(*topology.getPeriodicBoxVectors())

    ml_energy, ml_forces = _energy_forces(context, groups={1})
    sub = atoms_from_topology(topology, modeller.positions)[ml_atoms]
    sub.calc = MLMDCalculator(str(model_path), dtype="float64")
    assert ml_energy == pytest.approx(sub.get_potential_energy(), rel=1e-8)
    assert np.allclose(ml_forces[ml_atoms], sub.get_forces(), rtol=1e-6, atol=1e-8)
    assert np.abs(ml_forces[len(ml_atoms):]).max() == 0.0  # the ML force acts on the ML atoms only

    integrator.step(5)
    energy, forces = _energy_forces(context)
    assert np.isfinite(energy) and np.isfinite(forces).all()


# --- bad input ---------------------------------------------------------------------------------------------

def test_unknown_model_name_is_rejected_when_the_potential_is_created():
    with pytest.raises(InputError) as err:
        _mlpotential(model="no-such-model")
    assert str(err.value) == ("model 'no-such-model' is neither a bundled model (bamboo-electrolyte) "
                              "nor an existing checkpoint file")


def test_unknown_element_is_rejected_at_system_creation(model_path):
    atoms = Atoms("OHCl", positions=[[0, 0, 0], [0.96, 0, 0], [3, 0, 0]])
    with pytest.raises(UnknownElementError) as err:
        _mlpotential(model=str(model_path)).createSystem(topology_from_atoms(atoms))
    assert str(err.value) == f"element(s) Cl not known to the model (first: atom 2 (Cl1 in residue MOL 2)); it accepts {SPECIES}"


def test_periodicity_mismatches_are_rejected(model_path):
    cluster = topology_from_atoms(water_cluster(2))
    with pytest.raises(PeriodicityError) as err:
        _mlpotential(model=str(model_path), periodic=True).createSystem(cluster)
    assert str(err.value) == ("periodic=True but the topology has no periodic box vectors; "
                              "call topology.setPeriodicBoxVectors(...) or use periodic=None for a cluster")
    with pytest.raises(PeriodicityError, match=r"^periodic=False but the topology has periodic box vectors; "):
        _mlpotential(model=str(model_path)).createSystem(topology_from_atoms(periodic_box()), periodic=False)


def test_model_requiring_a_box_rejects_a_cluster(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(BambooPotential(SMALL), tmp_path / "bulk.pt", metadata={"requires_pbc": True})
    with pytest.raises(PeriodicityError) as err:
        _mlpotential(model=str(path)).createSystem(topology_from_atoms(water_cluster(2)))
    assert str(err.value) == ("the model is for periodic systems only (metadata requires_pbc) but the topology has no "
                              "periodic box vectors; call topology.setPeriodicBoxVectors(...)")


@pytest.mark.parametrize("subset, message", [
    ([], "the ML subset is empty; give at least one atom index in 0..5"),
    ([0, 6], "ML atom index 6 is out of range for a topology of 6 atoms; give indices in 0..5"),
    ([-1], "ML atom index -1 is out of range for a topology of 6 atoms; give indices in 0..5"),
    ([1, 2, 1], "ML atom index 1 appears more than once in the ML subset; list each atom once"),
])
def test_bad_ml_subsets_are_rejected_at_system_creation(model_path, subset, message):
    atoms = water_cluster(2)
    topology = topology_from_atoms(atoms)
    mm_system = openmm.System()
    for _ in range(len(atoms)):
        mm_system.addParticle(1.0)
    potential = _mlpotential(model=str(model_path))
    with pytest.raises(SubsetError) as err:
        potential.createMixedSystem(topology, mm_system, subset)
    assert str(err.value) == message


def test_unknown_option_and_atom_without_element(model_path):
    with pytest.raises(ConfigError) as err:
        _mlpotential(model=str(model_path), precision="double")
    assert str(err.value) == ("unknown option(s) 'precision' for MLPotential('mlmd'); "
                              "accepted: model, dtype, device, skin, total_charge, periodic")
    topology = topology_from_atoms(water_cluster(1))
    residue = next(topology.residues())
    topology.addAtom("EP", None, residue)
    with pytest.raises(InputError) as err:
        _mlpotential(model=str(model_path)).createSystem(topology)
    assert str(err.value) == ("atom 3 (EP in residue MOL 1) has no element; "
                              "the ML atoms must be real atoms, not virtual sites")
