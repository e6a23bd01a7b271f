"""Formulation spec: accepted forms, and every bad input rejected before any MD with one line and exit code 2."""

from __future__ import annotations

import socket

import pytest

from mlmd.errors import ConfigError
from tests.workflows.screening_support import formulation, tiny_checkpoint, write_spec
from workflows.cli import main
from workflows.screening.spec import load_spec, spec_from_dict, spec_from_flags

ACCEPTED_SPECIES = "EC, PC, DMC, EMC, DEC, FEC, VC, DME, DOL, Li, PF6, BF4, FSI, TFSI or a valid SMILES string"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


def run_cli(args, capsys):
    rc = main(["screen", *args, "--no-progress"])
    err = capsys.readouterr().err
    return rc, err


def test_forms_of_the_solvent_list():
    a = spec_from_dict({"formulations": [{"solvents": {"EC": 0.5, "DMC": 0.5}, "salt": "LiPF6", "concentration": 1}]})
    b = spec_from_dict({"formulations": [{"solvents": ["EC", "DMC"], "ratio": "1:1", "salt": "LiPF6",
                                          "concentration": 1, "concentration_unit": "mol/L"}]})
    c = spec_from_flags(solvents="EC:DMC", ratio="1:1", salt="LiPF6", concentration=1.0)
    fa, fb, fc = a.formulations[0], b.formulations[0], c.formulations[0]
    assert [s.fraction for s in fa.solvents] == [s.fraction for s in fb.solvents] == [0.5, 0.5]
    assert fa.key() == fb.key() == fc.key()                # the same formulation, however it was written
    assert fa.name == "LiPF6_1M_EC-DMC" and fa.n_atoms == 600
    d = spec_from_dict({"formulations": [{"solvents": "PC", "salt": "LiBF4", "concentration": 2,
                                          "concentration_unit": "mol/kg"}]})
    assert d.formulations[0].concentration_unit == "molal" and d.formulations[0].solvents[0].fraction == 1.0


