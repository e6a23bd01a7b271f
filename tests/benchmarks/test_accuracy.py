"""The accuracy benchmark's force breakdown: its parts add up to the overall force MAE that evaluation reports."""

import numpy as np
import pytest

from benchmarks.accuracy import force_error_breakdown
from mlmd import keys
from mlmd.data import make_sample
from potentials.bamboo import BambooPotential
from potentials.training import evaluate_samples
from tests.conftest import water_cluster


def _labelled_clusters(count: int) -> list:
    frames = []
    for seed in range(count):
        atoms = water_cluster(3, seed=seed)
        atoms.info[keys.REF_ENERGY] = -1.0
        # |F| spread over all bins, so every bin of the breakdown is exercised
        atoms.arrays[keys.REF_FORCES] = np.random.default_rng(seed).normal(scale=3.0, size=(len(atoms), 3))
        frames.append(atoms)
    return frames


def test_breakdown_by_element_and_by_force_magnitude_recovers_the_overall_force_mae():
    model = BambooPotential({"num_features": 16, "num_rbf": 8, "num_layers": 2, "num_heads": 2,
                             "species": [1, 8]}).eval()
    samples = [make_sample(a, model.cutoff, model.species) for a in _labelled_clusters(5)]
    overall = evaluate_samples(model, samples)["force_mae_meV_per_A"]
    breakdown = force_error_breakdown(model, samples, batch_size=2)

    elements = breakdown["by_element"]
    assert set(elements) == {"H", "O"} and elements["H"]["n_atoms"] == 2 * elements["O"]["n_atoms"] == 30
    weighted = sum(e["n_atoms"] * e["force_mae_meV_per_A"] for e in elements.values()) / 45
    assert weighted == pytest.approx(overall, rel=1e-5)

    bins = breakdown["by_reference_force_magnitude_eV_per_A"]
    assert sum(b["share_of_atoms"] for b in bins.values()) == pytest.approx(1.0)
    assert sum(b["contribution_meV_per_A"] for b in bins.values()) == pytest.approx(overall, rel=1e-5)
    for b in bins.values():
        assert b["contribution_meV_per_A"] == pytest.approx(b["share_of_atoms"] * b["force_mae_meV_per_A"], rel=1e-5)
