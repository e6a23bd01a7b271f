import json
import re

import numpy as np
import pytest
import torch
from ase.calculators.lj import LennardJones
from ase.io import write

from mlmd import keys
from mlmd.errors import ConfigError, InputError
from potentials.training import load_train_config, train
from tests.conftest import water_cluster

TINY_MODEL = {"num_features": 16, "num_rbf": 8, "num_layers": 2, "num_heads": 2, "dispersion": False}


def labelled_clusters(path, n=24, seed=0, with_charges=True):
    """Rattled water clusters labelled by a smooth analytic reference (LJ), with fixed partial charges."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = water_cluster(2 + k % 2, seed=k)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        atoms.calc = LennardJones(sigma=0.9, epsilon=0.05, rc=4.5, smooth=True)
        atoms.info[keys.REF_ENERGY] = atoms.get_potential_energy()
        atoms.arrays[keys.REF_FORCES] = atoms.get_forces()
        if with_charges:
            atoms.arrays[keys.REF_CHARGES] = np.where(atoms.numbers == 8, -0.8, 0.4)
        atoms.info[keys.CONFIG_TYPE] = "dimer" if k % 2 == 0 else "trimer"
        atoms.calc = None
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


def test_tiny_training_run_lowers_loss_and_resumes(tmp_path):
    data = labelled_clusters(tmp_path / "data.xyz")
    cfg = load_train_config(None, {"data": [str(data)], "output": str(tmp_path / "run"), "model": TINY_MODEL,
                                   "epochs": 16, "batch_size": 4, "lr": 5e-3, "warmup_steps": 2, "ema_decay": 0.5,
                                   "weights": {"force_huber_eV_per_A": None},
                                   "split": [0.7, 0.15, 0.15]})
    result = train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 16
    assert np.mean([r["train_loss"] for r in log[-3:]]) < 0.3 * np.mean([r["train_loss"] for r in log[:3]])
    assert log[-1]["valid_force_mae_meV_per_A"] < 0.65 * log[0]["valid_force_mae_meV_per_A"]
    assert set(result["test"]["by_config_type"]) <= {"dimer", "trimer"}
    # resume: more epochs continue from the saved step count
    cfg2 = cfg.model_copy(update={"epochs": 18})
    train(cfg2, progress=False)
    log2 = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log2] == list(range(1, 19))
    assert log2[16]["step"] == log[-1]["step"] + log[-1]["step"] // 16


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: [a.xyz]\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        load_train_config(path)
    path.write_text("data: [a.xyz]\nepochs: many\n")
    with pytest.raises(ConfigError, match="setting 'epochs': Input should be a valid integer"):
        load_train_config(path)


@pytest.mark.parametrize("name, message", [
    ("tpu", "device 'tpu' is not supported; use cpu, cuda or cuda:N"),
    ("mps", "device 'mps' is not supported; use cpu, cuda or cuda:N"),
    pytest.param("cuda", "device 'cuda' was requested but this torch build sees no CUDA GPU; use device: cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_unusable_training_device_is_rejected_before_any_work(tmp_path, name, message):
    data = labelled_clusters(tmp_path / "d.extxyz", n=4)
    cfg = load_train_config(None, {"data": [str(data)], "output": str(tmp_path / "run"), "device": name})
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_missing_reference_keys_are_reported(tmp_path):
    data = labelled_clusters(tmp_path / "data.xyz", n=2)
    from ase.io import read

    frames = read(data, ":")
    del frames[1].info[keys.REF_ENERGY]
    write(tmp_path / "bad.xyz", frames, format="extxyz")
    cfg = load_train_config(None, {"data": [str(tmp_path / "bad.xyz")], "output": str(tmp_path / "run")})
    with pytest.raises(InputError, match="structure 1 has no 'REF_energy'"):
        train(cfg, progress=False)


def test_split_follows_per_cluster_labels_else_seeded_random():
    from ase import Atoms

    from potentials.training import TrainConfig, _split

    frames = [Atoms("H") for _ in range(6)]
    for atoms, label in zip(frames, ["train", "val", "test", "train", "valid", "train"]):
        atoms.info["split"] = label
    train_idx, valid_idx, test_idx = _split(frames, TrainConfig(data=["x"]))
    assert train_idx.tolist() == [0, 3, 5] and valid_idx.tolist() == [1, 4] and test_idx.tolist() == [2]
    del frames[0].info["split"]
    parts = _split(frames, TrainConfig(data=["x"], split=(0.5, 0.25, 0.25), seed=3))
    again = _split(frames, TrainConfig(data=["x"], split=(0.5, 0.25, 0.25), seed=3))
    assert [p.tolist() for p in parts] == [p.tolist() for p in again]
    assert sorted(np.concatenate(parts).tolist()) == list(range(6))


def test_charged_cluster_without_total_charge_is_rejected(tmp_path):
    from ase.io import read

    from mlmd.data import read_frames

    data = labelled_clusters(tmp_path / "data.xyz", n=2)
    frames = read(data, ":")
    frames[1].arrays[keys.REF_CHARGES] = frames[1].arrays[keys.REF_CHARGES] + 1.0 / len(frames[1])
    write(tmp_path / "charged.xyz", frames, format="extxyz")
    with pytest.raises(InputError, match=r"structure 1 has reference charges summing to \+1.00 e but no 'total_charge'"):
        read_frames(tmp_path / "charged.xyz")
    frames[1].info[keys.TOTAL_CHARGE] = 1
    write(tmp_path / "charged.xyz", frames, format="extxyz")
    assert len(read_frames(tmp_path / "charged.xyz")) == 2


def test_evaluation_reports_stress_error_only_when_asked():
    from mlmd.data import collate_samples, make_sample
    from mlmd.units import BAR_PER_EV_PER_A3
    from potentials.bamboo import BambooConfig, BambooPotential
    from potentials.training import evaluate_samples
    from tests.conftest import periodic_box

    model = BambooPotential(BambooConfig(**TINY_MODEL, coulomb=False)).double()
    atoms = periodic_box(seed=3)
    sample = make_sample(atoms, model.cutoff, model.species)
    graph, _ = collate_samples([sample], dtype=torch.float64)
    out = model(graph, compute_forces=True, compute_stress=True)
    own = out[keys.STRESS][0].detach().numpy()
    shift = 0.01  # eV/Å³ on every component
    atoms.info[keys.REF_ENERGY] = float(out[keys.ENERGY][0].detach())
    atoms.info[keys.REF_STRESS] = own + shift
    labelled = make_sample(atoms, model.cutoff, model.species)
    result = evaluate_samples(model, [labelled], dtype=torch.float64, stress=True)
    assert result["stress_mae_GPa"] == pytest.approx(shift * BAR_PER_EV_PER_A3 / 1e4, rel=1e-6)
    assert result["by_config_type"]["default"]["stress_mae_GPa"] == pytest.approx(result["stress_mae_GPa"])
    assert "stress_mae_GPa" not in evaluate_samples(model, [labelled], dtype=torch.float64)  # `mlmd eval`'s exact keys


def test_finetuning_may_switch_on_repulsion_but_not_change_the_architecture(tmp_path):
    from mlmd.checkpoint import load_potential, save_checkpoint
    from potentials.bamboo import BambooPotential

    data = labelled_clusters(tmp_path / "data.xyz", n=8)
    start = BambooPotential(TINY_MODEL)
    start.set_reference_energies({1: -1.0, 8: -2.0}, 0.1)
    save_checkpoint(start, tmp_path / "start.pt")
    base = {"data": [str(data)], "output": str(tmp_path / "run"), "init_from": str(tmp_path / "start.pt"),
            "epochs": 1, "batch_size": 4, "split": [0.7, 0.15, 0.15]}
    train(load_train_config(None, {**base, "model": {"repulsion": True}}), progress=False)
    tuned = load_potential(tmp_path / "run" / "best.pt")
    assert tuned.config["repulsion"] and tuned.config["num_features"] == 16
    assert tuned.config["reference_energies"][8] == -2.0  # kept, not refitted
    with pytest.raises(ConfigError, match="model.num_features cannot change when fine-tuning from .*; a fine-tuning "
                                          "run may change only coulomb_r0, dispersion, "):
        train(load_train_config(None, {**base, "output": str(tmp_path / "run2"), "model": {"num_features": 32}}),
              progress=False)
    # a learned excess-charge share may be added (it starts at equal shares), not taken away
    train(load_train_config(None, {**base, "output": str(tmp_path / "run3"), "model": {"excess_charge": "learned"}}),
          progress=False)
    learned = load_potential(tmp_path / "run3" / "best.pt")
    assert learned.config["excess_charge"] == "learned" and learned.excess_head is not None
    with pytest.raises(ConfigError, match="model.excess_charge cannot go from 'learned' to 'uniform'"):
        train(load_train_config(None, {**base, "init_from": str(tmp_path / "run3" / "best.pt"),
                                       "output": str(tmp_path / "run4"), "model": {"excess_charge": "uniform"}}),
              progress=False)
    # carried vector messages likewise (their filter starts at zero)
    train(load_train_config(None, {**base, "output": str(tmp_path / "run5"), "model": {"vector_messages": True}}),
          progress=False)
    grown = load_potential(tmp_path / "run5" / "best.pt")
    assert grown.config["vector_messages"] and grown.layers[1].radial_vv is not None
    with pytest.raises(ConfigError, match="model.vector_messages cannot go from True to False"):
        train(load_train_config(None, {**base, "init_from": str(tmp_path / "run5" / "best.pt"),
                                       "output": str(tmp_path / "run6"), "model": {"vector_messages": False}}),
              progress=False)
    # the per-atom MLPs may be widened (new units start silent), not narrowed
    train(load_train_config(None, {**base, "output": str(tmp_path / "run7"), "model": {"mlp_width": 48}}), progress=False)
    wide = load_potential(tmp_path / "run7" / "best.pt")
    assert wide.config["mlp_width"] == 48 and wide.layers[0].update[0].out_features == 48
    with pytest.raises(ConfigError, match="model.mlp_width cannot go from 48 to 40 .*it may only grow"):
        train(load_train_config(None, {**base, "init_from": str(tmp_path / "run7" / "best.pt"),
                                       "output": str(tmp_path / "run8"), "model": {"mlp_width": 40}}),
              progress=False)


def test_data_weights_set_how_often_each_path_is_drawn_per_epoch(tmp_path):
    from mlmd.data import split_indices
    from potentials.training import _epoch_draws

    rng = np.random.default_rng(0)
    draws = [np.bincount(_epoch_draws(np.array([1.0, 3.0, 0.5] * 100), rng), minlength=300) for _ in range(40)]
    counts = np.array(draws).reshape(40, 100, 3)
    assert (counts[..., 0] == 1).all() and (counts[..., 1] == 3).all()
    assert set(np.unique(counts[..., 2])) == {0, 1} and abs(counts[..., 2].mean() - 0.5) < 0.05
    whole = np.array([1.0, 2.0, 1.0])  # whole weights use no random numbers
    assert (np.sort(_epoch_draws(whole, rng)) == [0, 1, 1, 2]).all()

    small = labelled_clusters(tmp_path / "small.xyz", n=8)
    large = labelled_clusters(tmp_path / "large.xyz", n=16, seed=1)
    base = {"data": [str(small), str(large)], "model": TINY_MODEL, "epochs": 1, "batch_size": 4,
            "split": [0.75, 0.125, 0.125], "output": str(tmp_path / "run")}
    train(load_train_config(None, {**base, "data_weights": {str(small): 4.0}}), progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_idx = split_indices(24, (0.75, 0.125, 0.125), seed=0)[0]
    n_draws = len(train_idx) + 3 * int((train_idx < 8).sum())  # the small file's training frames count four times
    assert 0 < (train_idx < 8).sum() and log[0]["step"] == -(-n_draws // 4)


def test_every_process_gets_a_share_of_every_batch():
    from potentials.training import _rank_batches

    for n in range(0, 30):
        order = np.random.default_rng(n).permutation(n)
        for world in (1, 2, 3):
            shares = [_rank_batches(order, 4, rank, world) for rank in range(world)]
            assert len({len(s) for s in shares}) == 1  # the same number of steps on every process
            assert all(len(chunk) > 0 for s in shares for chunk in s)
            drawn = [k for s in shares for chunk in s for k in chunk]
            assert sorted(drawn) == sorted(order[: n - n % world])  # each draw once; fewer than `world` dropped


def test_data_weights_must_name_a_data_path_and_be_positive(tmp_path):
    with pytest.raises(ConfigError, match=r"^data_weights names 'b.xyz', which is not in data \(a.xyz\)$"):
        load_train_config(None, {"data": ["a.xyz"], "data_weights": {"b.xyz": 2.0}})
    with pytest.raises(ConfigError, match=r"^data_weights\['a.xyz'\] = 0.0; a sampling weight must be a finite "):
        load_train_config(None, {"data": ["a.xyz"], "data_weights": {"a.xyz": 0.0}})


def test_evaluation_reports_the_signed_energy_offset_only_when_asked():
    from mlmd.data import collate_samples, make_sample
    from potentials.bamboo import BambooConfig, BambooPotential
    from potentials.training import evaluate_samples
    from tests.conftest import water_cluster

    model = BambooPotential(BambooConfig(**TINY_MODEL)).double()
    labelled = []
    for k, offset in enumerate((+0.002, -0.004)):  # reference above / below the model, eV/atom
        atoms = water_cluster(2, seed=k)
        graph, _ = collate_samples([make_sample(atoms, model.cutoff, model.species)], dtype=torch.float64)
        own = float(model(graph, compute_forces=True)[keys.ENERGY][0].detach())
        atoms.info[keys.REF_ENERGY] = own - offset * len(atoms)
        labelled.append(make_sample(atoms, model.cutoff, model.species))
    result = evaluate_samples(model, labelled, dtype=torch.float64, bias=True)
    assert result["energy_mean_error_meV_per_atom"] == pytest.approx(-1.0, abs=1e-6)
    assert result["energy_mae_meV_per_atom"] == pytest.approx(3.0, abs=1e-6)
    assert "energy_mean_error_meV_per_atom" not in evaluate_samples(model, labelled, dtype=torch.float64)


def test_time_budget_schedule_decays_every_step_to_min_lr_at_the_budget():
    from potentials.training import _lr_at

    cfg = load_train_config(None, {"data": ["x.xyz"], "lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 10, "epochs": 1000,
                                   "max_time_min": 10})
    total = 10**6  # the epoch count alone would hardly decay
    assert _lr_at(0, total, cfg) == pytest.approx(1e-4)  # warm-up
    assert _lr_at(500, total, cfg) == pytest.approx(1e-3, rel=1e-3)  # no rate measured yet: epochs decide
    rate = 2.0  # steps per second: the 10-minute budget is 1,200 steps
    lrs = [_lr_at(step, total, cfg, rate) for step in range(10, 1300, 10)]
    assert all(a > b for a, b in zip(lrs[:119], lrs[1:120])) and lrs[0] == pytest.approx(1e-3)  # steps 10..1200
    assert _lr_at(605, total, cfg, rate) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5), rel=1e-6)  # half-way
    assert _lr_at(1200, total, cfg, rate) == pytest.approx(1e-5) and _lr_at(1290, total, cfg, rate) == pytest.approx(1e-5)
