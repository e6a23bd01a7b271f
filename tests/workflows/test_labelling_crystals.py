"""mlmd label-crystals: frames, labels and splits of periodic crystals; resume; bad input (EMT as the reference)."""

import csv
import subprocess
import sys

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read
from pymatgen.io.ase import AseAtomsAdaptor

from mlmd import keys
from mlmd.errors import ConfigError
from workflows.labelling.crystals import load_crystal_label_config, run_label_crystals


def carbon_csv(path, n=10):
    rows = []
    for k in range(n):
        atoms = bulk("C", "diamond", a=3.5 + 0.02 * k)
        rows.append({"material_id": f"C-{k}", "cif": AseAtomsAdaptor.get_structure(atoms).to(fmt="cif")})
    rows.append({"material_id": "broken", "cif": "data_x\n_cell_length_a nonsense\n"})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["material_id", "cif"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def config(tmp_path, **kw):
    settings = dict(data=str(carbon_csv(tmp_path / "c.csv")), out=str(tmp_path / "out"), calculator="emt",
                    n_strained=1, n_rattled=1, md_steps=4, md_keep=2, shard_size=4, min_width=6.0)
    settings.update(kw)
    return load_crystal_label_config(None, **settings)


def test_frames_carry_labels_and_the_generators_split_and_a_rerun_resumes(tmp_path):
    cfg = config(tmp_path)
    manifest = run_label_crystals(cfg, progress=False)
    assert manifest["n_crystals"] == 10 and manifest["n_malformed_rows"] == 1
    frames = [a for p in sorted((tmp_path / "out").glob("shard_*.extxyz.gz")) for a in read(p, ":")]
    assert len(frames) == manifest["n_frames"] == 10 * 5  # given, strained, rattled, 2 MD snapshots
    kinds = {a.info[keys.CONFIG_TYPE] for a in frames}
    assert kinds == {"given", "strained", "rattled", "md"}
    for a in frames:
        assert a.pbc.all() and np.isfinite(a.info[keys.REF_ENERGY])
        assert a.arrays[keys.REF_FORCES].shape == (len(a), 3) and np.asarray(a.info[keys.REF_STRESS]).shape == (6,)
    # Same split as the crystal generators (seed 42): every crystal's frames share one split.
    from generative.data import read_crystal_csv, split_indices

    ds = read_crystal_csv(cfg.data)
    expected = {ds.records[i].material_id: s for s, idx in split_indices(len(ds), 42).items() for i in idx}
    assert all(a.info["split"] == expected[a.info["material_id"]] for a in frames)
    # A strained frame's label is EMT's own result on that frame.
    from ase.calculators.emt import EMT

    strained = next(a for a in frames if a.info[keys.CONFIG_TYPE] == "strained")
    check = strained.copy()
    check.calc = EMT()
    assert check.get_potential_energy() == pytest.approx(strained.info[keys.REF_ENERGY], abs=1e-6)
    # Rerun: finished shards are not rewritten.
    shard = tmp_path / "out" / "shard_000.extxyz.gz"
    mtime = shard.stat().st_mtime_ns
    assert run_label_crystals(cfg, progress=False)["n_frames"] == manifest["n_frames"]
    assert shard.stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="n_rattled differ"):
        run_label_crystals(config(tmp_path, n_rattled=3), progress=False)


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="n_strained"):
        config(tmp_path, n_strained=-1)
    with pytest.raises(ConfigError, match="unknown|extra|forbidden|Extra"):
        config(tmp_path, strain=0.1)
    (tmp_path / "nocif.csv").write_text("material_id,structure\nx,y\n")
    out = subprocess.run([sys.executable, "-m", "workflows.cli", "label-crystals", "--data", str(tmp_path / "nocif.csv"),
                          "--out", str(tmp_path / "o"), "--calculator", "emt", "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no 'cif' column" in out.stderr and "Traceback" not in out.stderr


def test_frames_are_supercells_rattled_per_image_and_large_ones_are_left_out(tmp_path):
    cfg = config(tmp_path, md_steps=0, md_keep=0, min_width=6.0)
    manifest = run_label_crystals(cfg, progress=False)
    frames = [a for p in sorted((tmp_path / "out").glob("shard_*.extxyz.gz")) for a in read(p, ":")]
    from workflows.crystals import perpendicular_widths

    for a in frames:
        assert len(a) == 2 * 27 and a.info["cell_atoms"] == 2  # fcc primitive cell (2.5 Å wide) -> 3x3x3
        assert perpendicular_widths(a.cell).min() >= 6.0 * (1 - cfg.strain_max) - 1e-9
    rattled = next(a for a in frames if a.info[keys.CONFIG_TYPE] == "rattled")
    forces = rattled.arrays[keys.REF_FORCES]
    assert np.abs(forces[0] - forces[2]).max() > 1e-3  # images of one atom move independently: distinct forces
    assert abs(forces.sum(axis=0)).max() < 1e-6 * len(rattled)
    # Supercells above the cap are left out; with none left the error says which limits to raise.
    capped = config(tmp_path, md_steps=0, md_keep=0, min_width=6.0, max_supercell_atoms=50, out=str(tmp_path / "cap"))
    with pytest.raises(ConfigError, match="fits max_atoms=24 and max_supercell_atoms=50"):
        run_label_crystals(capped, progress=False)
    assert manifest["n_left_out_too_many_atoms"] == 0


def test_an_interrupted_run_keeps_its_settings_on_record(tmp_path, monkeypatch):
    import json

    import workflows.labelling.crystals as lc

    real = lc._label_shard

    def stop_at_second_shard(job):
        if job[1] == 1:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(lc, "_label_shard", stop_at_second_shard)
    cfg = config(tmp_path, md_steps=0, md_keep=0)
    with pytest.raises(KeyboardInterrupt):
        run_label_crystals(cfg, progress=False)
    manifest = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert not manifest["complete"] and manifest["n_shards_done"] == 1 and manifest["n_frames"] == 4 * 3
    with pytest.raises(ConfigError, match="n_rattled differ"):
        run_label_crystals(config(tmp_path, md_steps=0, md_keep=0, n_rattled=2), progress=False)
    # Shards on disk that the manifest does not list (a stop between the two writes) are counted, not relabelled.
    monkeypatch.setattr(lc, "_label_shard", real)
    (tmp_path / "out" / "MANIFEST.json").unlink()
    full = run_label_crystals(cfg, progress=False)
    assert full["complete"] and full["n_shards_done"] == full["n_shards"] == 3 and full["n_frames"] == 10 * 3


def test_a_folder_of_cifs_is_labelled_and_unreadable_files_are_counted(tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    for k in range(4):
        AseAtomsAdaptor.get_structure(bulk("C", "diamond", a=3.5 + 0.05 * k)).to(filename=str(folder / f"{k:05d}.cif"))
    (folder / "00009.cif").write_text("data_x\n_cell_length_a nonsense\n")
    manifest = run_label_crystals(config(tmp_path, data=str(folder), md_steps=0, md_keep=0, split=(0.5, 0.25, 0.25)),
                                  progress=False)
    assert manifest["n_crystals"] == 4 and manifest["n_malformed_rows"] == 1 and manifest["n_frames"] == 4 * 3
    frames = [a for p in sorted((tmp_path / "out").glob("shard_*.extxyz.gz")) for a in read(p, ":")]
    assert sorted({int(a.info["material_id"]) for a in frames}) == [0, 1, 2, 3]  # file stems (extxyz reads them as ints)
