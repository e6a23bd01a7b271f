import numpy as np
import pytest
import torch

from mlmd.data import make_sample
from mlmd.errors import InputError
from potentials.alignment import (AlignmentSettings, LiquidFrames, align_energy_head, molecular_offsets,
                                  molecular_pressures_bar)
from potentials.bamboo import BambooPotential
from mlmd.units import BAR_PER_EV_PER_A3, KB_EV_PER_K
from tests.conftest import periodic_box, water_cluster
from tests.potentials.test_bamboo import SMALL

MODEL = {**SMALL, "coulomb": False}


def _with_molecules(atoms):
    # periodic_box adds whole LiF / H2O fragments one after another: split at the fragment boundaries.
    sizes, k = [], 0
    while k < len(atoms):
        n = 2 if atoms.numbers[k] == 3 else 3
        sizes.append(n)
        k += n
    atoms.arrays["mol_id"] = np.repeat(np.arange(len(sizes)), sizes)
    return atoms


def _liquid(model, seed, n_frames=3, temperature=300.0):
    frames = []
    rng = np.random.default_rng(seed)
    base = _with_molecules(periodic_box(seed=seed))
    for _ in range(n_frames):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append(atoms)
    return LiquidFrames(f"liquid{seed}", [make_sample(a, model.cutoff, model.species) for a in frames],
                        [molecular_offsets(a.positions, a.get_masses(), a.arrays["mol_id"]) for a in frames],
                        int(base.arrays["mol_id"].max()) + 1, temperature)


def test_molecular_pressure_is_minus_the_energy_derivative_under_rigid_molecule_scaling():
    torch.manual_seed(0)
    model = BambooPotential(MODEL).double().eval()
    liquid = _liquid(model, seed=1, n_frames=1, temperature=1e-9)  # no kinetic part
    atoms = _with_molecules(periodic_box(seed=1))
    atoms.positions = liquid.samples[0].graph.positions.numpy()
    mol, m = atoms.arrays["mol_id"], atoms.get_masses()
    com = atoms.positions - molecular_offsets(atoms.positions, m, mol)

    def energy_volume(scale):
        scaled = atoms.copy()
        scaled.set_cell(atoms.cell.array * scale, scale_atoms=False)
        scaled.positions = atoms.positions + (scale - 1.0) * com
        graph = make_sample(scaled, model.cutoff, model.species).graph.to(dtype=torch.float64)
        return float(model(graph, compute_forces=False)["energy"][0].detach()), scaled.get_volume()

    h = 1e-5
    (e_plus, v_plus), (e_minus, v_minus) = energy_volume(1 + h), energy_volume(1 - h)
    expected = -(e_plus - e_minus) / (v_plus - v_minus) * BAR_PER_EV_PER_A3
    got = molecular_pressures_bar(model, liquid, dtype=torch.float64)[0]
    assert abs(expected) > 10.0
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-3)


def test_alignment_moves_each_liquid_by_its_target_and_only_the_energy_head():
    torch.manual_seed(0)
    model = BambooPotential(MODEL).double().eval()
    liquids = [_liquid(model, seed=1), _liquid(model, seed=2)]
    liquids[0].target_shift_bar, liquids[1].target_shift_bar = -3000.0, -1000.0
    anchors = [make_sample(water_cluster(4, seed=s), model.cutoff, model.species) for s in range(3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = align_energy_head(model, liquids, anchors, AlignmentSettings(steps=200, lr=3e-3, anchors_per_step=2),
                               dtype=torch.float64)
    for entry, liquid in zip(result["liquids"], liquids):
        assert entry["achieved_shift_bar"] == pytest.approx(liquid.target_shift_bar, rel=0.1)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("energy_head.") for k in changed)
    assert result["anchors"]["n_frames"] == 3
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_alignment_refuses_a_model_without_an_energy_head():
    with pytest.raises(InputError, match="energy head"):
        align_energy_head(torch.nn.Linear(2, 2), [], [])


def test_kinetic_part_uses_each_frames_own_volume():
    # NPT frames have different cells: N_mol k_B T / V must use each frame's V, not the first frame's.
    torch.manual_seed(0)
    model = BambooPotential(MODEL).double().eval()
    atoms = _with_molecules(periodic_box(seed=1))
    bigger = atoms.copy()
    bigger.set_cell(atoms.cell.array * 1.1, scale_atoms=True)
    frames = [atoms, bigger]
    liquid = LiquidFrames("npt", [make_sample(a, model.cutoff, model.species) for a in frames],
                          [molecular_offsets(a.positions, a.get_masses(), a.arrays["mol_id"]) for a in frames],
                          int(atoms.arrays["mol_id"].max()) + 1, 300.0)
    cold = LiquidFrames(liquid.name, liquid.samples, liquid.offsets, liquid.n_molecules, 1e-9)
    kinetic = molecular_pressures_bar(model, liquid, torch.float64) - molecular_pressures_bar(model, cold, torch.float64)
    expected = [liquid.n_molecules * KB_EV_PER_K * 300.0 / a.get_volume() * BAR_PER_EV_PER_A3 for a in frames]
    assert kinetic == pytest.approx(expected, rel=1e-6)


def test_anchors_are_held_to_the_anchor_model_not_to_the_model_as_it_comes_in():
    torch.manual_seed(0)
    model = BambooPotential(MODEL).double().eval()
    torch.manual_seed(1)
    other = BambooPotential(MODEL).double().eval()
    anchors = [make_sample(water_cluster(4, seed=s), model.cutoff, model.species) for s in range(2)]
    settings = AlignmentSettings(steps=1, lr=1e-12, anchors_per_step=2)
    own = align_energy_head(model, [_liquid(model, seed=1)], anchors, settings, dtype=torch.float64)
    held = align_energy_head(model, [_liquid(model, seed=1)], anchors, settings, dtype=torch.float64,
                             anchor_model=other)
    assert own["anchors"]["energy_change_mae_meV_per_atom"] < 1e-6
    def energy(potential, sample):
        with torch.no_grad():
            return float(potential(sample.graph.to(dtype=torch.float64), compute_forces=False)["energy"][0])

    gap = [abs(energy(model, s) - energy(other, s)) / s.graph.num_atoms for s in anchors]
    assert held["anchors"]["energy_change_mae_meV_per_atom"] == pytest.approx(1000.0 * np.mean(gap), rel=1e-4)
