"""Package a trained model inside ``potentials/pretrained/<name>/`` with its config, data manifest and metrics.

    python -m potentials.bundle RUN_DIR NAME [--transfer DATA_DIR]
    python -m potentials.bundle ALIGN_DIR NAME --aligned-from BASE [--transfer DATA_DIR] [--density DENSITY_JSON]

Copies ``RUN_DIR/best.pt`` (the EMA weights) to ``model.pt`` and writes ``config.json`` (architecture),
``manifest.json`` (the data the model saw: files with sha256, frame counts by split and config type, data hash,
split rule) and ``metrics.json`` (validation/test errors, training time, and the transfer set's errors if given).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
from pathlib import Path

from mlmd.checkpoint import read_checkpoint
from mlmd.io import atomic_write_text, file_sha256

PRETRAINED = Path(__file__).resolve().parent / "pretrained"


def bundle(run_dir: str | Path, name: str, transfer: str | Path | None = None,
           reference: str = "GFN2-xTB (tblite)") -> Path:
    from mlmd.checkpoint import load_potential
    from mlmd.data import read_frames
    from potentials.training import split_of

    run_dir = Path(run_dir)
    payload = read_checkpoint(run_dir / "best.pt")
    meta = payload["metadata"]
    target = PRETRAINED / name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "best.pt", target / "model.pt")
    atomic_write_text(target / "config.json", json.dumps({"model_type": payload["model_type"], **payload["config"]}, indent=2))

    files = []
    for entry in meta.get("data", []):
        path = Path(entry)
        for f in sorted(path.iterdir()) if path.is_dir() else [path]:
            if f.name.endswith((".xyz", ".extxyz", ".gz", ".db")):
                files.append({"path": str(f), "sha256": file_sha256(f)})
    frames = read_frames(meta.get("data", []))
    counts = collections.Counter((split_of(a) or "unsplit", str(a.info.get("config_type", "default"))) for a in frames)
    manifest = {"data_hash": meta.get("data_hash"), "files": files, "n_frames": len(frames),
                "split_rule": f"per-cluster info key {meta.get('split_key')!r}" if meta.get("split_key") else "seeded random",
                "split_seed": meta.get("split_seed"),
                "frames_by_split_and_config_type": {f"{s}/{c}": n for (s, c), n in sorted(counts.items())},
                "reference": reference, "train_config": meta.get("train_config")}
    atomic_write_text(target / "manifest.json", json.dumps(manifest, indent=2))

    metrics = {"valid": meta.get("metrics", {}).get("valid"), "test": meta.get("metrics", {}).get("test"),
               "train_time_s": meta.get("train_time_s"), "epochs": meta.get("epochs")}
    if metrics["valid"] is None and (run_dir / "metrics.jsonl").exists():  # a run stopped before its final summary
        metrics.update(_summary_from_log(run_dir / "metrics.jsonl"))
    model = load_potential(target / "model.pt")
    metrics["n_parameters"] = sum(p.numel() for p in model.parameters())
    metrics.update(test_metrics(model, frames, meta.get("data", [])))
    if transfer is not None and Path(transfer).exists():
        metrics["transfer"] = transfer_metrics(model, transfer)
    atomic_write_text(target / "metrics.json", json.dumps(metrics, indent=2))
    return target


def _summary_from_log(log: Path) -> dict:
    """Validation errors of the epoch ``best.pt`` was saved at, its epoch count and the run's training time."""
    from potentials.training import selection_score

    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    valid = [{k.removeprefix("valid_"): v for k, v in r.items() if k.startswith("valid_")} for r in records]
    best = min(range(len(records)), key=lambda k: selection_score(valid[k]))
    return {"valid": valid[best], "epochs": records[best]["epoch"], "train_time_s": records[-1]["time_s"]}


