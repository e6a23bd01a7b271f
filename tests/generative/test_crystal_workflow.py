"""workflows/crystals.py: relax + NVT survival + ranking, with ASE's EMT for speed."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from mlmd.errors import InputError
from workflows.crystals import MDSettings, RelaxSettings, make_calculator, rank, relax, screen_crystals


def _perturbed_cu(seed=0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    rng = np.random.default_rng(seed)
    atoms.set_cell(atoms.cell * 1.06, scale_atoms=True)
    atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
    return atoms


def test_relaxation_recovers_perturbed_crystal():
    ref = bulk("Cu", "fcc", a=3.61, cubic=True)
    ref.calc = EMT()
    ref_relaxed, _, _ = relax(ref, EMT(), RelaxSettings(fmax=2e-3))
    relaxed, converged, _ = relax(_perturbed_cu(), EMT(), RelaxSettings(fmax=2e-3, max_steps=500))
    assert converged
    # same lattice constant (cubic cell, EMT's own minimum) and fcc positions up to a rigid shift
    np.testing.assert_allclose(relaxed.cell.cellpar()[:3], ref_relaxed.cell.cellpar()[:3], atol=3e-3)
    np.testing.assert_allclose(relaxed.cell.cellpar()[3:], 90.0, atol=0.05)
    frac = relaxed.get_scaled_positions()
    frac = (frac - frac[0] + 0.5) % 1.0 - 0.5
    ideal = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    d = (frac[:, None, :] - ideal[None] + 0.5) % 1.0 - 0.5
    assert np.abs(d).max(axis=2).min(axis=1).max() < 3e-3
    assert relaxed.get_potential_energy() == pytest.approx(ref_relaxed.get_potential_energy(), abs=1e-4)


def test_screen_ranks_survivors_and_resumes(tmp_path):
    from pymatgen.io.ase import AseAtomsAdaptor

    crystals = [_perturbed_cu(0), None, AseAtomsAdaptor.get_structure(bulk("Cu", "bcc", a=2.9, cubic=True))]
    db = tmp_path / "screen.db"
    md = MDSettings(steps=10, temperature_K=300)
    rows = screen_crystals(crystals, db, EMT(), RelaxSettings(fmax=0.05), md)
    assert len(rows) == 3
    surv = [r for r in rows if r.get("survived")]
    assert len(surv) == 2 and surv[0]["rank"] == 1
    assert surv[0]["energy_per_atom"] <= surv[1]["energy_per_atom"]
    assert [r for r in rows if r["candidate"] == 1][0]["status"] == "unreadable"
    # rerun: nothing recomputed, same ranking
    rows2 = screen_crystals(crystals, db, EMT(), RelaxSettings(fmax=0.05), md)
    assert [r["candidate"] for r in rows2] == [r["candidate"] for r in rows]
    from ase.db import connect

    assert connect(str(db)).count() == 3
    # another potential or other settings must not mix their rows with these
    from ase.calculators.lj import LennardJones

    with pytest.raises(InputError, match=r"screen\.db holds a screen with another calculator \(EMT\); resume it with "
                                         r"the same settings or use a new database"):
        screen_crystals(crystals, db, LennardJones(), RelaxSettings(fmax=0.05), md)
    with pytest.raises(InputError, match="holds a screen with another relax"):
        screen_crystals(crystals, db, EMT(), RelaxSettings(fmax=0.01), md)


def test_calculator_description_tells_models_apart():
    from potentials.bamboo import BambooPotential
    from mlmd.calculator import MLMDCalculator
    from workflows.crystals import describe_calculator

    torch.manual_seed(0)
    first, second = MLMDCalculator(BambooPotential({"species": [6]})), MLMDCalculator(BambooPotential({"species": [6]}))
    assert describe_calculator(first).startswith("mlmd bamboo (weights sha256 ")
    assert describe_calculator(first) != describe_calculator(second)
    assert describe_calculator(make_calculator("gfn1-xtb")) == "GFN1-xTB (supercell >= 10 Å)"


def test_exploding_crystal_does_not_survive():
    from workflows.crystals import nvt_survival

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    out = nvt_survival(atoms, EMT(), MDSettings(steps=20, temperature_K=20000, max_rms_displacement=0.05))
    assert not out["survived"]


def test_unknown_calculator():
    with pytest.raises(InputError, match="gfn1-xtb"):
        make_calculator("dftb")
    assert rank([{"candidate": 0, "survived": False}])[0]["candidate"] == 0


def test_supercell_calculator_matches_the_direct_result_of_a_short_ranged_potential():
    from workflows.crystals import SupercellCalculator, perpendicular_widths

    atoms = bulk("Cu", "fcc", a=3.61) * (1, 1, 2)  # 2-atom cell, 2.55 Å faces apart: needs repeats
    atoms.rattle(0.05, seed=1)
    direct = atoms.copy()
    direct.calc = EMT()
    wrapped = atoms.copy()
    wrapped.calc = SupercellCalculator(EMT(), min_width=9.0)
    reps = wrapped.calc.repeats(atoms)
    assert (perpendicular_widths(atoms.repeat(reps).cell) >= 9.0).all() and np.prod(reps) > 10
    assert wrapped.get_potential_energy() == pytest.approx(direct.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(wrapped.get_forces(), direct.get_forces(), atol=1e-9)
    np.testing.assert_allclose(wrapped.get_stress(), direct.get_stress(), atol=1e-9)
    assert np.abs(direct.get_forces()).max() > 0.05  # the check is not trivially zero


def test_supercell_calculator_reduces_a_skewed_cell_before_repeating_it():
    from workflows.crystals import SupercellCalculator

    atoms = bulk("Cu", "fcc", a=3.61) * (1, 1, 2)
    atoms.rattle(0.05, seed=2)
    skewed = atoms.copy()
    a, b, c = np.asarray(atoms.cell)
    skewed.set_cell([a, b + 3 * a, c - 2 * b], scale_atoms=False)  # the same lattice, thin faces
    calc = SupercellCalculator(EMT(), min_width=9.0)
    direct = atoms.copy()
    direct.calc = EMT()
    skewed.calc = calc
    assert skewed.get_potential_energy() == pytest.approx(direct.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(skewed.get_forces(), direct.get_forces(), atol=1e-9)
    np.testing.assert_allclose(skewed.get_stress(), direct.get_stress(), atol=1e-9)
    assert np.prod(calc.repeats(skewed)) > 2 * np.prod(calc.repeats(atoms))  # what the reduction saves


def test_make_calculator_accepts_an_mlmd_checkpoint(tmp_path):
    from mlmd.calculator import MLMDCalculator
    from mlmd.checkpoint import save_checkpoint
    from potentials.bamboo import BambooPotential

    path = tmp_path / "tiny.pt"
    save_checkpoint(BambooPotential({"num_features": 8, "num_rbf": 4, "num_layers": 1, "num_heads": 2,
                                     "coulomb": False, "dispersion": False}), path)
    assert isinstance(make_calculator(str(path)), MLMDCalculator)
    with pytest.raises(InputError, match="bundled mlmd model"):
        make_calculator(str(tmp_path / "missing.pt"))


def test_a_relaxation_that_shrinks_the_cell_past_the_volume_factor_does_not_survive(tmp_path):
    expanded = bulk("Cu", "fcc", a=3.61 * 1.4, cubic=True)  # relaxes back to a=3.61: volume x 0.36
    rows = screen_crystals([expanded, _perturbed_cu(0)], tmp_path / "s.db", EMT(), RelaxSettings(fmax=0.05, max_steps=500),
                           MDSettings(steps=5))
    by_candidate = {r["candidate"]: r for r in rows}
    assert by_candidate[0]["status"] == "volume collapsed" and not by_candidate[0]["survived"]
    assert by_candidate[0]["volume_ratio"] == pytest.approx(1 / 1.4**3, rel=0.05)
    assert by_candidate[1]["status"] == "relaxed" and by_candidate[1]["survived"]
