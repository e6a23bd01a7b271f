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
    # MLPotential("mlmd", ...), robust to stale package metadata in this process; discovery itself is tested from
    # a clean interpreter below.
    from mlmd.openmm.plugin import mlpotential

    return mlpotential(**kwargs)


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


def test_molecules_are_known_to_openmm_so_barostats_scale_whole_molecules(model_path):
    atoms = _electrolyte_like()
    topology = topology_from_atoms(atoms)
    system = _mlpotential(model=str(model_path), dtype="float64").createSystem(topology)
    context = _context(system, topology, openmm_positions(atoms))
    assert sorted(len(m) for m in context.getMolecules()) == [1, 4, 10, 10]
    bonds = next(f for f in system.getForces() if isinstance(f, openmm.HarmonicBondForce))
    stiffness = [bonds.getBondParameters(k)[3].value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2) for k in range(21)]
    assert bonds.getNumBonds() == 21 and not any(stiffness)


def test_system_with_the_mlmd_force_survives_xml_serialisation(model_path):
    atoms = water_cluster(2)
    topology = topology_from_atoms(atoms)
    system = _mlpotential(model=str(model_path), dtype="float64").createSystem(topology)
    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    first, _ = _energy_forces(_context(system, topology, openmm_positions(atoms)))
    second, _ = _energy_forces(_context(copy, topology, openmm_positions(atoms)))
    assert second == first


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

@pytest.fixture(scope="module")
def water_box():
    """A 1.4 nm box of amber14/TIP3P-FB water (PME) and the atoms of its first two waters (the ML subset)."""
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3pfb.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, boxSize=openmm.Vec3(1.4, 1.4, 1.4) * unit.nanometer)
    topology = modeller.topology
    mm_system = forcefield.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=0.6 * unit.nanometer,
                                        constraints=app.HBonds)
    ml_atoms = [a.index for r in list(topology.residues())[:2] for a in r.atoms()]
    return modeller, topology, mm_system, ml_atoms


def test_mixed_system_ml_waters_in_tip3p_water(model_path, water_box):
    modeller, topology, mm_system, ml_atoms = water_box
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


def test_mixed_system_interpolates_between_mm_and_ml(model_path, water_box):
    modeller, topology, mm_system, ml_atoms = water_box
    potential = _mlpotential(model=str(model_path), dtype="float64")
    systems = {"mm": mm_system, "mixed": potential.createMixedSystem(topology, mm_system, ml_atoms),
               "interpolated": potential.createMixedSystem(topology, mm_system, ml_atoms, interpolate=True)}
    energies = {}
    for label, system in systems.items():
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPeriodicBoxVectors(*topology.getPeriodicBoxVectors())
        context.setPositions(modeller.positions)
        for lam in ((0.0, 1.0) if label == "interpolated" else (None,)):
            if lam is not None:
                context.setParameter("lambda_interpolate", lam)
            energies[label, lam] = _energy_forces(context)[0]
    assert energies["interpolated", 1.0] == pytest.approx(energies["mixed", None], rel=1e-10)
    assert energies["interpolated", 0.0] == pytest.approx(energies["mm", None], rel=1e-4)


# --- bad input ---------------------------------------------------------------------------------------------

