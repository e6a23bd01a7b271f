import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from generative.metrics import Fingerprints, broad_composition_scaler, coverage, csp_metrics, fingerprints, generation_metrics, smact_validity, structure_validity, wasserstein_metrics


def nacl():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def srtio3(a=3.905):
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def test_structure_matches_itself_and_shifted_copy():
    s = srtio3()
    shifted = s.copy()
    shifted.translate_sites(list(range(len(s))), [0.13, 0.4, 0.77])
    out = csp_metrics([s, shifted], [s, s])
    assert out["match_rate"] == 1.0 and out["rms"] < 1e-6
    # best-of-k: one bad candidate and one good one still match
    # StructureMatcher scales volumes, so "bad" needs a different shape: a strongly elongated cell
    bad = Structure(Lattice.tetragonal(3.0, 9.0), ["Sr", "Ti", "O", "O", "O"], np.random.default_rng(0).random((5, 3)))
    out = csp_metrics([[bad, s]], [s])
    assert out["match_rate"] == 1.0 and out["k"] == 2
    assert csp_metrics([bad], [s])["match_rate"] == 0.0


def test_overlapping_atoms_invalid():
    assert structure_validity(nacl())
    assert not structure_validity(Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]]))
    # periodic image too close: a 0.3 Å lattice vector
    assert not structure_validity(Structure(Lattice([[0.3, 0, 0], [0, 4, 0], [0, 0, 4]]), ["Na"], [[0, 0, 0]]))
    # tiny volume
    assert not structure_validity(Structure(Lattice([[1, 0, 0], [0, 1, 0], [0, 0, 0.05]]), ["Na"], [[0, 0, 0]]))


def test_smact_charge_neutrality():
    assert smact_validity(nacl().composition)
    assert smact_validity(srtio3().composition)
    assert not smact_validity({"Na": 2, "Cl": 1})
    assert smact_validity({"Cu": 3, "Au": 1})  # alloys accepted (all metals)


def test_coverage_of_a_set_by_itself_is_one():
    ss = [srtio3(), nacl(), srtio3(4.2)]
    fp = fingerprints(ss)
    cov = coverage(fp, fp, 0.2, 4.0)
    assert cov["cov_recall"] == 1.0 and cov["cov_precision"] == 1.0
    w = wasserstein_metrics(ss, ss)
    assert w["wdist_density"] == 0.0 and w["wdist_num_elems"] == 0.0


def test_composition_distance_does_not_depend_on_the_reference_set():
    """Standardisation is fixed (broad chemistry), so adding unrelated crystals to the reference changes nothing."""
    batio3 = srtio3().copy()
    batio3.replace_species({"Sr": "Ba"})
    gen = fingerprints([batio3])
    alone = coverage(gen, fingerprints([srtio3()]), 0.2, 4.0)
    nacl_only = coverage(gen, fingerprints([nacl()]), 0.2, 4.0)
    mixed = coverage(gen, fingerprints([srtio3(), nacl(), nacl()]), 0.2, 4.0)
    # the mean of the per-reference distances: SrTiO3's distance to BaTiO3 is the same in both reference sets
    assert 3 * mixed["amcd_recall"] == pytest.approx(alone["amcd_recall"] + 2 * nacl_only["amcd_recall"])
    assert alone["cov_recall"] == 1.0 and mixed["cov_recall"] == pytest.approx(1 / 3)


def test_coverage_takes_the_nearest_structure_and_composition_separately():
    """The protocol's COV-R asks for a structure match and a composition match, not one crystal with both."""
    mu, sd = broad_composition_scaler()
    far_comp = mu + 10 * sd * np.eye(132)[0]  # 10 scaler units away in one feature: beyond the 4.0 cutoff
    struct_a, struct_b = np.zeros(61), np.eye(61)[0]  # 1.0 apart: beyond the 0.2 cutoff
    gen = Fingerprints(struct=np.stack([struct_a, struct_b]), comp=np.stack([mu, far_comp]))
    ref = Fingerprints(struct=struct_a[None], comp=far_comp[None])  # structure of the first, composition of the second
    cov = coverage(gen, ref, 0.2, 4.0)
    assert cov["cov_recall"] == 1.0 and cov["cov_recall_joint"] == 0.0
    # precision: the first has the reference's structure, the second its composition; neither has both
    assert cov["cov_precision"] == 0.0 and cov["cov_precision_joint"] == 0.0
    assert coverage(ref, ref, 0.2, 4.0)["cov_precision"] == 1.0


def test_broad_composition_scaler_is_deterministic_and_broad():
    mu, sd = broad_composition_scaler(n=200, seed=3)
    mu2, sd2 = broad_composition_scaler.__wrapped__(n=200, seed=3)  # recomputed, not the cached arrays
    assert np.array_equal(mu, mu2) and np.array_equal(sd, sd2) and mu.shape == sd.shape == (132,)
    # feature 3 is the mean atomic number: spread over the periodic table, not over one structure type
    assert 10 < sd[3] < 25 and np.all(sd > 0)


def test_generation_metrics_json_and_invalid_counted():
    ref = [srtio3(), srtio3(4.0)]
    overlap = Structure(Lattice.cubic(4.0), ["Sr", "Ti", "O", "O", "O"], [[0, 0, 0], [0.01, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    out = generation_metrics([srtio3(), overlap, None], ref, dataset="perov_5")
    assert out["struct_validity"] == pytest.approx(1 / 3)
    assert out["cov_recall"] == 1.0 and out["cov_precision"] == pytest.approx(1 / 3)
    json.dumps(out)
