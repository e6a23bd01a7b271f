"""Screening throughput: formulations per hour for the demo protocol with 1 and with 2 Dask workers.

    .venv/bin/python -m benchmarks.electrolytes.throughput [--workers 1,2] [--model PATH] [--out runs/benchmarks/throughput]

Runs the three demo formulations (``workflows.demo``) from scratch once per worker count, each in its own folder,
and writes ``throughput.json`` with wall time, formulations/hour and the speed-up over one worker (target on the
2-core machine: ≥ 1.7× with 2 workers). Without ``--model`` it uses an *untrained network of the production
architecture* (64 features, 3 layers, 32 radial functions) plus the placeholder restraints, which costs the same
per step as the trained model; with ``--model`` the model alone. Run it on a quiet machine: other jobs on the same
cores change the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks.electrolytes.common import write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.electrolytes.throughput",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/benchmarks/throughput"))
    args = ap.parse_args(argv)

    from workflows.demo import PLACEHOLDER, build_spec
    from workflows.screening.runner import screen

    args.out.mkdir(parents=True, exist_ok=True)
    calculator = None
    model = args.model
    if model is None:
        import torch

        from mlmd.checkpoint import save_checkpoint
        from potentials.bamboo import BambooPotential

        path = args.out / "untrained-production-size.pt"
        if not path.is_file():
            torch.manual_seed(0)
            save_checkpoint(BambooPotential({}), path)
        model, calculator = str(path.resolve()), PLACEHOLDER
    runs = []
    for n in [int(w) for w in args.workers.split(",")]:
        folder = args.out / f"workers-{n}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        t0 = time.time()
        result = screen(build_spec(model, calculator), database=str(folder / "screen.db"), output_dir=folder / "runs",
                        workers=n, progress=sys.stderr.isatty())
        wall = time.time() - t0
        done = result.counts.get("done", 0)
        runs.append({"workers": n, "wall_s": wall, "done": done, "failed": result.counts.get("failed", 0),
                     "formulations_per_hour": done / wall * 3600.0,
                     "stage_seconds": {j.plan.name: j.stage_seconds for j in result.jobs}})
        print(f"{n} worker(s): {done} formulations in {wall:.0f} s = {done / wall * 3600:.1f} per hour", flush=True)
    base = runs[0]["formulations_per_hour"]
    for r in runs:
        r["speedup_vs_first"] = r["formulations_per_hour"] / base if base else None
    load = os.getloadavg()
    write_json(args.out / "throughput.json", {"model": model, "calculator": calculator, "cpu_count": os.cpu_count(),
                                              "loadavg_at_end": load, "runs": runs})
    print(f"throughput: {args.out / 'throughput.json'} (load average at the end {load[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