def test_unknown_model_name_is_rejected_when_the_potential_is_created():
    with pytest.raises(InputError) as err:
        _mlpotential(model="no-such-model")
    assert str(err.value) == ("model 'no-such-model' is neither a bundled model (bamboo-carbon, bamboo-electrolyte, "
                              "bamboo-electrolyte-aligned) "
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


# --- OpenMM MD engine --------------------------------------------------------------------------------------

def _read_rows(path):
    from mlmd.md import read_thermo

    return read_thermo(path)


def test_openmm_nvt_run_writes_the_run_folder_and_thermostats(model_path, tmp_path):
    from mlmd.openmm.engine import run_openmm_md

    atoms = water_cluster(4)
    cfg = {"ensemble": "nvt", "temperature_K": 300, "steps": 40, "timestep_fs": 0.5, "log_interval": 10,
           "trajectory_interval": 20, "checkpoint_interval": 20, "friction_per_fs": 0.05}
    result = run_openmm_md(atoms, str(model_path), cfg, tmp_path / "run", dtype="float64")
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["config.json", "openmm_checkpoint.npz", "openmm_state.csv", "result.json", "thermo.csv",
                     "topology.pdb", "trajectory.dcd", "trajectory.extxyz"]
    rows = _read_rows(tmp_path / "run" / "thermo.csv")
    assert rows["step"].tolist() == [0, 10, 20, 30, 40]
    assert np.isfinite(rows["epot_eV"]).all() and (rows["temperature_K"] > 30).all()
    assert result.n_frames == 3 and result.last_step == 40 and result.atoms.positions.shape == (12, 3)
    import mdtraj

    traj = mdtraj.load(str(tmp_path / "run" / "trajectory.dcd"), top=str(tmp_path / "run" / "topology.pdb"))
    assert traj.n_frames == 3 and traj.topology.n_residues == 4 and traj.topology.n_bonds == 8
    state_rows = (tmp_path / "run" / "openmm_state.csv").read_text().splitlines()
    assert state_rows[0].startswith('#"Step"') and [r.split(",")[0] for r in state_rows[1:]] == ["0", "10", "20", "30", "40"]
    # The potential energy of the last frame is the ASE calculator's at the same positions.
    last = result.atoms.copy()
    last.calc = MLMDCalculator(str(model_path), dtype="float64")
    assert rows["epot_eV"][-1] == pytest.approx(last.get_potential_energy(), rel=1e-8)


def test_openmm_engine_on_a_general_triclinic_cell_starts_from_the_ase_energy(model_path, tmp_path):
    from mlmd.openmm.engine import run_openmm_md

    atoms = _general_triclinic()
    atoms.calc = MLMDCalculator(str(model_path), dtype="float64")
    cfg = {"ensemble": "nvt", "temperature_K": 100, "steps": 10, "timestep_fs": 0.25, "log_interval": 10}
    result = run_openmm_md(atoms, str(model_path), cfg, tmp_path / "run", dtype="float64")
    rows = _read_rows(tmp_path / "run" / "thermo.csv")
    assert rows["epot_eV"][0] == pytest.approx(atoms.get_potential_energy(), rel=1e-9)
    cell = result.atoms.cell.array  # OpenMM's reduced frame: a along x, b in the xy plane
    assert cell[0, 1] == cell[0, 2] == cell[1, 2] == 0.0
    assert result.atoms.get_volume() == pytest.approx(atoms.get_volume(), rel=1e-12)


def test_openmm_log_matches_ase_kinetic_energy_and_pressure(model_path, tmp_path):
    from ase.md.velocitydistribution import Stationary

    from mlmd.openmm.engine import run_openmm_md
    from mlmd.units import BAR_PER_EV_PER_A3

    atoms = periodic_box()
    rng = np.random.default_rng(0)
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(atoms.get_masses())[:, None] * 0.02)
    Stationary(atoms)
    cfg = {"ensemble": "nve", "steps": 10, "timestep_fs": 0.25, "log_interval": 10, "temperature_K": None}
    result = run_openmm_md(atoms, str(model_path), cfg, tmp_path / "run", dtype="float64")
    rows = _read_rows(tmp_path / "run" / "thermo.csv")
    assert rows["ekin_eV"][0] == pytest.approx(atoms.get_kinetic_energy(), rel=1e-8)  # the structure's momenta
    assert rows["etot_eV"][1] == pytest.approx(rows["etot_eV"][0], abs=1e-4)
    final = result.atoms.copy()
    final.calc = MLMDCalculator(str(model_path), dtype="float64")
    assert rows["ekin_eV"][-1] == pytest.approx(final.get_kinetic_energy(), rel=1e-8)
    stress = final.get_stress(voigt=False, include_ideal_gas=True)
    assert rows["pressure_bar"][-1] == pytest.approx(-np.trace(stress) / 3 * BAR_PER_EV_PER_A3, rel=1e-7)
    assert rows["pxy_bar"][-1] == pytest.approx(-stress[0, 1] * BAR_PER_EV_PER_A3, rel=1e-7)