def test_metrics(model, frames, data: list[str]) -> dict:
    """Errors on the test split of ``frames`` and, with several data sets, on each one's own test split."""
    from mlmd.data import make_sample
    from potentials.training import evaluate_samples, split_of

    metrics = {}
    test = [make_sample(a, model.cutoff, model.species) for a in frames if split_of(a) == "test"]
    if test:  # periodic data also get the stress error
        metrics["test"] = evaluate_samples(model, test, stress=any(s.stress is not None for s in test))
    if len(data) > 1:  # each data set's own test split, comparable across models trained on fewer sets
        by_data = {str(entry): data_test_metrics(model, entry) for entry in data}
        metrics["test_by_data"] = {entry: m for entry, m in by_data.items() if m is not None}
    return metrics


def data_test_metrics(model, data: str | Path, bias: bool = False) -> dict | None:
    """Errors on one data set's own (per-cluster) test split; None when it has none. ``bias``: see evaluate_samples."""
    from mlmd.data import make_sample, read_frames
    from potentials.training import evaluate_samples, split_of

    own = [make_sample(a, model.cutoff, model.species) for a in read_frames(data) if split_of(a) == "test"]
    return evaluate_samples(model, own, bias=bias) if own else None


def transfer_metrics(model, transfer: str | Path) -> dict:
    """Errors on a set of solvents the model was not trained on."""
    from mlmd.data import make_sample, read_frames
    from potentials.training import evaluate_samples

    frames = read_frames(transfer)
    metrics = evaluate_samples(model, [make_sample(a, model.cutoff, model.species) for a in frames])
    metrics["solvents"] = sorted({str(a.info.get("composition", "")) for a in frames})[:50]
    return metrics


def bundle_aligned(align_dir: str | Path, name: str, base: str, transfer: str | Path | None = None,
                   density: str | Path | None = None) -> Path:
    """Package ``align_dir/aligned.pt`` (``mlmd align``) as ``name``: the weights, the base model's config and data
    manifest, the alignment summary, and metrics: the errors against the reference on the base model's test splits
    (what the alignment cost), the alignment's own density check and, if given, the density benchmark's JSON
    (what it bought)."""
    from mlmd.checkpoint import load_potential
    from mlmd.data import read_frames

    align_dir, source = Path(align_dir), PRETRAINED / base
    target = PRETRAINED / name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(align_dir / "aligned.pt", target / "model.pt")
    for file in ("config.json", "manifest.json"):
        shutil.copyfile(source / file, target / file)
    shutil.copyfile(align_dir / "alignment.json", target / "alignment.json")
    model = load_potential(target / "model.pt")
    data = [str(Path(f["path"]).parent) for f in json.loads((source / "manifest.json").read_text())["files"]]
    data = list(dict.fromkeys(data))
    metrics = {"base_model": base, "n_parameters": sum(p.numel() for p in model.parameters())}
    metrics.update(test_metrics(model, read_frames(data), data))
    if transfer is not None and Path(transfer).exists():
        metrics["transfer"] = transfer_metrics(model, transfer)
    check = json.loads((align_dir / "alignment.json").read_text()).get("check")
    if check is not None:
        metrics["density_check"] = check
    if density is not None:
        metrics["density_benchmark"] = json.loads(Path(density).read_text())
    atomic_write_text(target / "metrics.json", json.dumps(metrics, indent=2))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("name")
    parser.add_argument("--transfer", default=None)
    parser.add_argument("--reference", default="GFN2-xTB (tblite)", help="the labelling method, for the manifest")
    parser.add_argument("--aligned-from", default=None, metavar="BASE",
                        help="RUN_DIR is an `mlmd align` output folder and BASE the bundled model it aligned")
    parser.add_argument("--density", default=None, help="with --aligned-from: the density benchmark's JSON")
    args = parser.parse_args()
    if args.aligned_from:
        print(bundle_aligned(args.run_dir, args.name, args.aligned_from, args.transfer, args.density))
    else:
        print(bundle(args.run_dir, args.name, args.transfer, args.reference))


if __name__ == "__main__":
    main()
