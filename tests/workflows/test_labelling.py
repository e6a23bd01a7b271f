"""mlmd label: species registry, packmol clusters, sampling/labelling, resume, SCF-failure path, CLI errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from mlmd import keys
from mlmd.errors import ConfigError, InputError, UnknownElementError
from workflows.cli import main
from workflows.labelling.clusters import KINDS, ClusterSpec, build_cluster, sample_spec
from workflows.labelling.config import build_config, load_config
from workflows.labelling.label import label_cluster, run_label
from workflows.labelling.sampling import Reference
from workflows.labelling.species import (
    SALTS,
    SOLVENTS,
    molecule_atoms,
    resolve_salt,
    resolve_species,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture
def dummy_calcs(monkeypatch):
    monkeypatch.syspath_prepend(str(DATA))
    return "labelling_dummy_calcs"


def tiny_config(tmp_path, **extra):
    """One DMC molecule (12 atoms), initial frame + one MD step: 2 frames per cluster."""
    data = {
        "out": str(tmp_path / "out"),
        "n_clusters": 1,
        "shard_size": 2,
        "min_atoms": 1,
        "max_atoms": 12,
        "solvents": ["DMC"],
        "salts": ["LiBF4"],
        "kinds": {"solvent": 1.0},
        "sampling": {"md_steps": 1, "keep_every": 1, "n_compressed": 0, "n_expanded": 0, "n_rattled": 0},
    }
    data.update(extra)
    return build_config(data)


# ----------------------------------------------------------------------------------------------- species
def test_registered_names_and_smiles_resolve():
    ec = resolve_species("EC")
    assert ec.charge == 0 and ec.name == "EC"
    assert resolve_species("ec") == ec
    assert resolve_species("C1COC(=O)O1").name == "EC"  # SMILES of a registered solvent gets its name
    other = resolve_species("CCOCC")  # a generated solvent, given as SMILES
    assert other.name == "CCOCC" and other.charge == 0
    assert resolve_species("PF6").charge == -1 and resolve_species("Li").charge == 1
    for name in SOLVENTS:
        assert len(molecule_atoms(resolve_species(name))) >= 8
    li, pf6 = resolve_salt("LiPF6")
    assert (li.name, pf6.name) == ("Li", "PF6")
    assert {resolve_salt(s)[1].name for s in SALTS} == {"PF6", "BF4", "FSI", "TFSI"}


def test_ion_templates_are_sane():
    pf6 = molecule_atoms(resolve_species("PF6"))
    d = pf6.get_distances(0, range(1, 7))
    assert np.allclose(d, 1.62, atol=0.01)
    tfsi = molecule_atoms(resolve_species("TFSI"))
    assert tfsi.get_chemical_formula() == "C2F6NO4S2"


def test_bad_species_errors_are_one_line():
    with pytest.raises(InputError, match=r"^unknown species or invalid SMILES 'XYZ'; accepted: EC, PC"):
        resolve_species("XYZ")
    with pytest.raises(InputError, match="invalid SMILES 'C1CC'"):
        resolve_species("C1CC")
    with pytest.raises(UnknownElementError) as exc:
        resolve_species("CC[Si](C)C")
    assert str(exc.value) == "species 'CC[Si](C)C' contains element(s) Si; accepted elements: H Li B C N O F P S"
    with pytest.raises(InputError, match="unknown salt 'NaCl'; accepted: LiPF6, LiBF4, LiFSI, LiTFSI"):
        resolve_salt("NaCl")


# ----------------------------------------------------------------------------------------------- clusters
def test_sample_spec_kinds_respect_window_and_charge():
    rng = np.random.default_rng(0)
    solvents = [resolve_species(s) for s in SOLVENTS]
    salts = [resolve_salt(s) for s in SALTS]
    charges = {}
    for kind in KINDS:
        for _ in range(15):
            spec = sample_spec(kind, rng, solvents, salts, 20, 100)
            assert spec.n_atoms <= 100, (kind, spec.composition)
            assert abs(spec.charge) <= 1
            charges.setdefault(kind, set()).add(spec.charge)
    assert charges["solvent"] == {0} and charges["mixture"] == {0} and charges["ion_pair"] == {0}
    assert charges["li_shell"] == {1} and charges["anion_shell"] == {-1}


def test_build_cluster_composition_charge_and_mol_id():
    li, ec = resolve_species("Li"), resolve_species("EC")
    spec = ClusterSpec("li_shell", [(li, 1), (ec, 2)], center_first=True)
    atoms = build_cluster(spec, seed=3)
    assert len(atoms) == 21 and atoms.get_chemical_symbols()[0] == "Li"
    assert list(np.bincount(atoms.arrays[keys.MOL_ID])) == [1, 10, 10]
    assert atoms.info[keys.TOTAL_CHARGE] == 1 and atoms.info[keys.CONFIG_TYPE] == "li_shell"
    assert not atoms.pbc.any() and not atoms.cell.any()
    d = atoms.get_all_distances()
    mol = atoms.arrays[keys.MOL_ID]
    inter = d[mol[:, None] != mol[None, :]]
    assert inter.min() > 1.5  # packmol tolerance (2 Å) up to its convergence slack
    again = build_cluster(spec, seed=3)
    assert np.allclose(again.positions, atoms.positions)  # deterministic per seed


def test_a_lone_long_molecule_fits_its_sphere():
    triglyme = resolve_species("COCCOCCOCCOC")  # ~14 Å long, wider than the sphere its volume alone would give
    atoms = build_cluster(ClusterSpec("solvent", [(triglyme, 1)]), seed=11)
    assert len(atoms) == 30 and set(atoms.arrays[keys.MOL_ID]) == {0}


# ----------------------------------------------------------------------------------------------- labelling
def test_two_frame_run_writes_valid_extxyz(tmp_path):
    cfg = tiny_config(tmp_path)
    summary = run_label(cfg, progress=False)
    assert summary.frames == 2 and summary.scf_failures == 0
    shard = tmp_path / "out" / "shard_000.extxyz.gz"
    frames = read(shard, index=":")
    assert len(frames) == 2
    for a in frames:
        assert a.get_chemical_formula() == "C3H6O3"
        assert isinstance(a.info[keys.REF_ENERGY], float) and a.info[keys.REF_ENERGY] < -100
        assert a.arrays[keys.REF_FORCES].shape == (12, 3)
        assert a.arrays[keys.REF_CHARGES].shape == (12,)
        assert abs(a.arrays[keys.REF_CHARGES].sum()) < 1e-4
        assert np.asarray(a.info[keys.REF_DIPOLE]).shape == (3,)
        assert a.info[keys.TOTAL_CHARGE] == 0 and a.info[keys.CONFIG_TYPE] == "solvent"
        assert (a.arrays[keys.MOL_ID] == 0).all() and not a.pbc.any()
    assert [a.info["sampling"] for a in frames] == ["initial", "md"]
    manifest = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert manifest["totals"]["frames"] == 2 and manifest["complete"]
    assert manifest["frames_by_config_type"] == {"solvent": 2}
    assert manifest["shards"][0]["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert manifest["atoms_by_element"] == {"C": 6, "H": 12, "O": 6}


def test_resume_appends_nothing_then_extends(tmp_path, dummy_calcs):
    cfg = tiny_config(tmp_path, calculator=f"{dummy_calcs}:soft_spheres")
    first = run_label(cfg, progress=False)
    shard = tmp_path / "out" / "shard_000.extxyz.gz"
    digest = shard.read_bytes()
    again = run_label(cfg, progress=False)
    assert again.clusters_done == 0 and again.skipped_existing == 1 and shard.read_bytes() == digest
    # more clusters reopen the shard and append only the new one; cluster 0 is identical
    more = run_label(cfg.model_copy(update={"n_clusters": 2}), progress=False)
    assert more.clusters_done == 1
    frames = read(shard, index=":")
    assert [a.info["cluster_id"] for a in frames] == [0, 0, 1, 1]
    assert first.frames == 2
    # a fresh output with the same settings reproduces the same shard bytes
    fresh = run_label(cfg.model_copy(update={"n_clusters": 2, "out": tmp_path / "b"}), progress=False)
    assert fresh.frames == 4 and (tmp_path / "b" / "shard_000.extxyz.gz").read_bytes() == shard.read_bytes()


def test_changed_settings_refuse_to_resume(tmp_path, dummy_calcs):
    cfg = tiny_config(tmp_path, calculator=f"{dummy_calcs}:soft_spheres")
    run_label(cfg, progress=False)
    with pytest.raises(ConfigError, match="different settings \\(seed\\)"):
        run_label(cfg.model_copy(update={"seed": 5}), progress=False)


def test_scf_failures_are_skipped_and_counted(tmp_path, dummy_calcs):
    cfg = tiny_config(tmp_path, calculator=f"{dummy_calcs}:never_converges")
    summary = run_label(cfg, progress=False)
    assert summary.frames == 0 and summary.scf_failures == 1  # MD stops at the first failed step
    assert (tmp_path / "out" / "shard_000.extxyz.gz").exists()  # an empty but complete shard
    manifest = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert manifest["totals"]["frames"] == 0 and manifest["reference_stats"]["scf_failures"] == 1


def test_retry_with_gentler_settings_recovers(dummy_calcs):
    import importlib
    import sys

    sys.modules.pop(dummy_calcs, None)
    mod = importlib.import_module(dummy_calcs)
    atoms = molecule_atoms(resolve_species("DMC"))
    ref = Reference(mod.flaky, 0, retry={"max_iterations": 1000, "mixer_damping": 0.2})
    res = ref(atoms)
    assert res is not None and ref.stats.recovered == 1 and ref.stats.scf_failures == 0
    nan = Reference(mod.nan_energy, 0)
    assert nan(atoms) is None and nan.stats.scf_failures == 1  # non-finite results never kept
    never = Reference(mod.never_converges, 0, retry={"mixer_damping": 0.2})
    assert never(atoms) is None and never.stats.calls == 2


def test_label_cluster_with_sampler_calculator(tmp_path, dummy_calcs):
    cfg = tiny_config(tmp_path, sampler=f"{dummy_calcs}:soft_spheres", calculator=f"{dummy_calcs}:soft_spheres",
                      sampling={"md_steps": 4, "keep_every": 2, "n_compressed": 0, "n_expanded": 0,
                                "n_rattled": 1})
    res = label_cluster(cfg, 0)
    assert res.record["error"] is None
    assert [a.info["sampling"] for a in res.frames] == ["initial", "md", "md", "rattled"]
    assert res.record["stats"]["sampler_calls"] == 5 and res.record["stats"]["calls"] == 4


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_calculator_emt_from_yaml(tmp_path, capsys):
    cfg = tiny_config(tmp_path, calculator="ase.calculators.emt:EMT")
    path = tmp_path / "label.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["label", str(path), "--no-progress", "--n-clusters", "1"]) == 0
    frames = read(tmp_path / "out" / "shard_000.extxyz.gz", index=":")
    assert len(frames) == 2 and keys.REF_CHARGES not in frames[0].arrays  # EMT has no charges


@pytest.mark.parametrize(
    "args, message",
    [
        (["--solvent", "XYZ"], "error: unknown species or invalid SMILES 'XYZ'; accepted: EC, PC, DMC"),
        (["--solvent", "C1CC"], "error: unknown species or invalid SMILES 'C1CC'"),
        (["--solvent", "C[Si](C)(C)C"], "error: species 'C[Si](C)(C)C' contains element(s) Si; accepted elements: H Li B C N O F P S"),
        (["--salt", "NaPF6"], "error: unknown salt 'NaPF6'; accepted: LiPF6, LiBF4, LiFSI, LiTFSI"),
        (["--min-atoms", "50", "--max-atoms", "10"], "error: invalid label config: min_atoms (50) must not exceed max_atoms (10)"),
        (["--workers", "0"], "error: invalid label config: workers: Input should be greater than or equal to 1"),
        (["--calculator", "no_such_module_xyz:Calc"], "error: cannot import module 'no_such_module_xyz'"),
        (["--solvent", "[O-]C=O"], "error: solvent 'O=C[O-]' has charge -1; solvents must be neutral molecules"),
        (["--solvent", "DEC", "--max-atoms", "12", "--min-atoms", "5"], "error: solvent 'DEC' has 18 atoms, more than max_atoms (12)"),
    ],
)
def test_cli_bad_input_exit_2(tmp_path, capsys, args, message):
    code = main(["label", "--out", str(tmp_path / "o"), "--n-clusters", "1", "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_unknown_config_key_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("n_clusters: 2\nbogus_key: 1\n")
    assert main(["label", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid label config: bogus_key: Extra inputs are not permitted")
    assert main(["label", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        load_config(None, kinds={"plasma": 1.0})


@pytest.mark.slow
def test_two_workers_match_one_worker(tmp_path, dummy_calcs):
    cfg = tiny_config(tmp_path, calculator=f"{dummy_calcs}:soft_spheres", n_clusters=4, shard_size=2)
    run_label(cfg, progress=False)
    par = cfg.model_copy(update={"out": tmp_path / "par", "workers": 2})
    summary = run_label(par, progress=False)
    assert summary.frames == 8
    for k in (0, 1):
        name = f"shard_{k:03d}.extxyz.gz"
        assert (tmp_path / "par" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()
