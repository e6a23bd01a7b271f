"""``make demo``: screen three small electrolytes with the bundled model and write a report.

    python -m workflows.demo [--workers 2] [--out runs/demo] [--model NAME_OR_PATH] [--fresh]

Formulations: 1 M LiPF6 in EC:DMC (1:1 by mass), 1 M LiFSI in DME, 1 M LiBF4 in PC, ~150 atoms each, 298 K.
The protocol (:data:`DEMO_PROTOCOL`) is sized for under 10 minutes on 2 cores with 2 Dask workers: per formulation
≈ 750–850 MD steps of 1 fs (100 NPT equilibration + 100–200 NPT production + 3 replicas × (20 + 150) NVT) at
≈ 0.15–0.3 s per step for 150 atoms on one core (production-size network, measured). Measured here with the
previous, ~12 % longer protocol and a production-size untrained network: 603 s with 2 workers on a machine whose
load average was ~9 (``benchmarks/electrolytes/throughput.py``). The numbers are demonstrations of the workflow with
honest (large) error bars, not converged properties; the validation runs in ``benchmarks/electrolytes`` use
production lengths.

If the bundled model ``bamboo-electrolyte`` is not installed yet, the demo says so and falls back to an untrained
network plus the stabilising placeholder restraints (:mod:`workflows.screening.placeholder`), clearly labelled:
its numbers are meaningless, it only shows the workflow end to end. A rerun skips finished formulations
(``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

DEMO_PROTOCOL = dict(
    timestep_fs=1.0, minimise_steps=20, equilibration_steps=100,
    density_min_steps=100, density_max_steps=200, density_chunk_steps=50, density_log_interval=5,
    density_target_sem=0.002, n_replicas=3, replica_equilibration_steps=20, replica_steps=150,
    replica_ensemble="nvt", stress_interval=1, trajectory_interval=5, checkpoint_interval=50,
)
FORMULATIONS = [
    dict(name="LiPF6-EC-DMC", solvents={"EC": 0.5, "DMC": 0.5}, ratio_basis="mass", salt="LiPF6", concentration=1.0),
    dict(name="LiFSI-DME", solvents="DME", salt="LiFSI", concentration=1.0),
    dict(name="LiBF4-PC", solvents="PC", salt="LiBF4", concentration=1.0),
]
BUNDLED = "bamboo-electrolyte"
PLACEHOLDER = "workflows.screening.placeholder:calculator"


def _bundled_available() -> bool:
    from mlmd.errors import MLMDError
    from workflows.screening.composition import model_info

    try:
        model_info(BUNDLED)
    except MLMDError:
        return False
    return True


def _placeholder_model(out: Path) -> Path:
    import torch

    from mlmd.checkpoint import save_checkpoint
    from potentials.bamboo import BambooPotential

    path = out / "untrained-placeholder.pt"
    if not path.is_file():
        torch.manual_seed(0)
        save_checkpoint(BambooPotential({"num_features": 16, "num_rbf": 8, "num_layers": 2, "num_heads": 2}), path,
                        metadata={"note": "untrained placeholder for the demo; numbers are meaningless"})
    return path


def build_spec(model: str, calculator: str | None, n_atoms: int = 150, protocol: dict | None = None):
    from workflows.screening.spec import spec_from_dict

    defaults = dict(temperature_K=298.15, n_atoms=n_atoms, model=model, seed=0, protocol=protocol or DEMO_PROTOCOL)
    if calculator:
        defaults["calculator"] = calculator
    return spec_from_dict({"defaults": defaults, "formulations": FORMULATIONS}, "demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--model", default=None, help="model name or checkpoint (default: the bundled model)")
    parser.add_argument("--fresh", action="store_true", help="delete earlier demo results first")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from mlmd.errors import MLMDError
    from workflows.screening.report import results_table, write_report
    from workflows.screening.runner import screen

    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    calculator = None
    model = args.model
    if model is None:
        if _bundled_available():
            model = BUNDLED
        else:
            print(f"demo: the bundled model {BUNDLED!r} is not installed yet (it is trained separately). Falling back "
                  "to an UNTRAINED network plus placeholder restraints: the numbers below are meaningless and only "
                  "show the workflow end to end.", file=sys.stderr)
            model = str(_placeholder_model(args.out).resolve())
            calculator = PLACEHOLDER
    t0 = time.time()
    try:
        spec = build_spec(model, calculator)
        result = screen(spec, database=str(args.out / "screen.db"), output_dir=args.out / "runs",
                        workers=args.workers, progress=not args.no_progress)
        paths = write_report(result.database, args.out / "report")
    except MLMDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(results_table(result.database))
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.counts.items()))
    rate = result.formulations_per_hour
    print(f"\ndemo: {counts} in {time.time() - t0:.0f} s with {result.workers} worker(s)"
          + (f" ({rate:.1f} formulations/hour)" if result.counts.get("done") else ""))
    if calculator:
        print("demo: model = UNTRAINED placeholder (bundled model missing): numbers are meaningless")
    print("demo: transport replicas here last 150 fs, so diffusion, conductivity, viscosity and t+ are ballistic-regime "
          "placeholders, not estimates; use production protocol lengths (hundreds of ps) for real screening")
    print(f"demo: report {paths['html'].resolve()} (Markdown: {paths['markdown'].name})")
    return 0 if not result.counts.get("failed") else 1


if __name__ == "__main__":
    sys.exit(main())
