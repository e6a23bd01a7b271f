"""Peer accuracy, run inside the MACE virtual environment (never imported by mlmd).

Trains MACE (64x0e, 2 interactions, r_max 5 Å, correlation 3, l_max 3) on the same frames and split as mlmd for a
fixed CPU-time budget (process CPU seconds, so the budget holds on a busy machine), then prints one JSON line with
its validation- and test-split errors.

Usage: python peer_mace_train.py --train a.xyz --valid b.xyz --test c.xyz --minutes 20 [--threads 1]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.io import read  # noqa: E402
from mace.data import AtomicData  # noqa: E402
from mace.data.utils import KeySpecification, config_from_atoms  # noqa: E402
from mace.tools import torch_geometric  # noqa: E402
from mace.tools.utils import AtomicNumberTable  # noqa: E402

from peer_mace import ELEMENTS, build_model  # noqa: E402


def load(path, z_table, keyspec):
    frames = read(path, ":")
    data = [AtomicData.from_config(config_from_atoms(a, key_specification=keyspec), z_table=z_table, cutoff=5.0) for a in frames]
    return frames, data


def evaluate(model, frames, data):
    loader = torch_geometric.dataloader.DataLoader(data, batch_size=16, shuffle=False)
    e_err, f_err = [], []
    for batch in loader:
        out = model(batch.to_dict(), training=False, compute_force=True)
        n = (batch.ptr[1:] - batch.ptr[:-1]).double()
        e_err.append(((out["energy"].detach().double() - batch.energy.double()) / n).abs().numpy())
        f_err.append((out["forces"].detach() - batch.forces).abs().numpy().ravel())
    e, f = np.concatenate(e_err), np.concatenate(f_err)
    return {"energy_mae_meV_per_atom": 1000 * float(e.mean()), "force_mae_meV_per_A": 1000 * float(f.mean()),
            "force_rmse_meV_per_A": 1000 * float(np.sqrt((f**2).mean())), "n_structures": len(frames)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", required=True)
    parser.add_argument("--valid", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    z_table = AtomicNumberTable(ELEMENTS)
    keyspec = KeySpecification(info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"})
    train_frames, train_data = load(args.train, z_table, keyspec)
    _, valid_data = load(args.valid, z_table, keyspec)
    test_frames, test_data = load(args.test, z_table, keyspec)

    # per-element reference energies by least squares, as mlmd does
    counts = np.array([[np.sum(a.numbers == z) for z in ELEMENTS] for a in train_frames], dtype=float)
    energies = np.array([a.info["REF_energy"] for a in train_frames])
    e0 = np.linalg.lstsq(counts, energies, rcond=None)[0]
    model = build_model()
    model.atomic_energies_fn.atomic_energies = torch.tensor(e0, dtype=torch.get_default_dtype())
    forces = np.concatenate([a.arrays["REF_forces"].ravel() for a in train_frames])
    model.scale_shift.scale = torch.tensor(float(np.sqrt(np.mean(forces**2))))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, amsgrad=True)
    loader = torch_geometric.dataloader.DataLoader(train_data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    start, epochs, steps = time.process_time(), 0, 0
    wall_start = time.time()
    budget = 60 * args.minutes
    while time.process_time() - start < budget:
        for batch in loader:
            progress = min(1.0, (time.process_time() - start) / budget)
            for group in optimizer.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * progress))
            out = model(batch.to_dict(), training=True, compute_force=True)
            n = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
            loss = 1.0 * (((out["energy"] - batch.energy) / n) ** 2).mean() * 100 + ((out["forces"] - batch.forces) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            steps += 1
            if time.process_time() - start > budget:
                break
        epochs += 1
    result = {"model": "MACE 64x0e, 2 interactions, r_max 5 (mace-torch)", "train_cpu_minutes": args.minutes,
              "train_wall_minutes": (time.time() - wall_start) / 60, "threads": args.threads,
              "epochs": epochs, "steps": steps, "n_parameters": sum(p.numel() for p in model.parameters()),
              "valid": evaluate(model, [None] * len(valid_data), valid_data), "test": evaluate(model, test_frames, test_data)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
