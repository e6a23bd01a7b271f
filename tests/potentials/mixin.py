"""Shared tests every mlmd potential must pass. Subclass and implement ``make_model`` (float64, eval mode)."""

import numpy as np
import pytest
import torch
from ase.build import make_supercell
from scipy.spatial.transform import Rotation

from mlmd import keys
from mlmd.checkpoint import load_potential, save_checkpoint
from mlmd.graph import collate, graph_from_atoms
from tests.conftest import periodic_box, water_cluster


def evaluate(model, atoms, stress=False):
    graph = graph_from_atoms(atoms, model.cutoff, model.species).to(dtype=torch.float64)
    out = model(graph, compute_forces=True, compute_stress=stress)
    return {k: v.detach() for k, v in out.items()}


class PotentialTests:
    # Mesh-based long-range terms (PME) are invariant only up to their discretisation error.
    periodic_energy_atol = 1e-9
    periodic_force_atol = 1e-8
    # Central-difference step (Å); stiff short-range terms need a smaller one (error ~ h^2 E'''/6).
    finite_difference_step = 1e-4

    def make_model(self):
        raise NotImplementedError

    @pytest.fixture
    def model(self):
        torch.manual_seed(0)
        return self.make_model().double().eval()

    @pytest.mark.parametrize("periodic", [False, True])
    def test_rotation_translation_invariance(self, model, periodic):
        atoms = periodic_box() if periodic else water_cluster(4)
        ref = evaluate(model, atoms, stress=periodic)
        rotation = Rotation.random(random_state=3).as_matrix()
        moved = atoms.copy()
        moved.positions = atoms.positions @ rotation.T + np.array([0.7, -1.3, 2.1])
        if periodic:
            moved.set_cell(np.asarray(atoms.cell) @ rotation.T, scale_atoms=False)
        out = evaluate(model, moved, stress=periodic)
        e_tol, f_tol = (self.periodic_energy_atol, self.periodic_force_atol) if periodic else (1e-9, 1e-8)
        assert torch.allclose(out[keys.ENERGY], ref[keys.ENERGY], atol=e_tol, rtol=0)
        R = torch.tensor(rotation)
        assert torch.allclose(out[keys.FORCES], ref[keys.FORCES] @ R.T, atol=f_tol)
        if periodic:
            s_tol = f_tol / atoms.get_volume() ** (1 / 3)
            assert torch.allclose(out[keys.STRESS][0], R @ ref[keys.STRESS][0] @ R.T, atol=s_tol)

    def test_permutation_equivariance(self, model):
        atoms = water_cluster(3)
        order = np.random.default_rng(0).permutation(len(atoms))
        ref, out = evaluate(model, atoms), evaluate(model, atoms[order])
        assert torch.allclose(out[keys.ENERGY], ref[keys.ENERGY], atol=1e-10)
        assert torch.allclose(out[keys.FORCES], ref[keys.FORCES][order], atol=1e-9)

    @pytest.mark.parametrize("periodic", [False, True])
    def test_forces_are_minus_energy_gradient(self, model, periodic):
        atoms = periodic_box() if periodic else water_cluster(3)
        forces = evaluate(model, atoms)[keys.FORCES].numpy()
        h = self.finite_difference_step
        for atom, axis in [(0, 0), (2, 1), (len(atoms) - 1, 2)]:
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            numeric = -(evaluate(model, plus)[keys.ENERGY] - evaluate(model, minus)[keys.ENERGY]).item() / (2 * h)
            assert numeric == pytest.approx(forces[atom, axis], abs=1e-6, rel=1e-5)

    def test_stress_is_strain_derivative(self, model):
        atoms = periodic_box()
        stress = evaluate(model, atoms, stress=True)[keys.STRESS][0].numpy()
        volume = atoms.get_volume()
        h = 1e-5
        for a, b in [(0, 0), (1, 2), (0, 1)]:
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * h / 2
                strain[b, a] += sign * h / 2
                strained = atoms.copy()
                strained.set_cell(np.asarray(atoms.cell) @ strain, scale_atoms=True)
                energies.append(evaluate(model, strained)[keys.ENERGY].item())
            numeric = (energies[0] - energies[1]) / (2 * h) / volume
            assert numeric == pytest.approx(stress[a, b], abs=1e-7, rel=1e-4)

    def test_batch_equals_single(self, model):
        structures = [water_cluster(2), periodic_box(seed=2), water_cluster(3, seed=4)]
        structures[2].info[keys.TOTAL_CHARGE] = 0
        graphs = [graph_from_atoms(a, model.cutoff, model.species).to(dtype=torch.float64) for a in structures]
        batched = model(collate(graphs), compute_forces=True)
        singles = [evaluate(model, a) for a in structures]
        assert torch.allclose(batched[keys.ENERGY].detach(), torch.cat([s[keys.ENERGY] for s in singles]), atol=1e-9)
        assert torch.allclose(batched[keys.FORCES].detach(), torch.cat([s[keys.FORCES] for s in singles]), atol=1e-9)

    def test_supercell_energy_is_extensive(self, model):
        atoms = periodic_box()
        supercell = make_supercell(atoms, 2 * np.eye(3))
        e1 = evaluate(model, atoms)[keys.ENERGY].item()
        e8 = evaluate(model, supercell)[keys.ENERGY].item()
        assert e8 == pytest.approx(8 * e1, rel=1e-7, abs=8 * self.periodic_energy_atol + 1e-8)

    def test_total_charge_is_conserved(self, model):
        for charge in (0, 1, -1):
            atoms = water_cluster(3)
            atoms.info[keys.TOTAL_CHARGE] = charge
            out = evaluate(model, atoms)
            if keys.CHARGES in out:
                assert out[keys.CHARGES].sum().item() == pytest.approx(charge, abs=1e-10)

    def test_save_load_round_trip(self, model, tmp_path):
        path = save_checkpoint(model, tmp_path / "model.pt", metadata={"note": "test"})
        loaded = load_potential(path, dtype=torch.float64)
        atoms = water_cluster(2)
        assert torch.equal(evaluate(model, atoms)[keys.ENERGY], evaluate(loaded, atoms)[keys.ENERGY])
        assert loaded.metadata["note"] == "test" and loaded.metadata["species"] == model.species
