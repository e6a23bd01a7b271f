"""Ratios and concentrations -> molecule counts; the packed box; rigid molecular rescaling."""

from __future__ import annotations

import numpy as np
import pytest

from mlmd.units import G_PER_CM3_PER_AMU_PER_A3
from tests.workflows.screening_support import tiny_checkpoint
from workflows.screening.composition import AVOGADRO, KNOWN_DENSITIES, model_info, pack_box, plan_formulation
from workflows.screening.protocol import make_whole, scale_molecules
from workflows.screening.spec import spec_from_dict


@pytest.fixture(scope="module")
def info(tmp_path_factory):
    return model_info(str(tiny_checkpoint(tmp_path_factory.mktemp("m") / "tiny.pt")))


def plan(info, **kw):
    return plan_formulation(spec_from_dict({"formulations": [kw]}).formulations[0], info)


def test_table_matches_the_shared_experimental_densities():
    from pathlib import Path

    path = Path("/work/shared/data/experimental_densities.csv")
    if not path.is_file():
        pytest.skip("shared data not present")
    rows = [line.split(",") for line in path.read_text().splitlines() if line and not line.startswith(("#", "name"))]
    assert {r[0]: (float(r[3]), float(r[2])) for r in rows} == KNOWN_DENSITIES


def test_mass_ratio_and_molarity_give_the_hand_computed_counts(info):
    p = plan(info, solvents={"EC": 0.5, "DMC": 0.5}, ratio_basis="mass", salt="LiPF6", concentration=1.0,
             n_molecules=100)
    counts = {c.label: c.count for c in p.components}
    m_ec, m_dmc = 88.06, 90.08
    x_ec = (0.5 / m_ec) / (0.5 / m_ec + 0.5 / m_dmc)
    assert counts["EC"] == round(100 * x_ec) and counts["DMC"] == round(100 * (1 - x_ec))
    # 1 mol/L of solvent volume (ideal mixing of the pure densities): n_salt = c V N_A.
    v_cm3 = (counts["EC"] * m_ec / 1.321 + counts["DMC"] * m_dmc / 1.063) / AVOGADRO
    assert counts["Li"] == counts["PF6"] == round(v_cm3 / 1000 * AVOGADRO)
    assert p.nominal_molarity == pytest.approx(counts["Li"] / AVOGADRO / (v_cm3 / 1000), rel=1e-4)
    assert p.mole_fractions["EC"] == pytest.approx(x_ec, rel=1e-3)


def test_molal_volume_ratio_and_atom_target(info):
    p = plan(info, solvents=["EC", "DMC"], ratio="3:7", ratio_basis="volume", salt="LiBF4", concentration=1.0,
             concentration_unit="molal", n_atoms=800)
    counts = {c.label: c.count for c in p.components}
    # Volume ratio 3:7 -> moles ∝ V ρ / M.
    x_ec = 3 * 1.321 / 88.06 / (3 * 1.321 / 88.06 + 7 * 1.063 / 90.08)
    assert counts["EC"] / (counts["EC"] + counts["DMC"]) == pytest.approx(x_ec, abs=0.02)
    kg = (counts["EC"] * 88.06 + counts["DMC"] * 90.08) / AVOGADRO / 1000
    assert counts["Li"] == round(1.0 * kg * AVOGADRO)
    assert abs(p.n_atoms - 800) < 30
    assert p.nominal_molality == pytest.approx(counts["Li"] / AVOGADRO / kg, rel=1e-4)


def test_packed_box_composition_and_density(info):
    p = plan(info, solvents="PC", salt="LiBF4", concentration=1.0, n_molecules=12)
    atoms = pack_box(p, seed=3)
    assert len(atoms) == p.n_atoms == 12 * 13 + 1 + 5
    assert atoms.info["total_charge"] == 0 and atoms.info["composition"] == "PC:12 Li:1 BF4:1"
    assert atoms.pbc.all() and np.allclose(atoms.cell.lengths(), p.box_length_A)
    rho = atoms.get_masses().sum() * G_PER_CM3_PER_AMU_PER_A3 / atoms.get_volume()
    assert rho == pytest.approx(p.packing_density_g_cm3, rel=1e-3)
    assert np.bincount(atoms.arrays["mol_id"]).tolist() == [13] * 12 + [1, 5]
    assert list(atoms.arrays["species"][-6:]) == ["Li"] + ["BF4"] * 5
    assert p.labels()[-6:] == ["Li"] + ["BF4"] * 5
    assert p.charges().sum() == 0 and p.charges()[-6] == 1 and p.charges()[-5] == -1
    # A SMILES solvent of unknown density is packed at the assumed density and says so.
    q = plan(info, solvents=[{"smiles": "CCOCCOCC"}], n_molecules=8)
    assert q.components[0].density_source == "assumed" and q.components[0].label == "S1"


def test_make_whole_and_rigid_rescaling_keep_bonds(info):
    p = plan(info, solvents="DME", n_molecules=8)
    atoms = pack_box(p, seed=0)                    # packmol's molecules are whole
    reference = atoms.get_all_distances(mic=False)
    atoms.wrap()                                   # break molecules across the boundary
    mol = atoms.arrays["mol_id"]
    same = mol[:, None] == mol[None, :]
    assert not np.allclose(atoms.get_all_distances(mic=False)[same], reference[same])
    whole = atoms.copy()
    whole.positions = make_whole(atoms)
    d0 = whole.get_all_distances(mic=False)
    assert np.allclose(d0[same], reference[same], atol=1e-6)   # every molecule in one piece again
    v0 = atoms.get_volume()
    scale_molecules(atoms, 1.05)
    assert atoms.get_volume() == pytest.approx(v0 * 1.05 ** 3)
    d1 = atoms.get_all_distances(mic=False)
    assert np.allclose(d1[same], d0[same], atol=1e-9)   # bonds unchanged


def test_solvent_from_an_xyz_file(info, tmp_path):
    from ase.build import molecule
    from ase.io import write

    write(tmp_path / "dimethylether.xyz", molecule("CH3OCH3"))
    p = plan(info, solvents=[{"xyz": str(tmp_path / "dimethylether.xyz"), "density_g_cm3": 0.73}], n_molecules=20)
    comp = p.components[0]
    assert comp.label == "dimethyl" and comp.count == 20 and comp.density_source == "spec" and comp.smiles is None
    atoms = pack_box(p, seed=1)
    assert len(atoms) == 180 and atoms.get_chemical_formula() == "C40H120O20"
    write(tmp_path / "bad.xyz", molecule("CH3Cl"))
    from mlmd.errors import UnknownElementError

    with pytest.raises(UnknownElementError, match="contains element\\(s\\) Cl"):
        plan(info, solvents=[{"xyz": str(tmp_path / "bad.xyz")}], n_molecules=20)
