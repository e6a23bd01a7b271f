"""mlmd align: the experimental-density table and config checks, and a tiny end-to-end run that resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlmd.errors import ConfigError, InputError
from tests.workflows.screening_support import tiny_checkpoint
from workflows.alignment import align, load_align_config, read_density_table
from workflows.cli import main

TABLE = "# comment\nname,smiles,temperature_K,density_g_cm3\nDME,COCCOC,298.15,0.864\nDMC,COC(=O)OC,298.15,1.063\n"


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "densities.csv"
    path.write_text(TABLE)
    return path


def test_density_table_rows_and_subset(table):
    rows = read_density_table(table, ["DMC"])
    assert rows == [{"name": "DMC", "smiles": "COC(=O)OC", "temperature_K": 298.15, "density_g_cm3": 1.063}]
    assert [r["name"] for r in read_density_table(table)] == ["DME", "DMC"]


@pytest.mark.parametrize("text, names, message", [
    ("name,smiles,density_g_cm3\nDME,COCCOC,0.864\n", None, "missing column(s) temperature_K"),
    ("name,smiles,temperature_K,density_g_cm3\nDME,COCCOC,298,-0.8\n", None, "must be positive; got 298 K, -0.8 g/cm³"),
    ("name,smiles,temperature_K,density_g_cm3\nDME,COCCOC,warm,0.8\n", None, "must be numbers"),
    ("name,smiles,temperature_K,density_g_cm3\n", None, "has no rows"),
    (TABLE, ["EC"], "liquid(s) EC not in"),
])
def test_bad_density_tables_are_one_line_errors(tmp_path, text, names, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=None) as info:
        read_density_table(path, names)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_config_errors(tmp_path, table):
    with pytest.raises(ConfigError, match="densities is required"):
        load_align_config(None, {})
    with pytest.raises(ConfigError, match="unknown key 'round'"):
        load_align_config(None, {"densities": table, "round": 2})
    with pytest.raises(ConfigError, match="rounds = 0"):
        load_align_config(None, {"densities": table, "rounds": 0})


def test_cli_rejects_a_missing_table_with_exit_code_2(tmp_path, capsys):
    rc = main(["align", "--densities", str(tmp_path / "none.csv"), "--output", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: density table") and err.count("\n") == 1


def test_tiny_alignment_runs_end_to_end_and_resumes(tmp_path, table):
    model = tiny_checkpoint(tmp_path / "tiny.pt")
    cfg = load_align_config(None, {"densities": table, "liquids": ["DME"], "model": str(model), "n_atoms": 110,
                                   "output": tmp_path / "out", "minimise_steps": 5, "timestep_fs": 0.1, "equilibration_steps": 10,
                                   "sample_steps": 20, "sample_interval": 10, "rounds": 2, "workers": 1,
                                   "target": "pressure", "fit": {"steps": 2}})
    result = align(cfg)
    frames = tmp_path / "out" / "round_0" / "DME" / "frames.extxyz"
    stamp = frames.stat().st_mtime_ns
    measured = result["rounds"][0]["liquids"][0]
    assert measured["name"] == "DME" and measured["n_frames"] == 3
    assert result["rounds"][0]["fit"]["liquids"][0]["target_shift_bar"] == pytest.approx(1.0 - measured["pressure_bar"])
    # round 1 starts from round 0's last frame (warm start), not from a new packmol box
    from ase.io import read

    assert read(tmp_path / "out" / "round_1" / "DME" / "box.extxyz").positions == pytest.approx(
        read(frames, index=-1).positions, abs=1e-6)
    assert 0.25 <= result["rounds"][1]["response"] <= 1.0
    from mlmd.checkpoint import load_potential

    aligned = load_potential(tmp_path / "out" / "aligned.pt")
    assert aligned.metadata["alignment"]["pressure_per_round_bar"][1]["DME"] == pytest.approx(
        result["rounds"][1]["liquids"][0]["pressure_bar"], abs=0.1)
    again = align(cfg)      # finished rounds are read back, not redone
    assert frames.stat().st_mtime_ns == stamp
    assert json.dumps(again["rounds"]) == json.dumps(result["rounds"])
    assert result["check"] is None      # the check samples densities, which the pressure target does not


def test_tiny_density_alignment_targets_k_ln_rho_and_checks_the_aligned_model(tmp_path, table):
    model = tiny_checkpoint(tmp_path / "tiny.pt")
    cfg = load_align_config(None, {"densities": table, "liquids": ["DME"], "model": str(model), "n_atoms": 110,
                                   "output": tmp_path / "out", "minimise_steps": 5, "timestep_fs": 0.1,
                                   "equilibration_steps": 10, "sample_steps": 20, "sample_interval": 10, "rounds": 1,
                                   "workers": 1, "bulk_modulus_bar": 12000.0, "step_fraction": 0.5,
                                   "fit": {"steps": 2}})
    assert cfg.target == "density" and cfg.check
    result = align(cfg)
    measured = result["rounds"][0]["liquids"][0]
    from ase.io import read

    frames = read(tmp_path / "out" / "round_0" / "DME" / "frames.extxyz", index=":")
    densities = [a.get_masses().sum() * 1.66053906660 / a.get_volume() for a in frames]
    assert len({round(a.get_volume(), 6) for a in frames}) > 1          # NPT: the box breathes
    assert measured["density_model_g_cm3"] == pytest.approx(np.mean(densities))
    assert result["rounds"][0]["fit"]["liquids"][0]["target_shift_bar"] == pytest.approx(
        0.5 * 12000.0 * np.log(measured["density_model_g_cm3"] / 0.864))
    check = result["check"]
    assert check["liquids"][0]["experiment_g_cm3"] == 0.864
    assert check["mae_g_cm3"] == pytest.approx(abs(check["liquids"][0]["predicted_g_cm3"] - 0.864))
    # the check starts from the last round's final frame and is stored for a rerun
    assert read(tmp_path / "out" / "round_1" / "DME" / "box.extxyz").positions == pytest.approx(
        frames[-1].positions, abs=1e-6)
    assert json.loads((tmp_path / "out" / "round_1" / "check.json").read_text()) == check


def test_missing_start_frames_are_rejected_before_any_md(tmp_path, table):
    model = tiny_checkpoint(tmp_path / "tiny.pt")
    cfg = load_align_config(None, {"densities": table, "liquids": ["DME"], "model": str(model),
                                   "output": tmp_path / "out", "start_frames": tmp_path / "nowhere"})
    with pytest.raises(InputError, match=r"start_frames .*nowhere: no frames.extxyz for DME"):
        align(cfg)
    assert not (tmp_path / "out").exists()


def test_bulk_modulus_is_the_secant_of_the_previous_shift_when_the_density_moved_beyond_noise():
    from workflows.alignment import bulk_moduli

    def liquid(name, rho, sem=0.001, k=None):
        entry = {"name": name, "density_model_g_cm3": rho, "density_sem_g_cm3": sem}
        return entry | ({"bulk_modulus_bar": k} if k else {})

    previous = {"liquids": [liquid("A", 1.10, k=20000.0), liquid("B", 1.10, k=30000.0), liquid("C", 1.10, k=20000.0)],
                "fit": {"liquids": [{"name": n, "achieved_shift_bar": 2000.0} for n in "ABC"]}}
    now = [liquid("A", 1.05), liquid("B", 1.099), liquid("C", 1.12), liquid("E", 1.0)]
    k = bulk_moduli(previous, now, 20000.0)
    assert k["A"] == pytest.approx(2000.0 / np.log(1.10 / 1.05))     # secant
    assert k["B"] == 30000.0            # moved less than twice its noise: keep the previous K
    assert k["C"] == 20000.0            # moved the wrong way: keep
    assert k["E"] == 20000.0            # new liquid: first guess
    assert bulk_moduli(None, now, 15000.0) == {n: 15000.0 for n in "ABCE"}
    fast = {"liquids": [liquid("A", 1.10)], "fit": {"liquids": [{"name": "A", "achieved_shift_bar": 100.0}]}}
    assert bulk_moduli(fast, [liquid("A", 1.0)], 20000.0)["A"] == 5000.0        # clamped to first guess / 4


def test_pooled_response_is_the_surviving_fraction_of_the_fitted_shifts_clamped():
    from workflows.alignment import pooled_response

    previous = {"liquids": [{"name": "A", "pressure_bar": 3000.0}, {"name": "B", "pressure_bar": 1000.0}],
                "fit": {"liquids": [{"name": "A", "achieved_shift_bar": -3000.0},
                                    {"name": "B", "achieved_shift_bar": -1000.0}]}}
    now = [{"name": "A", "pressure_bar": 1000.0}, {"name": "B", "pressure_bar": 600.0}]
    assert pooled_response(previous, now) == pytest.approx((2400.0) / 4000.0)
    assert pooled_response(previous, [{"name": "A", "pressure_bar": 2990.0}]) == 0.25      # barely moved: clamped
    assert pooled_response(previous, [{"name": "A", "pressure_bar": -2000.0}]) == 1.0      # overshot: never amplify less
    assert pooled_response(previous, [{"name": "C", "pressure_bar": 0.0}]) == 1.0          # nothing to compare
