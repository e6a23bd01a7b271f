import numpy as np
import pytest
import torch
from ase import Atoms

from mlmd import MLMDCalculator
from mlmd.checkpoint import load_potential, save_checkpoint
from mlmd.errors import CheckpointError, InputError
from potentials.bamboo import BambooPotential
from tests.conftest import periodic_box, water_cluster

SMALL = {"num_features": 16, "num_rbf": 8, "num_layers": 2, "num_heads": 2}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(1)
    model = BambooPotential(SMALL)
    model.set_reference_energies({1: -0.5, 8: -2.0, 3: -0.3, 9: -1.0}, 0.1)
    return save_checkpoint(model, tmp_path_factory.mktemp("m") / "model.pt")


def test_results_match_direct_model_and_stress_is_strain_derivative(model_path):
    atoms = periodic_box()
    atoms.calc = MLMDCalculator(str(model_path), dtype="float64")
    energy = atoms.get_potential_energy()
    assert atoms.get_potential_energies().sum() == pytest.approx(energy, rel=1e-10)
    assert atoms.get_charges().sum() == pytest.approx(0.0, abs=1e-10)
    stress = atoms.get_stress(voigt=False)
    h = 1e-5
    strained = []
    for sign in (1, -1):
        other = atoms.copy()
        other.calc = MLMDCalculator(str(model_path), dtype="float64")
        deformation = np.eye(3)
        deformation[0, 1] = deformation[1, 0] = sign * h / 2
        other.set_cell(np.asarray(atoms.cell) @ deformation, scale_atoms=True)
        strained.append(other.get_potential_energy())
    assert (strained[0] - strained[1]) / (2 * h) / atoms.get_volume() == pytest.approx(stress[0, 1], rel=1e-4, abs=1e-8)


def test_skin_reuse_gives_the_same_forces_as_a_fresh_list(model_path):
    atoms = water_cluster(4)
    reused = MLMDCalculator(str(model_path), dtype="float64", skin=1.0)
    atoms.calc = reused
    atoms.get_forces()
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    forces = atoms.get_forces()
    assert reused._list is not None and not np.array_equal(reused._list[0], atoms.positions)  # list was reused
    fresh = atoms.copy()
    fresh.calc = MLMDCalculator(str(model_path), dtype="float64", skin=0.0)
    assert np.allclose(forces, fresh.get_forces(), atol=1e-10)


def test_float32_and_float64_agree(model_path):
    atoms = water_cluster(3)
    atoms.calc = MLMDCalculator(str(model_path), dtype="float32")
    f32 = atoms.get_forces()
    atoms.calc = MLMDCalculator(str(model_path), dtype="float64")
    assert np.allclose(f32, atoms.get_forces(), atol=1e-4)