def test_openmm_restart_from_its_checkpoint_continues_the_same_trajectory(model_path, tmp_path):
    from mlmd.openmm.engine import run_openmm_md

    atoms = periodic_box()
    cfg = {"ensemble": "npt", "temperature_K": 100, "steps": 100, "timestep_fs": 0.25, "log_interval": 10,
           "trajectory_interval": 20, "checkpoint_interval": 30}
    full = run_openmm_md(atoms, str(model_path), cfg, tmp_path / "full", dtype="float64")
    run_openmm_md(atoms, str(model_path), dict(cfg, steps=40), tmp_path / "split", dtype="float64")
    # Step 40 is no multiple of the barostat interval (25): its moves must still come at steps 50, 75, 100.
    resumed = run_openmm_md(atoms, str(model_path), cfg, tmp_path / "split", dtype="float64", restart=True)
    a, b = _read_rows(tmp_path / "full" / "thermo.csv"), _read_rows(tmp_path / "split" / "thermo.csv")
    assert b["step"].tolist() == a["step"].tolist() == list(range(0, 101, 10))
    assert len(set(a["volume_A3"])) > 1  # the barostat moved
    # Equal to rounding: the skin neighbour list is rebuilt at the restart, which changes the summation order.
    assert np.allclose(a["epot_eV"], b["epot_eV"], rtol=1e-9, atol=0) and np.array_equal(a["volume_A3"], b["volume_A3"])
    assert resumed.first_step == 40 and resumed.n_frames == full.n_frames == 6
    assert np.abs(resumed.atoms.positions - full.atoms.positions).max() < 1e-9
    with pytest.raises(ConfigError, match=r"checkpoint was written by integrator 'openmm-langevin-middle\+mc-isotropic' "
                                          r"but the config asks for 'openmm-langevin-middle'"):
        run_openmm_md(atoms, str(model_path), dict(cfg, ensemble="nvt", steps=120), tmp_path / "split", restart=True)
    with pytest.raises(InputError, match=r"already holds a run \(openmm_checkpoint.npz\)"):
        run_openmm_md(atoms, str(model_path), cfg, tmp_path / "split")


def test_openmm_restart_after_a_crash_cuts_the_outputs_back_to_the_checkpoint(model_path, tmp_path):
    import shutil

    import mdtraj

    from mlmd.openmm.engine import run_openmm_md

    atoms = water_cluster(3)
    cfg = {"ensemble": "nvt", "temperature_K": 100, "steps": 60, "timestep_fs": 0.25, "log_interval": 10,
           "trajectory_interval": 10, "checkpoint_interval": 30}
    run_openmm_md(atoms, str(model_path), cfg, tmp_path / "full", dtype="float64")
    run = tmp_path / "crashed"
    run_openmm_md(atoms, str(model_path), dict(cfg, steps=30), run, dtype="float64")
    shutil.copy(run / "openmm_checkpoint.npz", tmp_path / "step30.npz")
    run_openmm_md(atoms, str(model_path), dict(cfg, steps=50), run, dtype="float64", restart=True)
    shutil.copy(tmp_path / "step30.npz", run / "openmm_checkpoint.npz")  # a crash after step 50, before its checkpoint
    (run / "result.json").unlink()
    run_openmm_md(atoms, str(model_path), cfg, run, dtype="float64", restart=True)
    a, b = _read_rows(tmp_path / "full" / "thermo.csv"), _read_rows(run / "thermo.csv")
    assert b["step"].tolist() == list(range(0, 61, 10))
    assert np.allclose(a["epot_eV"], b["epot_eV"], rtol=1e-9, atol=0)
    state_steps = [line.split(",")[0] for line in (run / "openmm_state.csv").read_text().splitlines()[1:]]
    assert state_steps == [str(k) for k in range(0, 61, 10)]
    full = mdtraj.load(str(tmp_path / "full" / "trajectory.dcd"), top=str(tmp_path / "full" / "topology.pdb"))
    split = mdtraj.load(str(run / "trajectory.dcd"), top=str(run / "topology.pdb"))
    assert split.n_frames == full.n_frames == 7 and np.abs(split.xyz - full.xyz).max() < 1e-6