def test_defaults_merge_protocol_key_by_key(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("defaults:\n  temperature_K: 310\n  protocol: {n_replicas: 3, replica_steps: 400}\n"
                    "formulations:\n  - {solvents: DME, protocol: {replica_steps: 200}}\n  - {solvents: PC}\n")
    spec = load_spec(path, overrides={"seed": 7})
    f1, f2 = spec.formulations
    assert f1.temperature_K == f2.temperature_K == 310 and f1.seed == f2.seed == 7
    assert (f1.protocol.n_replicas, f1.protocol.replica_steps) == (3, 200)
    assert (f2.protocol.n_replicas, f2.protocol.replica_steps) == (3, 400)


def test_duplicate_names_and_flag_errors():
    with pytest.raises(ConfigError, match="formulation name 'A' appears twice"):
        spec_from_dict({"formulations": [{"name": "A", "solvents": "EC"}, {"name": "A", "solvents": "PC"}]})
    with pytest.raises(ConfigError, match="needs --ratio"):
        spec_from_flags(solvents="EC:DMC")


def _bad_cases(model, tmp_path):
    s = lambda name: str(tmp_path / f"{name}.yaml")  # noqa: E731
    noli = tiny_checkpoint(tmp_path / "noli.pt", species=[1, 6, 8])
    return {
        "unknown solvent": (formulation(model, name="F", solvents="XYZsolvent"),
                            f"error: formulation 'F': unknown species or invalid SMILES 'XYZsolvent'; accepted: {ACCEPTED_SPECIES}"),
        "invalid smiles": (formulation(model, name="F", solvents=[{"smiles": "C1CC(", "fraction": 1.0}]),
                           f"error: formulation 'F': unknown species or invalid SMILES 'C1CC('; accepted: {ACCEPTED_SPECIES}"),
        "element outside scope": (formulation(model, name="F", solvents=[{"smiles": "CCCl"}]),
                                  "error: formulation 'F': species 'CCCl' contains element(s) Cl; accepted elements: "
                                  "H Li B C N O F P S"),
        "element outside model": (formulation(noli, name="F"),
                                  f"error: formulation 'F': species 'Li' contains element(s) Li that model {str(noli)!r} "
                                  "does not know (its species: H C O)"),
        "negative fraction": (formulation(model, name="F", solvents={"EC": -0.5, "DMC": 1.5}),
                              f"error: {s('negative fraction')}: formulation 'F': solvent 'EC': fraction -0.5 must be > 0"),
        "zero concentration": (formulation(model, name="F", concentration=0),
                               f"error: {s('zero concentration')}: formulation 'F': salt LiFSI needs a concentration > 0 "
                               "(molar); got 0.0"),
        "negative concentration": (formulation(model, name="F", concentration=-1.0),
                                   f"error: {s('negative concentration')}: formulation 'F': salt LiFSI needs a "
                                   "concentration > 0 (molar); got -1.0"),
        "zero molecules": (formulation(model, name="F", n_atoms=None, n_molecules=0),
                           f"error: {s('zero molecules')}: formulation 'F': n_molecules = 0 must be > 0"),
        "negative ratio": (formulation(model, name="F", solvents=["EC", "DMC"], ratio="1:-1"),
                           f"error: {s('negative ratio')}: formulation 'F': ratio '1:-1' must hold positive numbers, "
                           "e.g. '3:7'"),
        "ratios do not sum": (formulation(model, name="F", solvents=[{"name": "EC", "fraction": 0.5},
                                                                      {"name": "DMC", "fraction": 0.4}]),
                              f"error: {s('ratios do not sum')}: formulation 'F': solvent mole fractions 0.5 + 0.4 sum "
                              "to 0.9, not 1; give fractions that sum to 1 or a ratio like '1:1'"),
        "box too small": (formulation(model, name="F", solvents="DME", salt=None, concentration=None, n_atoms=None,
                                      n_molecules=4),
                          "error: formulation 'F': box edge 8.8 Å (64 atoms at ~0.86 g/cm³) is smaller than twice the "
                          "model cutoff (2 × 5 Å); use at least n_atoms: 100"),
        "zero temperature": (formulation(model, name="F", temperature_K=0),
                             f"error: {s('zero temperature')}: formulation 'F': temperature_K = 0.0 must be > 0 K"),
        "negative temperature": (formulation(model, name="F", temperature_K=-10),
                                 f"error: {s('negative temperature')}: formulation 'F': temperature_K = -10.0 must be > 0 K"),
    }


CASES = ["unknown solvent", "invalid smiles", "element outside scope", "element outside model", "negative fraction",
         "zero concentration", "negative concentration", "zero molecules", "negative ratio", "ratios do not sum",
         "box too small", "zero temperature", "negative temperature"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_before_md(case, model, tmp_path, capsys):
    data, expected = _bad_cases(model, tmp_path)[case]
    data = {k: v for k, v in data.items() if v is not None}
    spec = write_spec(tmp_path / f"{case}.yaml", [data])
    rc, err = run_cli([str(spec), "--db", str(tmp_path / "x.db")], capsys)
    assert rc == 2
    assert err == expected + "\n"
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "x_runs").exists()   # nothing started


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_and_bad_database(model, tmp_path, capsys):
    spec = write_spec(tmp_path / "ok.yaml", [formulation(model, name="F")])
    port = _closed_port()
    rc, err = run_cli([str(spec), "--db", str(tmp_path / "x.db"), "--scheduler", f"tcp://127.0.0.1:{port}"], capsys)
    assert rc == 2 and err == f"error: scheduler tcp://127.0.0.1:{port} is unreachable (Connection refused); " \
                              "start it or check the address\n"
    rc, err = run_cli([str(spec), "--db", str(tmp_path / "missing" / "x.db")], capsys)
    assert rc == 2 and err == f"error: database folder {str(tmp_path / 'missing')!r} does not exist; create it or " \
                              "choose another --db path\n"
    rc, err = run_cli([str(spec), "--db", "/proc/screen.db"], capsys)  # read-only even for root
    assert rc == 2 and err == "error: database folder '/proc' is not writable; choose another --db path\n"
    rc, err = run_cli([str(spec), "--db", str(tmp_path / "x.db"), "--scheduler", "nonsense"], capsys)
    assert rc == 2 and err == "error: scheduler address 'nonsense' is not of the form tcp://HOST:PORT\n"


def test_unknown_key_and_engine(model, tmp_path, capsys):
    spec = write_spec(tmp_path / "typo.yaml", [formulation(model, name="F", temprature_K=300)])
    rc, err = run_cli([str(spec), "--db", str(tmp_path / "x.db")], capsys)
    assert rc == 2 and err.startswith(f"error: {spec}: formulation 'F': unknown key 'temprature_K' (accepted: name, ")
    spec = write_spec(tmp_path / "engine.yaml", [formulation(model, name="F", engine="gromacs")])
    rc, err = run_cli([str(spec), "--db", str(tmp_path / "x.db")], capsys)
    assert rc == 2 and err == f"error: {spec}: formulation 'F': engine = 'gromacs' is not accepted; input should be " \
                              "'ase' or 'openmm'\n"


def test_example_spec_validates():
    from pathlib import Path

    from workflows.screening.composition import plan_formulation

    spec = load_spec(Path(__file__).resolve().parents[2] / "workflows" / "screening" / "example.yaml")
    plans = [plan_formulation(f) for f in spec.formulations]
    assert [p.name for p in plans] == ["LiPF6-EC-DMC", "LiFSI-DME", "LiTFSI-DOL-DME", "LiPF6-generated"]
    assert all(p.n_salt == 4 and 550 < p.n_atoms < 650 for p in plans)
