import json

import numpy as np
import pytest
import torch

from generative.checkpoint import load_generator, save_generator
from generative.config import GeneratorConfig, ModelConfig, TrainConfig, load_config
from generative.data import collate, read_crystal_csv, split_indices
from generative.models import build_model
from generative.sample import sample_crystals
from generative.train import dataset_statistics, train_generator
from mlmd.errors import CheckpointError, ConfigError, InputError, UnknownElementError

SMALL = dict(hidden=32, layers=2, n_freq=4, time_dim=8)


def _model(records, method="crysbfn", task="csp", **kw):
    sp, sc, pr = dataset_statistics(records, records)
    torch.manual_seed(0)
    return build_model(ModelConfig(method=method, task=task, **SMALL, **kw), sp, sc, pr)


def test_malformed_cif_skipped_and_counted(tiny_csv):
    ds = read_crystal_csv(tiny_csv)
    assert len(ds) == 12 and ds.n_skipped == 1 and ds.skipped == ["broken-1"]
    assert all(r.n_atoms == 5 for r in ds.records)
    assert len(ds.data_hash) == 64


def test_split_is_deterministic_and_disjoint():
    a, b = split_indices(100, 7), split_indices(100, 7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    allidx = np.concatenate(list(a.values()))
    assert sorted(allidx.tolist()) == list(range(100))
    assert [len(a[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert not np.array_equal(split_indices(100, 8)["test"], a["test"])


@pytest.mark.parametrize("method,task", [("crysbfn", "csp"), ("crysbfn", "gen"), ("diffcsp", "csp"), ("diffcsp", "gen")])
def test_tiny_training_lowers_loss(tiny_records, method, task):
    model = _model(tiny_records, method, task, timesteps=50)
    batch = collate(tiny_records, model.vocab_index)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def eval_loss():
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return float(np.mean([float(model.loss(batch, g)[0]) for _ in range(8)]))

    before = eval_loss()
    _train(model, batch, opt, steps=60, seed=0)
    assert eval_loss() < 0.8 * before


def test_train_generator_resumable_and_checkpoint_metadata(tmp_path, tiny_csv):
    cfg = GeneratorConfig(model=ModelConfig(**SMALL), train=TrainConfig(batch_size=4, max_steps=6, eval_every=3, max_minutes=5),
                          out=str(tmp_path / "run"))
    cfg.data.path = str(tiny_csv)
    cfg.data.split_fractions = (0.5, 0.25, 0.25)
    s1 = train_generator(cfg, log=lambda *_: None)
    assert s1["steps"] == 6
    cfg.train.max_steps = 9
    s2 = train_generator(cfg, log=lambda *_: None)  # resumes at step 6
    assert s2["steps"] == 9
    model = load_generator(tmp_path / "run" / "model.pt")
    meta = model.metadata
    assert meta["task"] == "csp" and meta["split_seed"] == 42 and meta["max_atoms"] == 5
    assert meta["split_sizes"] == {"train": 6, "val": 3, "test": 3} and len(meta["data_hash"]) == 64
    side = json.loads((tmp_path / "run" / "model.json").read_text())
    assert side["metadata"]["species"] == meta["species"]


def test_train_generator_init_from_starts_at_the_parent_weights(tmp_path, tiny_csv):
    cfg = GeneratorConfig(model=ModelConfig(**SMALL), train=TrainConfig(batch_size=4, max_steps=4, eval_every=2, max_minutes=5),
                          out=str(tmp_path / "parent"))
    cfg.data.path = str(tiny_csv)
    cfg.data.split_fractions = (0.5, 0.25, 0.25)
    train_generator(cfg, log=lambda *_: None)
    parent = load_generator(tmp_path / "parent" / "model.pt")
    child_cfg = cfg.model_copy(deep=True)
    child_cfg.out = str(tmp_path / "child")
    child_cfg.train.init_from = str(tmp_path / "parent" / "model.pt")
    child_cfg.train.lr = 1e-12  # the weights stay where init_from put them
    child_cfg.train.max_steps = 2
    train_generator(child_cfg, log=lambda *_: None)
    child = load_generator(tmp_path / "child" / "model.pt")
    for (name, a), b in zip(parent.state_dict().items(), child.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    train = child.metadata["train"]
    assert train["init_from"] == child_cfg.train.init_from and train["parent_train"]["steps"] == 4
    assert train["total_cpu_minutes"] == pytest.approx(train["parent_train"]["cpu_minutes"] + train["cpu_minutes"], abs=0.02)
    # a second generation counts the whole lineage (the child's record says it descends from 100 CPU-minutes)
    child.metadata["train"]["total_cpu_minutes"] = 100.0
    save_generator(child, tmp_path / "child" / "model.pt")
    grandchild_cfg = child_cfg.model_copy(deep=True)
    grandchild_cfg.out = str(tmp_path / "grandchild")
    grandchild_cfg.train.init_from = str(tmp_path / "child" / "model.pt")
    train_generator(grandchild_cfg, log=lambda *_: None)
    grandchild = load_generator(tmp_path / "grandchild" / "model.pt").metadata["train"]
    assert grandchild["total_cpu_minutes"] == pytest.approx(100.0 + grandchild["cpu_minutes"], abs=0.02)
    # a checkpoint of another network size cannot start this run
    other = child_cfg.model_copy(deep=True)
    other.model.hidden = 16
    other.out = str(tmp_path / "other")
    with pytest.raises(ConfigError, match="other model settings or species"):
        train_generator(other, log=lambda *_: None)


def test_sample_crystals_api_and_roundtrip(tmp_path, tiny_records):
    model = _model(tiny_records)
    path = save_generator(model, tmp_path / "m.pt")
    loaded = load_generator(path)
    comps = ["".join(s.symbol for s in r.to_structure().species) for r in tiny_records[:3]]
    a = sample_crystals(loaded, compositions=comps, steps=4, seed=3)
    b = sample_crystals(model, compositions=comps, steps=4, seed=3)
    assert len(a) == 3
    for x, y, r in zip(a, b, tiny_records[:3]):
        assert x.composition == r.to_structure().composition  # same order as the input
        np.testing.assert_allclose(x.frac_coords, y.frac_coords, atol=1e-5)


def test_generation_model_samples_n(tiny_records):
    model = _model(tiny_records, task="gen")
    out = sample_crystals(model, n=7, steps=3)
    assert len(out) == 7 and all(len(s) == 5 for s in out)


def test_bad_inputs(tmp_path, tiny_records):
    csp = _model(tiny_records)
    with pytest.raises(UnknownElementError, match="Uuo|Og|vocabulary"):
        sample_crystals(csp, compositions=["Og2"], steps=2)
    with pytest.raises(InputError, match="at most 5"):
        sample_crystals(csp, compositions=[tiny_records[0].to_structure().composition * 2], steps=2)
    for bad in (0, -3):
        with pytest.raises(InputError, match="steps"):
            sample_crystals(csp, compositions=["".join(s.symbol for s in tiny_records[0].to_structure().species)], steps=bad)
    with pytest.raises(InputError, match="formula"):
        sample_crystals(csp, compositions=["not a formula!"], steps=2)
    with pytest.raises(InputError, match="compositions"):
        sample_crystals(csp, n=3)
    gen = _model(tiny_records, task="gen")
    path = save_generator(gen, tmp_path / "gen.pt")
    with pytest.raises(CheckpointError, match="'gen' model"):
        load_generator(path, task="csp")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_generator(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="not found"):
        load_generator("no-such-model")
    diff = _model(tiny_records, method="diffcsp", timesteps=20)
    with pytest.raises(InputError, match="timesteps"):
        sample_crystals(diff, compositions=["".join(s.symbol for s in tiny_records[0].to_structure().species)], steps=10)


def test_config_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  method: vae\n")
    with pytest.raises(ConfigError, match="method"):
        load_config(p)
    p.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_crysbfn_first_lattice_step_is_trained_and_sampled_the_same_way(tiny_records):
    """Step 1 of the lattice flow: training and sampling feed the same input (the reference cell) and the prediction is
    the network's lattice, trained against the data lattice — not a zero cell that the first sender is drawn around."""
    model = _model(tiny_records, bfn_steps=1)  # every training crystal is at step 1
    batch = collate(tiny_records, model.vocab_index)
    seen = []
    hook = model.net.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    eye = torch.eye(3).expand(len(tiny_records), 3, 3)
    model.loss(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen[-1], eye)
    _train(model, batch, torch.optim.Adam(model.parameters(), lr=3e-3), steps=150, seed=1)
    n_atoms = torch.tensor([r.n_atoms for r in tiny_records])
    _, lat, _ = model.sample(n_atoms, batch.types, steps=1, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(seen[-1], eye)
    hook.remove()
    true = batch.lattice
    assert torch.linalg.det(lat).abs().min() > 1.0  # a real cell, not the zero matrix
    rel = (torch.linalg.norm(lat, dim=-1) / torch.linalg.norm(true, dim=-1) - 1).abs().mean()
    assert rel < 0.15, float(rel)


def _train(model, batch, opt, steps: int, seed: int) -> None:
    """``steps`` optimiser steps on ``model.loss`` of one batch."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss, _ = model.loss(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_crysbfn_final_prediction_reads_the_full_posterior(tiny_records):
    """final_prediction: sampling makes N updates and one more call at t = 1 (N + 1 calls), and training visits t = 1
    with the posterior of all N sender samples; without it, N calls and t stays below 1."""
    n_atoms = torch.tensor([r.n_atoms for r in tiny_records])
    for final, calls in ((False, 4), (True, 5)):
        model = _model(tiny_records, bfn_steps=4, final_prediction=final)
        batch = collate(tiny_records, model.vocab_index)
        times, concentrations = [], []

        def record(mod, args):
            times.append(float(args[4].max()))
            concentrations.append(float(torch.expm1(args[3]).max()))

        hook = model.net.register_forward_pre_hook(record)
        model.net.n_calls = 0
        model.sample(n_atoms, batch.types, steps=4, generator=torch.Generator().manual_seed(0))
        assert model.net.n_calls == calls
        assert times[-1] == pytest.approx(1.0 if final else 0.75)
        full = concentrations[-1]
        times.clear()
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            model.loss(batch, g)
        hook.remove()
        assert max(times) == pytest.approx(1.0 if final else 0.75)
        assert (full > 300) == final  # beta1 = 1000: N - 1 of the 4 accuracies sum to well under half of it


def test_crysbfn_collision_training_moves_one_atom_onto_another(tiny_records):
    """collision_rate: past step 1, one atom per chosen crystal gets another atom's input position (within the jitter),
    the rest of the inputs and every target stay; a rate of 0 leaves the loss's random stream untouched."""
    model = _model(tiny_records, task="gen")
    batch = collate(tiny_records, model.vocab_index)
    frac_in = torch.rand(batch.frac.shape, generator=torch.Generator().manual_seed(0))
    step = torch.full((batch.n_crystals,), 3)
    step[0] = 1
    moved = model._collide(frac_in, batch, step, 0.999, torch.Generator().manual_seed(1))
    changed = (moved != frac_in).any(-1)
    for c in range(batch.n_crystals):
        rows = (batch.batch == c).nonzero().squeeze(1)
        assert int(changed[rows].sum()) == (0 if c == 0 else 1)
        if c:
            a = rows[changed[rows]][0]
            d = moved[a] - frac_in[rows]
            d = (d - torch.round(d)).norm(dim=-1)
            d[rows == a] = float("inf")
            assert float(d.min()) < 0.2  # 0.03-wide jitter in each coordinate
    g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(model.loss(batch, g0)[0], model.loss(batch, g1, collision_rate=0.0)[0])


def test_collision_rate_is_refused_for_diffusion(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  method: diffcsp\ntrain:\n  collision_rate: 0.2\n")
    with pytest.raises(ConfigError, match=r"c.yaml': train.collision_rate applies to crysbfn models only$"):
        load_config(p)
    p.write_text("train:\n  collision_rate: 1.5\n")
    with pytest.raises(ConfigError, match="collision_rate"):
        load_config(p)