class _FakeEnsemble(torch.nn.Module):
    """A 'posterior' whose force spread grows with the distance the atoms moved from the start (Å)."""

    def __init__(self, inner, start):
        super().__init__()
        self.inner = inner
        self.start = torch.as_tensor(start)
        self.config = inner.config

    @property
    def species(self):
        return self.inner.species

    @property
    def cutoff(self):
        return self.inner.cutoff

    def forward(self, graph, compute_forces=True, compute_stress=False):
        out = self.inner(graph, compute_forces=compute_forces, compute_stress=compute_stress)
        moved = (graph.positions.detach() - self.start.to(graph.positions)).norm(dim=1, keepdim=True)
        out[keys.FORCES_STD] = 2.0 * moved.expand(-1, 3) / np.sqrt(3)
        return out


def test_force_spread_is_exposed_per_step_and_guarded(model_path, tmp_path):
    from mlmd.checkpoint import load_potential
    from mlmd.errors import SimulationError
    from mlmd.openmm.engine import run_openmm_md

    atoms = water_cluster(3)
    model = _FakeEnsemble(load_potential(str(model_path), dtype=torch.float64), atoms.positions)
    cfg = {"ensemble": "nvt", "temperature_K": 300, "steps": 400, "timestep_fs": 0.25, "log_interval": 10,
           "guards": {"interval": 5, "max_forces_std_eV_A": 0.5}}
    with pytest.raises(SimulationError) as err:
        run_openmm_md(atoms, model, cfg, tmp_path / "run", dtype="float64")
    message = str(err.value)
    assert message.startswith("guard 'forces_std' tripped at step ") and "exceeds 0.5 eV/Å" in message
    assert (tmp_path / "run" / "last_good.extxyz").exists()
    spread = np.atleast_2d(np.loadtxt(tmp_path / "run" / "openmm_uncertainty.csv", delimiter=",", skiprows=1))
    assert len(spread) >= 2, message
    assert spread[0, 1] < 1e-12 and (np.diff(spread[:, 1]) > 0).all() and spread[-1, 1] <= 0.5


def test_ensemble_checkpoint_spread_reaches_the_openmm_engine(tmp_path):
    from potentials.ensemble import EnsemblePotential

    from mlmd.openmm.engine import run_openmm_md

    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        members.append(BambooPotential(SMALL))
    path = save_checkpoint(EnsemblePotential.from_members(members), tmp_path / "ensemble.pt")
    atoms = water_cluster(2)
    atoms.calc = MLMDCalculator(str(path), dtype="float64")
    atoms.get_forces()
    expected = np.linalg.norm(atoms.calc.results[keys.FORCES_STD], axis=1).max()
    cfg = {"ensemble": "nvt", "temperature_K": 100, "steps": 20, "timestep_fs": 0.25, "log_interval": 10,
           "guards": {"interval": 10}}
    run_openmm_md(atoms, str(path), cfg, tmp_path / "run", dtype="float64")
    spread = np.loadtxt(tmp_path / "run" / "openmm_uncertainty.csv", delimiter=",", skiprows=1)
    assert spread[:, 0].tolist() == [0, 10, 20]
    assert spread[0, 1] == pytest.approx(expected, rel=1e-5) and (spread[:, 1] > 0).all()