def test_bad_inputs_are_rejected(model_path, tmp_path):
    calc = MLMDCalculator(str(model_path))
    with pytest.raises(InputError, match="element\\(s\\) Cu not known to the model; it accepts H Li B C N O F P S"):
        calc.get_potential_energy(Atoms("CuO", positions=[[0, 0, 0], [2, 0, 0]]))
    with pytest.raises(InputError, match="are 0.200 Å apart"):
        MLMDCalculator(str(model_path)).get_potential_energy(Atoms("OH", positions=[[0, 0, 0], [0.2, 0, 0]]))
    nan = water_cluster(1)
    nan.positions[0, 0] = np.nan
    with pytest.raises(InputError, match="non-finite position"):
        MLMDCalculator(str(model_path)).get_potential_energy(nan)
    with pytest.raises(InputError, match="dtype 'float16' is not supported"):
        MLMDCalculator(str(model_path), dtype="float16")
    with pytest.raises(InputError, match="neither a bundled model"):
        MLMDCalculator("no-such-model")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(model_path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="is not a readable mlmd checkpoint"):
        load_potential(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="is not an mlmd checkpoint"):
        load_potential(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save(BambooPotential(SMALL), pickled)  # a whole pickled module must not load
    with pytest.raises(CheckpointError):
        load_potential(pickled)


def test_fifty_steps_of_md_with_the_calculator_and_restart_continuity(model_path, tmp_path):
    from mlmd.md.config import make_config
    from mlmd.md.engine import run_md

    atoms = water_cluster(3)
    calc = MLMDCalculator(str(model_path), dtype="float64")
    full = run_md(atoms, calc, make_config({"ensemble": "nve", "steps": 50, "temperature_K": 300, "timestep_fs": 0.5,
                                            "checkpoint_interval": 25, "log_interval": 5}), tmp_path / "full")
    assert full.last_step == 50
    epot = full.atoms.get_potential_energy()
    etot = epot + full.atoms.get_kinetic_energy()
    assert np.isfinite(etot)
    half = run_md(atoms, calc, make_config({"ensemble": "nve", "steps": 25, "temperature_K": 300, "timestep_fs": 0.5,
                                            "checkpoint_interval": 25, "log_interval": 5}), tmp_path / "half")
    resumed = run_md(atoms, MLMDCalculator(str(model_path), dtype="float64"),
                     make_config({"ensemble": "nve", "steps": 50, "temperature_K": 300, "timestep_fs": 0.5,
                                  "checkpoint_interval": 25, "log_interval": 5}), tmp_path / "half", restart=True)
    assert half.last_step == 25 and resumed.last_step == 50
    assert np.allclose(resumed.atoms.positions, full.atoms.positions, atol=1e-9)


def test_periodic_force_call_also_fills_stress_so_barostats_need_no_second_pass(model_path):
    atoms = periodic_box()
    calc = MLMDCalculator(str(model_path))
    atoms.calc = calc
    atoms.get_forces()
    assert "stress" in calc.results
    calls = []
    original = calc.model.forward
    calc.model.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    atoms.get_stress()
    assert calls == []


def test_skin_list_is_kept_through_small_cell_changes_and_rebuilt_after_large_ones(model_path):
    atoms = periodic_box()
    calc = MLMDCalculator(str(model_path), dtype="float64", skin=1.0)
    atoms.calc = calc
    atoms.get_forces()
    built_at = calc._list[0].copy()
    dispersion_built_at = calc.model.dispersion._cache[0].copy()
    atoms.set_cell(atoms.cell * 1.002, scale_atoms=True)  # an NPT-sized step
    atoms.positions += np.random.default_rng(1).normal(scale=0.02, size=atoms.positions.shape)
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.array_equal(calc._list[0], built_at)  # both lists were reused
    assert np.array_equal(calc.model.dispersion._cache[0], dispersion_built_at)
    fresh = atoms.copy()
    fresh.calc = MLMDCalculator(str(model_path), dtype="float64", skin=0.0)
    assert np.allclose(forces, fresh.get_forces(), atol=1e-10)
    assert np.allclose(stress, fresh.get_stress(), atol=1e-12)
    atoms.set_cell(atoms.cell * 1.2, scale_atoms=True)  # (cutoff + skin) x 20 % strain > skin
    atoms.get_forces()
    assert not np.array_equal(calc._list[0], built_at)  # rebuilt


def test_a_kept_skin_list_holds_every_pair_within_the_cutoff():
    from mlmd.neighbors import neighbor_list, skin_list_valid

    rng = np.random.default_rng(0)
    cutoff, skin = 3.0, 0.6
    kept = 0
    for trial in range(40):
        cell = np.diag([7.0, 8.0, 7.5]) + rng.normal(scale=0.5, size=(3, 3))
        positions = rng.random((40, 3)) @ cell
        strain = rng.normal(scale=0.01 * rng.random(), size=(3, 3))
        new_cell = cell @ (np.eye(3) + strain)
        new_positions = positions @ (np.eye(3) + strain) + rng.normal(scale=0.1 * rng.random(), size=positions.shape)
        if not skin_list_valid(positions, cell, new_positions, new_cell, np.ones(3, bool), cutoff, skin):
            continue
        kept += 1
        old = set(zip(*(map(tuple, a) if a.ndim > 1 else a for a in neighbor_list(positions, cell, np.ones(3, bool), cutoff + skin))))
        new = set(zip(*(map(tuple, a) if a.ndim > 1 else a for a in neighbor_list(new_positions, new_cell, np.ones(3, bool), cutoff))))
        assert new <= old, f"trial {trial}: pairs within the cutoff missing from the kept list"
    assert 5 < kept < 40  # the criterion both keeps and rejects lists here


def test_charge_option_sets_the_total_charge_like_the_info_key(model_path):
    cluster = water_cluster(3)
    charged = cluster.copy()
    charged.info["total_charge"] = 1
    by_info = MLMDCalculator(model_path, dtype="float64")
    by_option = MLMDCalculator(model_path, dtype="float64", charge=1)
    charged.calc, cluster.calc = by_info, by_option
    assert cluster.get_charges().sum() == pytest.approx(1.0, abs=1e-9)
    assert cluster.get_potential_energy() == pytest.approx(charged.get_potential_energy(), abs=1e-9)
    neutral = water_cluster(3)
    neutral.calc = MLMDCalculator(model_path, dtype="float64")
    assert abs(neutral.get_potential_energy() - cluster.get_potential_energy()) > 1e-3
    with pytest.raises(InputError, match="not an integer"):
        MLMDCalculator(model_path, charge=0.5)
