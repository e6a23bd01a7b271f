import numpy as np
import pytest
import torch

from mlmd import MLMDCalculator, keys
from mlmd.checkpoint import load_potential, save_checkpoint
from mlmd.errors import InputError
from mlmd.graph import graph_from_atoms
from potentials.bamboo import BambooPotential
from potentials.ensemble import EnsemblePotential
from tests.conftest import water_cluster
from tests.potentials.mixin import PotentialTests

SMALL = {"num_features": 16, "num_rbf": 8, "num_layers": 2, "num_heads": 2, "coulomb": False, "dispersion": False}


def members(n=3):
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(BambooPotential(SMALL))
    return out


class TestEnsemble(PotentialTests):
    def make_model(self):
        return EnsemblePotential.from_members(members(2))


def test_mean_and_spread_are_member_statistics():
    parts = [m.double().eval() for m in members(3)]
    ensemble = EnsemblePotential.from_members(parts, calibration=2.0).double().eval()
    graph = graph_from_atoms(water_cluster(2), 5.0).to(dtype=torch.float64)
    single = torch.stack([m(graph)[keys.FORCES].detach() for m in parts])
    out = ensemble(graph)
    assert torch.allclose(out[keys.FORCES].detach(), single.mean(0), atol=1e-12)
    assert torch.allclose(out[keys.FORCES_STD].detach(), 2.0 * single.std(0, unbiased=False), atol=1e-12)


def test_identical_members_have_zero_spread_and_calculator_reports_it(tmp_path):
    model = members(1)[0]
    path = save_checkpoint(EnsemblePotential.from_members([model, model]), tmp_path / "ens.pt")
    atoms = water_cluster(2)
    atoms.calc = MLMDCalculator(str(path), dtype="float64")
    atoms.get_forces()
    assert np.allclose(atoms.calc.results[keys.FORCES_STD], 0.0)
    assert load_potential(path).config["member_type"] == "bamboo"


def test_single_member_is_rejected():
    with pytest.raises(InputError, match="an ensemble needs at least 2 members, got 1"):
        EnsemblePotential({"member_type": "bamboo", "members": [BambooPotential(SMALL).config]})
