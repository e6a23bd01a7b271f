"""Conductivity of 1 M LiPF6 in EC:DMC (1:1 by mass, 298.15 K) vs shared/data/experimental_transport.csv.

    .venv/bin/python -m benchmarks.electrolytes.conductivity [--model bamboo-electrolyte-aligned] [--workers 2]
        [--scheduler tcp://HOST:PORT] [--n-atoms 1200] [--replicas 8] [--quick] [--out runs/benchmarks/electrolytes]

The full screening protocol: NPT density, then ``--replicas`` independent NVT replicas (weak Bussi thermostat,
1 fs, stress every step) of 100 ps each (production default), giving Nernst–Einstein and collective (Einstein)
conductivity with standard errors, Green–Kubo viscosity, and the Li⁺ transference numbers. Writes
``conductivity.json`` with the relative errors against the experiment (Landesfeind & Gasteiger 2019 fit:
11.8 mS/cm). The experimental t+ (0.33) is the concentrated-solution transference number, which neither MD
estimate (NE: D-based; Onsager: barycentric, with correlations) equals; it is reported for context only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.electrolytes.common import read_csv, write_json

PRODUCTION = dict(timestep_fs=1.0, minimise_steps=200, equilibration_steps=20000, density_min_steps=20000,
                  density_max_steps=100000, density_chunk_steps=10000, density_log_interval=10,
                  density_target_sem=0.002, replica_equilibration_steps=5000, replica_steps=100000,
                  replica_ensemble="nvt", replica_thermostat_time_fs=2000.0, stress_interval=1,
                  trajectory_interval=100, checkpoint_interval=2000)
QUICK = dict(PRODUCTION, equilibration_steps=2000, density_min_steps=2000, density_max_steps=4000,
             density_chunk_steps=1000, replica_equilibration_steps=500, replica_steps=4000, trajectory_interval=20)
SMOKE = dict(PRODUCTION, minimise_steps=10, equilibration_steps=20, density_min_steps=20, density_max_steps=40,
             density_chunk_steps=20, density_log_interval=1, replica_equilibration_steps=0, replica_steps=40,
             trajectory_interval=2, checkpoint_interval=20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.electrolytes.conductivity",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bamboo-electrolyte-aligned", help="default: the model aligned to experimental densities")
    ap.add_argument("--calculator", default=None, help="module:factory instead of the plain model (testing only)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--n-atoms", type=int, default=1200)
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--smoke", action="store_true", help="a few dozen steps per stage (checks the script only)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/benchmarks/electrolytes"))
    args = ap.parse_args(argv)

    from mlmd.errors import MLMDError
    from workflows.screening.report import load_rows
    from workflows.screening.runner import screen
    from workflows.screening.spec import spec_from_dict

    exp = next(r for r in read_csv("experimental_transport.csv") if r["system"] == "LiPF6_EC_DMC")
    solvents = exp["solvents"].split(":")
    ratio = exp["ratio"]
    protocol = dict(SMOKE if args.smoke else QUICK if args.quick else PRODUCTION, n_replicas=args.replicas)
    f = dict(name="conductivity-LiPF6-EC-DMC", solvents=solvents, ratio=ratio, ratio_basis=exp["ratio_basis"],
             salt=exp["salt"], concentration=float(exp["salt_mol_per_L"]), concentration_unit="molar",
             temperature_K=float(exp["temperature_K"]), n_atoms=args.n_atoms, model=args.model, protocol=protocol)
    if args.calculator:
        f["calculator"] = args.calculator
    args.out.mkdir(parents=True, exist_ok=True)
    db = args.out / ("conductivity-smoke.db" if args.smoke else "conductivity-quick.db" if args.quick
                     else "conductivity.db")
    try:
        spec = spec_from_dict({"formulations": [f]}, "conductivity benchmark")
        screen(spec, database=str(db), output_dir=args.out / "conductivity-runs", workers=args.workers,
               scheduler=args.scheduler, progress=sys.stderr.isatty())
    except MLMDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    row = {r["formulation"]: r for r in load_rows(str(db))}.get(f["name"], {})
    sigma_exp = float(exp["conductivity_mS_cm"])

    def rel(key):
        v = row.get(key)
        return None if v is None else (v - sigma_exp) / sigma_exp

    keys = ("sigma_NE_mS_cm", "sigma_Einstein_mS_cm", "viscosity_mPa_s", "t_Li_NE", "t_Li_Onsager", "density_g_cm3",
            "molarity_M", "haven_ratio")
    result = {
        "model": args.model, "model_sha256": row.get("model_sha256"), "status": row.get("status", "missing"),
        "error": row.get("error"), "protocol": protocol, "n_atoms": row.get("n_atoms_box"),
        "experiment": {"conductivity_mS_cm": sigma_exp, "t_plus_concentrated_solution": float(exp["t_plus"]),
                       "source": "Landesfeind & Gasteiger, J. Electrochem. Soc. 166, A3079 (2019)"},
        "predicted": {k: row.get(k) for k in keys} | {f"{k}_sem": row.get(f"{k}_sem") for k in keys},
        "relative_error": {"sigma_NE": rel("sigma_NE_mS_cm"), "sigma_Einstein": rel("sigma_Einstein_mS_cm")},
        # Conductivities mean something only when the MSD was diffusive over its fit window (slope 1 on log-log).
        "transport_diffusive": None if row.get("transport_diffusive") is None else bool(row["transport_diffusive"]),
        "msd_exponents": {k.removeprefix("msd_exponent_"): v for k, v in row.items() if k.startswith("msd_exponent_")},
    }
    write_json(args.out / "conductivity.json", result)
    p = result["predicted"]
    fmt = lambda v: "–" if v is None else f"{v:.3g}"  # noqa: E731
    print(f"1 M LiPF6 EC:DMC (1:1 w/w), 298 K: σ_NE = {fmt(p['sigma_NE_mS_cm'])} ± {fmt(p['sigma_NE_mS_cm_sem'])}, "
          f"σ_Einstein = {fmt(p['sigma_Einstein_mS_cm'])} ± {fmt(p['sigma_Einstein_mS_cm_sem'])} mS/cm "
          f"(experiment {sigma_exp}); η = {fmt(p['viscosity_mPa_s'])} mPa·s; t_Li NE {fmt(p['t_Li_NE'])}, "
          f"Onsager {fmt(p['t_Li_Onsager'])}")
    if result["transport_diffusive"] is False:
        print("warning: the MSD is not diffusive over the fit window (exponents "
              + ", ".join(f"{k} {v:.2f}" for k, v in result["msd_exponents"].items())
              + "): the replicas are too short and these conductivities are not estimates")
    print(f"conductivity benchmark: {args.out / 'conductivity.json'}")
    return 0 if row.get("status") == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
