"""Speed and memory: mlmd's BAMBOO potential vs MACE (64x0e, 2 interactions, r_max 5 Å) through the ASE calculator.

    .venv/bin/python -m benchmarks.speed [--calls 15] [--threads 2] [--repeats 6] [--out benchmarks/results/speed.json]

Periodic EC/DMC + LiPF6 boxes of 278 and 1,112 atoms; each measurement runs in its own process (so peak memory is
its own), mlmd and the peer alternate on the same box in one run, and the JSON gives atom-steps/s and their ratio.
Both processes run with the glibc heap thresholds of :mod:`mlmd.allocator` (mlmd's calculator sets them itself).
The peer runs in its own virtual environment (mace-torch pins e3nn 0.4.4), created on first use at
``$MLMD_PEER_VENV`` (default ``benchmarks/.peer-venv``).

The peer's time per call varies by about 10 % from run to run on a shared 2-core machine, so ``--repeats N`` runs the
whole comparison N times back to back and reports, per box, the median of each quantity and the lowest ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlmd.allocator import ENVIRONMENT as ALLOCATOR_ENVIRONMENT
from mlmd.io import atomic_path

HERE = Path(__file__).resolve().parent
PEER_VENV = Path(os.environ.get("MLMD_PEER_VENV", HERE / ".peer-venv"))


def ensure_peer_venv() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "mace-torch", "ase"], check=True)
    return python


def measure_mlmd(structure: str, model: str, calls: int, threads: int, dtype: str) -> dict:
    """Worker: median seconds per energy+forces call of MLMDCalculator on ``structure``."""
    import numpy as np
    import torch
    from ase.io import read

    from mlmd.calculator import MLMDCalculator

    torch.set_num_threads(threads)
    atoms = read(structure)
    if model == "untrained":
        from potentials.bamboo import BambooPotential

        torch.manual_seed(0)
        model_obj = BambooPotential()
    else:
        model_obj = model
    atoms.calc = MLMDCalculator(model_obj, dtype=dtype)
    rng = np.random.default_rng(0)
    baseline_MB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    atoms.get_forces()
    times, cpu = [], []
    for _ in range(calls):
        atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
        start, start_cpu = time.perf_counter(), time.process_time()
        atoms.get_forces()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    seconds = float(np.median(times))
    n_params = sum(p.numel() for p in atoms.calc.model.parameters())
    return {"model": f"mlmd BAMBOO ({model}, {dtype}, {n_params} parameters)", "n_atoms": len(atoms),
            "seconds_per_call": seconds, "cpu_seconds_per_call": float(np.median(cpu)), "atom_steps_per_s": len(atoms) / seconds,
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "calc_memory_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline_MB}


def _run_json(cmd: list[str]) -> dict:
    # The peer gets the allocator thresholds mlmd's calculator sets for itself, so the ratio compares the models.
    env = {**os.environ, **ALLOCATOR_ENVIRONMENT, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarise_runs(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per box size (str n_atoms): medians over runs of times, ratios and memory, plus the lowest speed ratio.

    runs: reports as :func:`compare_once` returns them, each with one row per box.
    """
    by_box: dict[str, list[dict]] = {}
    for run in runs:
        for row in run["rows"]:
            by_box.setdefault(str(row["n_atoms"]), []).append(row)
    summary = {}
    for box, rows in by_box.items():
        def median(get):
            return statistics.median(get(row) for row in rows)

        summary[box] = {
            "mlmd_seconds_per_call": median(lambda r: r["mlmd"]["seconds_per_call"]),
            "mace_seconds_per_call": median(lambda r: r["mace"]["seconds_per_call"]),
            "speed_ratio": median(lambda r: r["speed_ratio"]),
            "speed_ratio_min": min(row["speed_ratio"] for row in rows),
            "cpu_time_ratio": median(lambda r: r["cpu_time_ratio"]),
            "mlmd_calc_memory_MB": median(lambda r: r["mlmd"]["calc_memory_MB"]),
            "mace_calc_memory_MB": median(lambda r: r["mace"]["calc_memory_MB"]),
        }
    return summary


def compare_once(args, peer_python: Path) -> dict:
    """One pass over the boxes, mlmd then the peer on each, every measurement in its own process."""
    from ase.io import write

    from workflows.boxes import ec_dmc_lipf6_box

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (int(s) for s in args.scales.split(",")):
            path = Path(tmp, f"box{scale}.extxyz")
            write(path, ec_dmc_lipf6_box(scale, seed=0))
            ours = _run_json([sys.executable, "-m", "benchmarks.speed", "--worker", str(path), "--model", args.model,
                              "--calls", str(args.calls), "--threads", str(args.threads), "--dtype", args.dtype])
            peer = _run_json([str(peer_python), str(HERE / "peer_mace.py"), str(path), "--calls", str(args.calls),
                              "--threads", str(args.threads)])
            rows.append({"n_atoms": ours["n_atoms"], "mlmd": ours, "mace": peer,
                         "speed_ratio": ours["atom_steps_per_s"] / peer["atom_steps_per_s"],
                         "cpu_time_ratio": peer["cpu_seconds_per_call"] / ours["cpu_seconds_per_call"],
                         "memory_ratio": ours["calc_memory_MB"] / max(peer["calc_memory_MB"], 1e-3)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return {"benchmark": "energy+forces through the ASE calculator, periodic EC/DMC + LiPF6",
            "allocator": ALLOCATOR_ENVIRONMENT, "threads": args.threads, "calls": args.calls, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="bamboo-electrolyte", help="bundled name, checkpoint, or 'untrained'")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--scales", default="1,4", help="box sizes as multiples of the 278-atom box")
    parser.add_argument("--repeats", type=int, default=1, help="run the comparison this many times; report medians")
    parser.add_argument("--out", default=str(HERE / "results" / "speed.json"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.worker:
        print(json.dumps(measure_mlmd(args.worker, args.model, args.calls, args.threads, args.dtype)))
        return

    peer_python = ensure_peer_venv()
    runs = [compare_once(args, peer_python) for _ in range(args.repeats)]
    if args.repeats == 1:
        report = runs[0]
    else:
        report = {"benchmark": runs[0]["benchmark"], "allocator": ALLOCATOR_ENVIRONMENT, "threads": args.threads,
                  "calls": args.calls, "model": args.model, "date": datetime.date.today().isoformat(),
                  "note": f"{args.repeats} back-to-back runs; median per box below, the runs after it",
                  "median": summarise_runs(runs), "runs": runs}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    print(json.dumps(report.get("median", report), indent=2))


if __name__ == "__main__":
    main()
