"""End to end on a tiny random checkpoint (plus the placeholder restraints that keep it stable): Dask with two
workers, failure isolation, rerun skips finished work, resume of an interrupted stage, report, CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import ase.db
import numpy as np
import pytest

from tests.workflows.screening_support import TINY_PROTOCOL, formulation, tiny_checkpoint, write_spec
from workflows.screening import protocol
from workflows.screening.composition import model_info, plan_formulation
from workflows.screening.runner import screen
from workflows.screening.spec import load_spec, spec_from_dict

FAILING = "tests.workflows.screening_support:failing_calculator"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


def rows(db_path):
    return {r.formulation: r for r in ase.db.connect(str(db_path)).select()}


def test_screen_two_workers_isolates_failure_skips_on_rerun_and_reports(model, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", [
        formulation(model, name="ok-DME"),
        formulation(model, name="broken", calculator=FAILING),
    ])
    db = tmp_path / "screen.db"
    result = screen(load_spec(spec), database=str(db), workers=2, processes=False, progress=False)
    assert result.counts == {"done": 1, "failed": 1} and result.workers == 2
    r = rows(db)
    assert set(r) == {"ok-DME", "broken"}
    ok, bad = r["ok-DME"], r["broken"]
    # Failure recorded with its stage and error; the other formulation finished.
    assert bad.status == "failed" and bad.stage == "prepare" and "synthetic failure" in bad.error
    folder = Path(ok.data["folder"])
    assert json.loads((folder.parent / Path(bad.data["folder"]).name / "error.json").read_text())["stage"] == "prepare"
    # Every property with its uncertainty, provenance and the final structure.
    assert ok.status == "done"
    for key in ("density_g_cm3", "viscosity_mPa_s", "sigma_NE_mS_cm", "sigma_Einstein_mS_cm", "t_Li_NE",
                "t_Li_Onsager", "D_DME", "D_Li", "D_FSI", "pair_free", "CN_Li_O"):
        assert np.isfinite(ok[key]), key
        assert np.isfinite(ok[f"{key}_sem"]) or key in ("D_Li",), key
    assert ok.model_sha256 == model_info(str(model)).sha256 and ok.engine == "ase" and ok.seed == 0
    assert ok.natoms == ok.n_atoms_box and ok.toatoms().pbc.all()
    assert ok.data["plan"]["spec"]["protocol"]["n_replicas"] == 2
    assert (folder / "result.json").is_file() and (folder / "replicas" / "r01" / "prod" / "result.json").is_file()
    thermo = (folder / "replicas" / "r00" / "prod" / "thermo.csv").read_text().splitlines()
    assert len(thermo) == 1 + TINY_PROTOCOL["replica_steps"] + 1      # header + stress at every step

    # Rerun: the finished formulation is skipped (no MD), the failed one is retried, one row each.
    mtime = (folder / "result.json").stat().st_mtime
    again = screen(load_spec(spec), database=str(db), workers=2, processes=False, progress=False)
    assert again.counts == {"skipped": 1, "failed": 1}
    assert (folder / "result.json").stat().st_mtime == mtime
    assert len(list(ase.db.connect(str(db)).select())) == 2

    # Report: HTML + Markdown with the ranked table and figures.
    from workflows.screening.report import results_table, write_report

    paths = write_report(str(db), tmp_path / "report")
    page = paths["html"].read_text()
    assert "ok-DME" in page and "failed at prepare" in page and "<table>" in page
    assert (tmp_path / "report" / "figures" / "properties.png").is_file()
    assert (tmp_path / "report" / "figures" / "ok-DME-green_kubo.png").is_file()
    assert "| 1 | ok-DME |" in paths["markdown"].read_text()
    table = results_table(str(db))
    assert table.splitlines()[2].startswith("ok-DME") and "failed at prepare" in table.splitlines()[3]


def test_interrupted_stage_resumes_from_its_checkpoint(model, tmp_path, monkeypatch):
    f = spec_from_dict({"formulations": [formulation(model, name="R")]}).formulations[0]
    plan = plan_formulation(f, model_info(str(model)))
    folder = tmp_path / f.folder_name
    real = protocol.make_calculator

    def dies_in_density(p):
        calc = real(p)
        original = calc.calculate
        calls = [0]

        def calculate(*a, **k):
            calls[0] += 1
            if calls[0] > 30:                     # minimise + equilibration pass, density production dies
                raise KeyboardInterrupt
            return original(*a, **k)

        calc.calculate = calculate
        return calc

    monkeypatch.setattr(protocol, "make_calculator", dies_in_density)
    with pytest.raises(KeyboardInterrupt):
        protocol.prepare(plan, folder)
    ck_step = __import__("mlmd.md.io", fromlist=["x"]).load_checkpoint(folder / "density" / "checkpoint.npz").step
    assert 0 < ck_step < TINY_PROTOCOL["density_max_steps"]
    eq_mtime = (folder / "equilibrate" / "result.json").stat().st_mtime
    monkeypatch.setattr(protocol, "make_calculator", real)
    decision = protocol.prepare(plan, folder)
    assert (folder / "equilibrate" / "result.json").stat().st_mtime == eq_mtime      # not redone
    steps = np.loadtxt(folder / "density" / "thermo.csv", delimiter=",", skiprows=1, usecols=0)
    assert np.array_equal(steps, np.arange(0, decision["steps"] + 1))               # no gap, no duplicate
    assert decision["steps"] in protocol.density_schedule(plan)
    assert len(list((folder / "replicas").glob("r*/start.extxyz"))) == 2


def test_cli_screen_and_report(model, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", [formulation(model, name="cli", protocol={**TINY_PROTOCOL,
                                                                                         "n_replicas": 0})])
    db = tmp_path / "r.db"
    exe = str(Path(__import__("sys").executable).with_name("mlmd"))
    out = subprocess.run([exe, "screen", str(spec), "--db", str(db), "--threads", "--workers", "1", "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "cli" in out.stdout and "1 done" in out.stdout
    out = subprocess.run([exe, "report", str(db)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and (tmp_path / "r_report" / "report.html").is_file()
    out = subprocess.run([exe, "report", str(tmp_path / "none.db")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "not found" in out.stderr


def test_openmm_engine_is_a_setting(model, tmp_path):
    pytest.importorskip("openmm")
    proto = {**TINY_PROTOCOL, "timestep_fs": 0.25, "replica_steps": 20}
    data = {k: v for k, v in formulation(model, name="omm", engine="openmm", protocol=proto).items() if k != "calculator"}
    spec = spec_from_dict({"formulations": [data]})
    db = tmp_path / "omm.db"
    result = screen(spec, database=str(db), workers=1, processes=False, progress=False)
    assert result.counts == {"done": 1}, [j.error for j in result.jobs]
    folder = result.jobs[0].folder
    for stage in ("equilibrate", "density", "replicas/r00/prod"):
        assert (folder / stage / "openmm_checkpoint.npz").is_file() and (folder / stage / "final.extxyz").is_file()
    row = rows(db)["omm"]
    assert row.engine == "openmm" and np.isfinite(row.density_g_cm3) and np.isfinite(row.viscosity_mPa_s)
    assert screen(spec, database=str(db), workers=1, processes=False, progress=False).counts == {"skipped": 1}


def test_ensemble_model_adds_the_epistemic_spread(tmp_path):
    import torch

    from mlmd.checkpoint import save_checkpoint
    from potentials.bamboo import BambooPotential
    from potentials.ensemble import EnsemblePotential

    cfg = {"num_features": 16, "num_rbf": 8, "num_layers": 2, "num_heads": 2}
    torch.manual_seed(0)
    path = save_checkpoint(EnsemblePotential.from_members([BambooPotential(cfg), BambooPotential(cfg)]),
                           tmp_path / "ensemble.pt")
    assert model_info(str(path)).uncertainty
    proto = {**TINY_PROTOCOL, "n_replicas": 0}
    spec = spec_from_dict({"formulations": [formulation(path, name="ens", protocol=proto)]})
    db = tmp_path / "e.db"
    assert screen(spec, database=str(db), workers=1, processes=False, progress=False).counts == {"done": 1}
    row = rows(db)["ens"]
    for key in ("epistemic_energy_eV_atom", "epistemic_forces_eV_A", "epistemic_pressure_bar", "epistemic_density_g_cm3"):
        assert row[key] > 0, key
    from workflows.screening.report import write_report

    assert "Model epistemic spread" in write_report(str(db), tmp_path / "rep")["html"].read_text()


def test_a_failed_replica_is_recorded_and_the_others_are_analysed(model, tmp_path):
    from tests.workflows import screening_support

    screening_support.INSTANCES[0] = 0
    proto = {**TINY_PROTOCOL, "n_replicas": 3}
    spec = spec_from_dict({"formulations": [formulation(
        model, name="partial", protocol=proto, calculator="tests.workflows.screening_support:third_calculator_fails")]})
    db = tmp_path / "p.db"
    result = screen(spec, database=str(db), workers=1, processes=False, progress=False)
    assert result.counts == {"done": 1}
    row = rows(db)["partial"]
    assert row.n_replicas_used == 2 and np.isfinite(row.viscosity_mPa_s)
    assert any("1 of 3 replicas failed" in n for n in row.data["notes"])
    assert any("synthetic replica failure" in n for n in row.data["notes"])
    assert "synthetic replica failure" in result.jobs[0].error