def test_force_spread_reporter_in_a_plain_openmm_simulation(model_path, tmp_path):
    from mlmd.checkpoint import load_potential
    from mlmd.errors import SimulationError
    from mlmd.openmm.reporters import ForceSpreadReporter

    atoms = water_cluster(3)
    model = _FakeEnsemble(load_potential(str(model_path), dtype=torch.float64), atoms.positions)
    topology = topology_from_atoms(atoms)
    system = _mlpotential(model=model, dtype="float64").createSystem(topology)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 10 / unit.picosecond, 0.25 * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    simulation = app.Simulation(topology, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(openmm_positions(atoms))
    simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    reporter = ForceSpreadReporter(str(tmp_path / "spread.csv"), 5, max_forces_std=0.5)
    simulation.reporters.append(reporter)
    with pytest.raises(SimulationError, match=r"^guard 'forces_std' tripped at step \d+: force uncertainty "):
        simulation.step(400)
    reporter.close()
    spread = np.loadtxt(tmp_path / "spread.csv", delimiter=",", skiprows=1)
    assert spread[0, 0] == 5 and (np.diff(spread[:, 1]) > 0).all() and spread[-1, 1] > 0.5 >= spread[-2, 1]


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_engine_reports_the_model_s_input_error_at_the_start_and_writes_nothing(model_path, tmp_path, ensemble):
    from mlmd.openmm.engine import run_openmm_md

    atoms = water_cluster(2)
    atoms.positions[4] = atoms.positions[0] + [0.45, 0, 0]  # the guard allows 0.3 Å, the model rejects < 0.5 Å
    cfg = {"ensemble": ensemble, "temperature_K": 100, "steps": 10, "guards": {"min_distance_A": 0.3}}
    with pytest.raises(InputError) as err:
        run_openmm_md(atoms, str(model_path), cfg, tmp_path / "run")
    assert str(err.value) == "atoms 0 and 4 are 0.450 Å apart; atoms closer than 0.5 Å are rejected"
    assert not (tmp_path / "run").exists()


def test_cli_engine_openmm(model_path, tmp_path, capsys):
    import ase.io

    from workflows.cli import main

    ase.io.write(tmp_path / "w.extxyz", water_cluster(2))
    rc = main(["md", str(tmp_path / "w.extxyz"), "--model", str(model_path), "--engine", "openmm", "--steps", "10",
               "--log-interval", "5", "--out", str(tmp_path / "run"), "--no-progress", "--dtype", "float64"])
    out = capsys.readouterr()
    assert rc in (0, None), out.err
    assert "md: steps 0 -> 10" in out.out and (tmp_path / "run" / "openmm_checkpoint.npz").exists()
    rc = main(["md", str(tmp_path / "w.extxyz"), "--model", str(model_path), "--engine", "openmm", "--steps", "20",
               "--out", str(tmp_path / "run"), "--no-progress", "--restart"])
    assert rc in (0, None) and "md: steps 10 -> 20" in capsys.readouterr().out
    rc = main(["md", "--model", str(model_path), "--engine", "openmm", "--steps", "30", "--out", str(tmp_path / "run"),
               "--no-progress", "--restart"])  # the structure from the run's own trajectory
    assert rc in (0, None) and "md: steps 20 -> 30" in capsys.readouterr().out
    rc = main(["md", str(tmp_path / "w.extxyz"), "--calculator", "ase.calculators.emt:EMT", "--engine", "openmm",
               "--out", str(tmp_path / "r2")])
    assert rc == 2 and capsys.readouterr().err == (
        "error: --engine openmm runs an mlmd potential: give --model NAME_OR_PATH (--calculator needs --engine ase)\n")
    rc = main(["md", str(tmp_path / "w.extxyz"), "--model", str(model_path), "--engine", "gromacs",
               "--out", str(tmp_path / "r3")])
    assert rc == 2 and capsys.readouterr().err == "error: --engine 'gromacs' is not accepted; use ase or openmm\n"
    rc = main(["md", str(tmp_path / "w.extxyz"), "--model", str(model_path), "--engine", "openmm",
               "--thermostat", "bussi", "--out", str(tmp_path / "r4")])
    assert rc == 2 and capsys.readouterr().err == (
        "error: thermostat 'bussi' is not available with the openmm engine; use langevin or nose_hoover (or --engine ase)\n")
