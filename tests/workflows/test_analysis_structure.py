"""RDFs, coordination, shell composition and ion pairing on ideal gases and hand-made geometries."""

import mdtraj as md
import numpy as np
import pytest

from mlmd.errors import InputError
from workflows.analysis.structure import (build_topology, first_minimum, make_trajectory, rdf, solvation_analysis,
                                          solvation_shells)

BOX = 40.0


def test_ideal_gas_rdf_is_one_and_coordination_is_density():
    rng = np.random.default_rng(0)
    n, frames, box = 1000, 40, 25.0
    z = np.full(n, 8)
    z[:20] = 3
    traj = make_trajectory(rng.uniform(0, box, (frames, n, 3)), np.eye(3) * box, build_topology(z))
    g = rdf(traj, np.arange(20), np.arange(20, n), r_max_A=10.0, bin_width_A=0.1)
    # Measured: mean g(r > 4 Å) = 0.998, bin scatter 0.03; n(10 Å) within 0.2 % of 4/3 π r³ ρ.
    assert g.g[40:].mean() == pytest.approx(1.0, abs=0.01)
    assert np.all(np.abs(g.g[40:] - 1.0) < 0.15)
    assert g.coordination[-1] == pytest.approx((n - 20) / box ** 3 * 4 / 3 * np.pi * 1000.0, rel=0.02)
    assert g.r[0] == pytest.approx(0.05)
    assert np.isnan(g.first_minimum)                 # no shell: no cutoff (single close contacts are ignored)


def test_topology_from_atomic_numbers_and_mol_id():
    top = build_topology([3, 8, 6, 8, 6], mol_id=[0, 1, 1, 2, 2], residue_names=["Li", "EC", "EC", "EC", "EC"])
    assert isinstance(top, md.Topology)
    assert top.n_residues == 3 and top.n_atoms == 5
    assert [r.name for r in top.residues] == ["Li", "EC", "EC"]
    assert [a.element.symbol for a in top.atoms] == ["Li", "O", "C", "O", "C"]


def hand_made():
    """Five Li⁺: free (4 EC), CIP (1 anion), a shared anion (2 Li, AGG) and two anions (AGG).

    Returns positions (N, 3), atomic numbers, mol_id, labels."""
    atoms = []   # (Z, mol, label, position)
    mol = 0

    def add(z, label, pos, new=True):
        nonlocal mol
        if new:
            mol += 1
        atoms.append((z, mol, label, np.asarray(pos, float)))

    li = [(5, 5, 5), (15, 5, 5), (25, 5, 5), (25, 9, 5), (5, 20, 5)]
    for p in li:
        add(3, "Li", p)
    for d in [(2, 0, 0), (-2, 0, 0), (0, 2, 0), (0, -2, 0)]:   # EC around Li0: O at 2 Å, C 1.2 Å further out
        d = np.asarray(d, float)
        add(8, "EC", np.add(li[0], d))
        add(6, "EC", np.add(li[0], d * 1.6), new=False)

    def anion(f_pos, p_pos):
        add(9, "PF6", f_pos)
        add(15, "PF6", p_pos, new=False)
    anion((17, 5, 5), (18.5, 5, 5))                  # CIP with Li1
    anion((25, 7, 5), (27, 7, 5))                    # bridges Li2 and Li3
    anion((7, 20, 5), (8.5, 20, 5))                  # two anions on Li4
    anion((3, 20, 5), (1.5, 20, 5))
    z = np.array([a[0] for a in atoms])
    return np.array([a[3] for a in atoms]), z, np.array([a[1] for a in atoms]), np.array([a[2] for a in atoms])


def test_ion_pairing_and_shell_composition_on_hand_made_geometry():
    x, z, mol_id, labels = hand_made()
    traj = make_trajectory(np.repeat(x[None], 10, axis=0), np.eye(3) * BOX, build_topology(z, mol_id, labels))
    res = solvation_shells(traj, np.nonzero(z == 3)[0], {"O": 2.8, "F": 2.9}, anion_residue_names=["PF6"])
    np.testing.assert_array_equal(res.classes[0], [0, 1, 2, 2, 2])   # free, CIP, AGG, AGG, AGG
    assert res.pairing["free"][0] == pytest.approx(0.2)
    assert res.pairing["CIP"][0] == pytest.approx(0.2)
    assert res.pairing["AGG"][0] == pytest.approx(0.6)
    assert res.pairing["AGG"][1] == pytest.approx(0.0)                # identical frames: no scatter
    assert res.composition["EC"][0] == pytest.approx(4 / 5)
    assert res.composition["PF6"][0] == pytest.approx(5 / 5)         # 0 + 1 + 1 + 1 + 2 anions over 5 Li⁺
    assert res.composition["Li"][0] == 0.0
    assert res.coordination["O"][0] == pytest.approx(4 / 5)
    assert res.shell_size[0] == pytest.approx(9 / 5)
    assert res.top_compositions[0] == ("1 PF6", pytest.approx(0.6))
    assert ("4 EC", pytest.approx(0.2)) in res.top_compositions


