"""Predicted vs experimental density of every solvent in shared/data/experimental_densities.csv.

    .venv/bin/python -m benchmarks.electrolytes.density [--model bamboo-electrolyte] [--workers 2]
        [--scheduler tcp://HOST:PORT] [--n-atoms 600] [--quick] [--out runs/benchmarks/electrolytes]

Each solvent is a pure-liquid formulation, packed at 1.0 g/cm³ (not at the experimental density, which would bias
short runs towards the answer), screened by ``workflows.screening`` with the density-only protocol
(``n_replicas: 0``): NPT (MTK barostat with Nose–Hoover chains, 1 bar) equilibration, then production
until the density's standard error < 0.002 g/cm³ or the maximum length, at the temperature of the experimental
value (EC at 313 K, above its melting point). Runs are resumable: rerunning skips finished solvents.
Prints and writes ``density.json``: per-solvent predicted ± standard error, experiment, error, and the MAE
(goal of the density alignment: ≤ 0.01 g/cm³), plus a Markdown table for the README (``density.md``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from benchmarks.electrolytes.common import read_csv, write_json

PRODUCTION = dict(timestep_fs=1.0, minimise_steps=200, equilibration_steps=20000, density_min_steps=20000,
                  density_max_steps=200000, density_chunk_steps=10000, density_log_interval=10,
                  density_target_sem=0.002, n_replicas=0, checkpoint_interval=2000)
#: 2 ps NPT equilibration, then 2-4 ps of production (a few percent of the production protocol).
QUICK = dict(PRODUCTION, equilibration_steps=2000, density_min_steps=2000, density_max_steps=4000,
             density_chunk_steps=1000)
#: Packing density of every solvent (g/cm³): deliberately not the experimental value.
START_DENSITY = 1.0
SMOKE = dict(PRODUCTION, minimise_steps=10, equilibration_steps=20, density_min_steps=20, density_max_steps=40,
             density_chunk_steps=20, density_log_interval=1, checkpoint_interval=20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.electrolytes.density", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bamboo-electrolyte")
    ap.add_argument("--calculator", default=None, help="module:factory instead of the plain model (testing only)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--n-atoms", type=int, default=600)
    ap.add_argument("--smoke", action="store_true", help="a few dozen steps per stage (checks the script only)")
    ap.add_argument("--quick", action="store_true", help="2 ps equilibration + 2-4 ps production (the error bars say so)")
    ap.add_argument("--only", default=None, help="comma-separated subset of solvents")
    ap.add_argument("--out", type=Path, default=Path("runs/benchmarks/electrolytes"))
    args = ap.parse_args(argv)

    from mlmd.errors import MLMDError
    from workflows.screening.report import load_rows
    from workflows.screening.runner import screen
    from workflows.screening.spec import spec_from_dict

    rows = read_csv("experimental_densities.csv")
    if args.only:
        keep = set(args.only.split(","))
        rows = [r for r in rows if r["name"] in keep]
    protocol = SMOKE if args.smoke else QUICK if args.quick else PRODUCTION
    formulations = []
    for r in rows:
        # Packed at an agnostic 1.0 g/cm³ (not the experimental value), so the NPT run has to find the density.
        f = dict(name=f"density-{r['name']}", solvents=[{"smiles": r["smiles"], "density_g_cm3": START_DENSITY}],
                 temperature_K=float(r["temperature_K"]),
                 n_atoms=args.n_atoms, model=args.model, protocol=protocol)
        if args.calculator:
            f["calculator"] = args.calculator
        formulations.append(f)
    args.out.mkdir(parents=True, exist_ok=True)
    db = args.out / ("density-smoke.db" if args.smoke else "density-quick.db" if args.quick else "density.db")
    try:
        spec = spec_from_dict({"formulations": formulations}, "density benchmark")
        screen(spec, database=str(db), output_dir=args.out / "density-runs", workers=args.workers,
               scheduler=args.scheduler, progress=sys.stderr.isatty())
    except MLMDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    by_name = {row["formulation"]: row for row in load_rows(str(db))}
    table, errors = [], []
    for r in rows:
        row = by_name.get(f"density-{r['name']}", {})
        exp = float(r["density_g_cm3"])
        pred, sem = row.get("density_g_cm3"), row.get("density_g_cm3_sem")
        trace = row.get("_data", {}).get("summaries", {}).get("density", {})
        entry = {"solvent": r["name"], "temperature_K": float(r["temperature_K"]), "experiment_g_cm3": exp,
                 "predicted_g_cm3": pred, "sem_g_cm3": sem, "status": row.get("status", "missing"),
                 "error_g_cm3": (pred - exp) if pred is not None else None,
                 # a box still compressing or expanding: its density is not the model's, whatever the sem says
                 "drift_g_cm3": trace.get("drift"), "stationary": trace.get("stationary")}
        if pred is not None:
            errors.append(abs(pred - exp))
        else:
            entry["reason"] = row.get("error")
        table.append(entry)
    mae = sum(errors) / len(errors) if errors else math.nan
    drifting = [e["solvent"] for e in table if e["stationary"] is False]
    result = {"model": args.model, "model_sha256": next((r.get("model_sha256") for r in by_name.values()), None),
              "protocol": protocol, "n_atoms": args.n_atoms, "mae_g_cm3": mae if errors else None,
              "n_solvents": len(errors), "goal_mae_g_cm3": 0.01, "still_drifting": drifting, "solvents": table}
    write_json(args.out / "density.json", result)
    md = ["| solvent | T (K) | experiment (g/cm³) | predicted (g/cm³) | error | drift |", "|---|---|---|---|---|---|"]
    for e in table:
        p = "–" if e["predicted_g_cm3"] is None else f"{e['predicted_g_cm3']:.4f} ± {e['sem_g_cm3'] or 0:.4f}"
        err = "–" if e["error_g_cm3"] is None else f"{e['error_g_cm3']:+.4f}"
        drift = "–" if e["drift_g_cm3"] is None else f"{e['drift_g_cm3']:+.4f}" + ("" if e["stationary"] else " (still drifting)")
        md.append(f"| {e['solvent']} | {e['temperature_K']:g} | {e['experiment_g_cm3']:.3f} | {p} | {err} | {drift} |")
    md.append(f"\nMAE over {len(errors)} solvents: " + (f"{mae:.4f} g/cm³" if errors else "–") + " (goal ≤ 0.01 g/cm³)")
    if drifting:
        md.append(f"Still drifting (run longer; their errors are not the model's): {', '.join(drifting)}")
    (args.out / "density.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"density benchmark: {args.out / 'density.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
