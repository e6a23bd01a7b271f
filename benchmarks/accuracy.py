"""Accuracy: the bundled potential on the project's test split and on the transfer set (solvents outside the
training list), side by side with MACE (64x0e, 2 interactions) trained on the same frames for a fixed CPU budget.

    .venv/bin/python -m benchmarks.accuracy [--mace-minutes 20] [--train-frames N] [--threads 2]
        [--out benchmarks/results/accuracy.json]

``--mace-minutes 0`` skips the peer. The peer runs in its own virtual environment (see benchmarks/speed.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IONS = {"Li", "PF6", "BF4", "FSI", "TFSI"}
FORCE_BINS_EV_PER_A = (0.0, 1.0, 2.0, 4.0, 8.0, float("inf"))


def force_error_breakdown(model, samples, batch_size: int = 16) -> dict:
    """Force MAE (meV/Å, mean over components) by element and by the reference force's magnitude |F| (eV/Å).

    Each bin also gives its share of atoms and its contribution to the overall MAE (share × bin MAE), which shows
    where the error sits: many moderately wrong light atoms or a few badly wrong ones.
    """
    import numpy as np
    from ase.data import chemical_symbols

    from mlmd import keys
    from mlmd.data import collate_samples

    numbers, errors, magnitudes = [], [], []
    model.eval()
    for start in range(0, len(samples), batch_size):
        graph, targets = collate_samples(samples[start:start + batch_size])
        out = model(graph, compute_forces=True)
        errors.append((out[keys.FORCES].detach() - targets[keys.FORCES]).abs().mean(dim=1).numpy())
        magnitudes.append(targets[keys.FORCES].norm(dim=1).numpy())
        numbers.append(graph.atomic_numbers.numpy())
    numbers, errors, magnitudes = (np.concatenate(x) for x in (numbers, errors, magnitudes))
    by_element = {chemical_symbols[z]: {"n_atoms": int((numbers == z).sum()),
                                        "force_mae_meV_per_A": 1000.0 * float(errors[numbers == z].mean())}
                  for z in np.unique(numbers)}
    by_magnitude = {}
    for low, high in zip(FORCE_BINS_EV_PER_A[:-1], FORCE_BINS_EV_PER_A[1:]):
        inside = (magnitudes >= low) & (magnitudes < high)
        if inside.any():
            by_magnitude[f"{low:g}-{high:g}"] = {
                "share_of_atoms": float(inside.mean()),
                "force_mae_meV_per_A": 1000.0 * float(errors[inside].mean()),
                "contribution_meV_per_A": 1000.0 * float(errors[inside].sum() / len(errors))}
    return {"by_element": by_element, "by_reference_force_magnitude_eV_per_A": by_magnitude}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bamboo-electrolyte")
    parser.add_argument("--data", default=str(ROOT / "data" / "electrolyte"))
    parser.add_argument("--transfer", default=str(ROOT / "data" / "electrolyte_transfer"))
    parser.add_argument("--mace-minutes", type=float, default=20.0, help="CPU minutes of MACE training (0: skip)")
    parser.add_argument("--mace-result", default=None, help="reuse a JSON line printed by peer_mace_train.py")
    parser.add_argument("--write-splits", default=None, help="only write train/valid/test extxyz into this folder")
    parser.add_argument("--train-frames", type=int, default=0,
                        help="also evaluate the first N training frames (how well the model fits its own data)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "accuracy.json"))
    args = parser.parse_args()

    import torch
    from ase.io import write

    from mlmd.checkpoint import load_potential
    from mlmd.data import make_sample, read_frames
    from potentials.bundle import data_test_metrics
    from potentials.training import evaluate_samples, split_of

    torch.set_num_threads(args.threads)
    frames = read_frames(args.data)
    parts = {name: [a for a in frames if split_of(a) == name] for name in ("train", "valid", "test")}
    if args.write_splits:
        for name, part in parts.items():
            Path(args.write_splits).mkdir(parents=True, exist_ok=True)
            write(Path(args.write_splits, f"{name}.xyz"), part, format="extxyz")
        return
    model = load_potential(args.model)
    test_samples = [make_sample(a, model.cutoff, model.species) for a in parts["test"]]
    report = {"model": args.model, "model_metadata": {k: model.metadata.get(k) for k in ("data_hash", "n_train", "n_valid", "n_test")},
              "mlmd_train_wall_s": model.metadata.get("train_time_s"),
              "mlmd_test": evaluate_samples(model, test_samples, bias=True)}
    report["mlmd_test_force_breakdown"] = force_error_breakdown(model, test_samples)
    if args.train_frames > 0:
        report["mlmd_train_frames"] = evaluate_samples(
            model, [make_sample(a, model.cutoff, model.species) for a in parts["train"][:args.train_frames]])
    # The test splits of the model's other training data sets (per-cluster splits, so unseen clusters too).
    others = [d for d in model.metadata.get("data", []) if Path(ROOT, d).resolve() != Path(args.data).resolve()
              and Path(ROOT, d).exists()]
    if others:
        report["mlmd_test_other_data"] = {d: data_test_metrics(model, Path(ROOT, d), bias=True) for d in others}
    if Path(args.transfer).exists() and any(Path(args.transfer).glob("*.extxyz*")):
        transfer = read_frames(args.transfer)
        samples = [make_sample(a, model.cutoff, model.species) for a in transfer]
        report["mlmd_transfer"] = evaluate_samples(model, samples, bias=True)
        # Per solvent: the frames whose cluster holds that molecule (composition tokens "NAME:COUNT"; ions skipped).
        tokens = [{t.rsplit(":", 1)[0] for t in str(a.info.get("composition", "")).split()} - IONS for a in transfer]
        report["mlmd_transfer_by_solvent"] = {
            name: {k: v for k, v in evaluate_samples(model, [s for s, t in zip(samples, tokens) if name in t]).items()
                   if k != "by_config_type"}
            for name in sorted(set().union(*tokens))}
    if args.mace_result:
        report["mace"] = json.loads(Path(args.mace_result).read_text().strip().splitlines()[-1])
    elif args.mace_minutes > 0:
        from benchmarks.speed import ensure_peer_venv

        peer = ensure_peer_venv()
        with tempfile.TemporaryDirectory() as tmp:
            paths = {}
            for name, part in parts.items():
                paths[name] = Path(tmp, f"{name}.xyz")
                write(paths[name], part, format="extxyz")
            result = subprocess.run([str(peer), str(HERE / "peer_mace_train.py"), "--train", str(paths["train"]),
                                     "--valid", str(paths["valid"]), "--test", str(paths["test"]),
                                     "--minutes", str(args.mace_minutes), "--threads", str(args.threads)],
                                    capture_output=True, text=True, cwd=HERE)
            if result.returncode != 0:
                raise RuntimeError(result.stderr[-2000:])
            report["mace"] = json.loads(result.stdout.strip().splitlines()[-1])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