def test_solvation_analysis_finds_first_minimum_and_counts():
    x, z, mol_id, labels = hand_made()
    rng = np.random.default_rng(1)
    # Background water-like O atoms, kept out of 4 Å around every Li⁺, so g(r) has a peak at 2 Å then a gap.
    bg = rng.uniform(0, BOX, (4000, 3))
    li = x[z == 3]
    d = np.linalg.norm((bg[:, None] - li[None] + BOX / 2) % BOX - BOX / 2, axis=2)
    bg = bg[np.all(d > 4.0, axis=1)][:600]
    frames = 12
    pos = np.concatenate([np.repeat(x[None], frames, 0) + rng.normal(0, 0.05, (frames, len(x), 3)),
                          np.repeat(bg[None], frames, 0) + rng.normal(0, 0.05, (frames, len(bg), 3))], axis=1)
    zz = np.r_[z, np.full(len(bg), 8)]
    mm = np.r_[mol_id, mol_id.max() + 1 + np.arange(len(bg))]
    ll = np.r_[labels, np.full(len(bg), "W")]
    res = solvation_analysis(pos, np.eye(3) * BOX, zz, mm, ll, anion_labels=["PF6"], r_max_A=10.0, bin_width_A=0.1)
    g = res.rdfs["O"]
    assert g.first_peak == pytest.approx(2.0, abs=0.1)
    assert 2.2 < g.first_minimum < 4.1
    assert g.coordination_number == pytest.approx(4 / 5, abs=0.01)
    assert res.rdfs["F"].coordination_number == pytest.approx(5 / 5, abs=0.01)
    np.testing.assert_array_equal(res.shells.classes[3], [0, 1, 2, 2, 2])
    assert "N" not in res.rdfs


def test_first_minimum_of_a_model_curve():
    r = np.linspace(0.05, 8, 160)
    g = 3 * np.exp(-((r - 2.0) / 0.2) ** 2) + 1 - np.exp(-((r - 3.0) / 0.5) ** 2) * (r > 2)
    peak, minimum = first_minimum(r, g)
    assert peak == pytest.approx(2.0, abs=0.06)
    assert minimum == pytest.approx(3.0, abs=0.15)
    assert np.isnan(first_minimum(r, np.ones_like(r))[1])


def msg(e):
    return str(e.value)


def test_bad_inputs():
    top = build_topology([3, 8])
    cases = [
        (lambda: build_topology([[3, 8]]), "atomic_numbers must have shape (atoms,); got (1, 2)"),
        (lambda: build_topology([3, 0]), "atomic_numbers must be integers 1-118; got [0]"),
        (lambda: build_topology([3, 8], mol_id=[0]), "mol_id must have shape (2,), one entry per atom; got (1,)"),
        (lambda: build_topology([8, 6], mol_id=[0, 0], residue_names=["EC", "DMC"]),
         "residue_names must be equal within a molecule; mol_id 0 has 'EC' and 'DMC'"),
        (lambda: make_trajectory(np.zeros((3, 3)), np.eye(3) * 10, top),
         "positions must hold 2 atoms to match the topology; got 3"),
        (lambda: make_trajectory(np.zeros((2, 3)), np.eye(3) * 0, top), "cells must have volume > 0 Å³; got 0.0 Å³"),
        (lambda: make_trajectory(np.zeros((2, 3)), np.eye(2), top),
         "cells must have shape (3, 3) or (1, 3, 3); got (2, 2)"),
        (lambda: make_trajectory(np.full((2, 3), np.nan), np.eye(3), top),
         "positions contains NaN or inf; finite values required"),
        (lambda: rdf(make_trajectory(np.eye(2, 3), np.eye(3) * 10, top), [0], [5]),
         "neighbours must lie in 0..1; got 5"),
        (lambda: rdf(make_trajectory(np.eye(2, 3), np.eye(3) * 10, top), [0], [1], r_max_A=-1.0),
         "r_max_A must be a number > 0 Å; got -1.0"),
        (lambda: solvation_analysis(np.eye(2, 3), np.eye(3) * 10, [3, 8], [0, 1], ["Li", "EC"], li_label="Na"),
         "li_label 'Na' is not among the labels; accepted: ['EC', 'Li']"),
        (lambda: solvation_shells(make_trajectory(np.eye(2, 3), np.eye(3) * 10, top), [0], {"O": 2.8},
                                  anion_residue_names=["PF6"]),
         "anion_residue_names ['PF6'] are not residue names of the topology; accepted: ['Li', 'O']"),
        (lambda: solvation_shells(make_trajectory(np.eye(2, 3), np.eye(3) * 10, top), [0], {"N": 2.8}),
         "cutoffs_A names no element present besides Li; got ['N']"),
    ]
    for call, text in cases:
        with pytest.raises(InputError) as e:
            call()
        assert msg(e) == text
