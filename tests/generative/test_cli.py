"""`mlmd generate crystals`, `mlmd evaluate-crystals`, `mlmd train-generator` through workflows.cli.main."""

import json

import pytest
import torch

from generative.checkpoint import save_generator
from generative.config import ModelConfig
from generative.models import build_model
from generative.train import dataset_statistics
from workflows.cli import main

SMALL = dict(hidden=16, layers=1, n_freq=2, time_dim=8)


@pytest.fixture()
def models(tmp_path, tiny_records):
    sp, sc, pr = dataset_statistics(tiny_records, tiny_records)
    out = {}
    for task in ("csp", "gen"):
        torch.manual_seed(0)
        m = build_model(ModelConfig(task=task, **SMALL), sp, sc, pr)
        out[task] = str(save_generator(m, tmp_path / f"{task}.pt"))
    return out


def _formulas(records, n):
    return ["".join(s.symbol for s in r.to_structure().species) for r in records[:n]]


def test_generate_csp_writes_cifs_in_order_and_db(tmp_path, models, tiny_records, capsys):
    comps = tmp_path / "comps.txt"
    comps.write_text("# formulas\n" + "\n".join(_formulas(tiny_records, 3)) + "\n\n")
    out = tmp_path / "out"
    rc = main(["generate", "crystals", "--model", models["csp"], "--compositions-file", str(comps), "--steps", "3", "--out", str(out)])
    assert rc == 0
    cifs = sorted(out.glob("*.cif"))
    assert len(cifs) == 3
    from ase.db import connect
    from pymatgen.core import Structure

    for cif, r in zip(cifs, tiny_records):
        assert Structure.from_file(cif).composition == r.to_structure().composition
    rows = list(connect(str(out / "crystals.db")).select(sort="index"))
    assert [row.index for row in rows] == [0, 1, 2] and rows[0].task == "csp"


def test_generate_gen_and_evaluate_generated_dir(tmp_path, models, tiny_csv, capsys):
    out = tmp_path / "gen"
    assert main(["generate", "crystals", "--model", models["gen"], "--n", "4", "--steps", "2", "--out", str(out)]) == 0
    (out / "zzz_broken.cif").write_text("data_broken\n_cell_length_a 4\nloop_\n_atom_site_fract_x\n garbage\n")
    res = tmp_path / "m.json"
    rc = main(["evaluate-crystals", "--generated", str(out), "--data", str(tiny_csv), "--split", "train", "--split-seed", "1",
               "--struct-cutoff", "0.2", "--comp-cutoff", "4", "--out", str(res)])
    assert rc == 0
    m = json.loads(res.read_text())
    assert m["n_unreadable"] == 1 and m["unreadable"] == ["zzz_broken.cif"] and m["n"] == 5
    assert 0.0 <= m["struct_validity"] <= 0.8


def test_cli_bad_inputs_exit_2(tmp_path, models, tiny_records, capsys):
    comps = tmp_path / "comps.txt"
    comps.write_text("Og3\n")
    out = str(tmp_path / "o")
    assert main(["generate", "crystals", "--model", models["csp"], "--compositions-file", str(comps), "--out", out]) == 2
    assert "vocabulary" in capsys.readouterr().err
    comps.write_text(_formulas(tiny_records, 1)[0] * 2 + "\n")
    assert main(["generate", "crystals", "--model", models["csp"], "--compositions-file", str(comps), "--out", out]) == 2
    assert "at most 5" in capsys.readouterr().err
    assert main(["generate", "crystals", "--model", models["gen"], "--n", "2", "--steps", "0", "--out", out]) == 2
    assert "steps" in capsys.readouterr().err
    assert main(["generate", "crystals", "--model", models["gen"], "--compositions-file", str(comps), "--out", out]) == 2
    assert main(["evaluate-crystals", "--model", models["gen"], "--task", "csp"]) == 2
    assert "'gen' model" in capsys.readouterr().err
    assert main(["train-generator", str(tmp_path / "missing.yaml")]) == 2


def test_screen_crystals_cli_refuses_bad_settings_and_a_database_of_another_screen(tmp_path, capsys):
    from ase.build import bulk
    from ase.io import write

    cifs = tmp_path / "cifs"
    cifs.mkdir()
    write(cifs / "cu.cif", bulk("Cu", "fcc", a=3.7, cubic=True))
    db = str(tmp_path / "s.db")
    base = ["screen-crystals", str(cifs), "--db", db, "--calculator", "emt", "--md-steps", "5"]
    assert main(base + ["--max-volume-factor", "1"]) == 2
    assert "--max-volume-factor must be above 1 (got 1.0)" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["n_survived"] == 1
    assert main(base + ["--fmax", "0.01"]) == 2
    assert "holds a screen with another relax" in capsys.readouterr().err
