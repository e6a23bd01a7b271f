"""CLI pipeline: labelled data -> mlmd train -> mlmd eval -> mlmd md, plus the CLI's bad-input contract."""

import json

import pytest
from ase.io import write

from tests.conftest import water_cluster
from tests.potentials.test_training import TINY_MODEL, labelled_clusters
from workflows.cli import main

EVAL_KEYS = {"energy_mae_meV_per_atom", "energy_rmse_meV_per_atom", "force_mae_meV_per_A", "force_rmse_meV_per_A",
             "charge_mae_e", "n_structures", "n_atoms"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    data = labelled_clusters(tmp / "data.xyz", n=12)
    config = tmp / "train.yaml"
    config.write_text(json.dumps({"data": [str(data)], "output": str(tmp / "run"), "model": TINY_MODEL,
                                  "epochs": 2, "batch_size": 4, "warmup_steps": 1}))
    assert main(["train", str(config), "--no-progress"]) == 0
    return tmp, data


def test_eval_prints_exactly_the_documented_keys(trained, capsys):
    tmp, data = trained
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp / "run" / "best.pt"), "--data", str(data)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == EVAL_KEYS | {"by_config_type"}
    assert set(result["by_config_type"]) == {"dimer", "trimer"}
    assert all(set(v) == EVAL_KEYS for v in result["by_config_type"].values())
    assert result["n_structures"] == 12 and result["charge_mae_e"] is not None


def test_eval_without_reference_charges_reports_null(trained, tmp_path, capsys):
    tmp, _ = trained
    data = labelled_clusters(tmp_path / "nocharge.xyz", n=2, with_charges=False)
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp / "run" / "best.pt"), "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["charge_mae_e"] is None


def test_md_runs_on_the_trained_model(trained, tmp_path):
    tmp, _ = trained
    structure = tmp_path / "start.xyz"
    write(structure, water_cluster(2))
    assert main(["md", str(structure), "--model", str(tmp / "run" / "best.pt"), "--ensemble", "nvt", "--steps", "10",
                 "--temperature", "300", "--out", str(tmp_path / "md"), "--no-progress"]) == 0
    assert (tmp_path / "md" / "thermo.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["eval", "--model", "missing.pt", "--data", "x.xyz"], "neither a bundled model"),
    (["train", "NOFILE.yaml"], "config file 'NOFILE.yaml' not found; give a YAML file with training settings"),
])
def test_bad_input_exits_2_with_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_eval_rejects_data_without_reference_keys(trained, tmp_path, capsys):
    tmp, _ = trained
    bare = tmp_path / "bare.xyz"
    write(bare, water_cluster(1))
    assert main(["eval", "--model", str(tmp / "run" / "best.pt"), "--data", str(bare)]) == 2
    assert "structure 0 has no 'REF_energy'" in capsys.readouterr().err


def test_eval_rejects_unknown_elements(trained, tmp_path, capsys):
    tmp, _ = trained
    from ase import Atoms

    atoms = Atoms("CuO", positions=[[0, 0, 0], [2, 0, 0]])
    atoms.info["REF_energy"] = 0.0
    atoms.arrays["REF_forces"] = atoms.positions * 0
    write(tmp_path / "cu.xyz", atoms)
    assert main(["eval", "--model", str(tmp / "run" / "best.pt"), "--data", str(tmp_path / "cu.xyz")]) == 2
    assert "element(s) Cu not known to the model" in capsys.readouterr().err
