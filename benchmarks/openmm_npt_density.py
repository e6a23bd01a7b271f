"""A 5 ps NPT run of EC/DMC + LiPF6 at 300 K through the OpenMM engine: does the density stay physical? (JSON)

    .venv/bin/python -m benchmarks.openmm_npt_density [--model bamboo-electrolyte] [--scale 1] [--ps 5]
        [--timestep 1.0] [--threads 2] [--out benchmarks/results/openmm_npt_density.json]

Packs the box with ``workflows.boxes.ec_dmc_lipf6_box`` (scale 1: 278 atoms, 1 mol/L LiPF6 in EC/DMC ~1:1 by mole,
packed at 1.25 g/cm³), runs ``run_openmm_md`` (LangevinMiddleIntegrator + MonteCarloBarostat, 1 bar, guards on)
and reports the density over the second half of the run with its drift. Pass criteria: the run ends without a guard
trip and the mean density lies in [1.0, 1.6] g/cm³ with a second-half drift below 0.02 g/cm³; for reference the
ideal-mixing density of the salt-free EC/DMC solvent from ``shared/data/experimental_densities.csv`` is printed
(the salt raises it by roughly 0.05-0.1 g/cm³; the experimental 1 M LiPF6 in EC/DMC is about 1.25-1.30 g/cm³).

Needs the trained bundled model (``potentials/pretrained/bamboo-electrolyte/model.pt``) or ``--model PATH``;
without it the script prints ``{"skipped": ...}`` and exits 0. A random-init model is no test of physics.
Cost: about 0.15-0.3 s per step for 278 atoms on 2 CPU cores, so 5 ps at 1 fs is 15-25 minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def solvent_reference_density(ec_molecules: int, dmc_molecules: int) -> float | None:
    """Ideal-mixing density (g/cm³) of the EC/DMC solvent from the experimental table (None if absent)."""
    table = None
    for candidate in (ROOT / "shared" / "data" / "experimental_densities.csv",
                      ROOT.parent / "shared" / "data" / "experimental_densities.csv"):
        if candidate.is_file():
            table = candidate
            break
    if table is None:
        return None
    rows = {}
    with open(table) as fh:
        for row in csv.DictReader(line for line in fh if not line.startswith("#")):
            rows[row["name"]] = float(row["density_g_cm3"])
    if "EC" not in rows or "DMC" not in rows:
        return None
    m_ec, m_dmc = 88.06 * ec_molecules, 90.08 * dmc_molecules  # g/mol
    return (m_ec + m_dmc) / (m_ec / rows["EC"] + m_dmc / rows["DMC"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bamboo-electrolyte")
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--ps", type=float, default=5.0)
    parser.add_argument("--timestep", type=float, default=1.0, help="fs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--platform", default="Reference")
    parser.add_argument("--workdir", type=Path, default=Path("openmm_npt_density_run"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from mlmd.errors import MLMDError
    from mlmd.registry import resolve_model_path

    try:
        model_path = resolve_model_path(args.model)
    except MLMDError as exc:
        model_path = None
        reason = str(exc)
    if model_path is None or not model_path.is_file():
        reason = reason if model_path is None else f"model {args.model!r} is not installed (no file {model_path})"
        print(json.dumps({"skipped": reason}))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    from mlmd.md import read_thermo
    from mlmd.openmm.engine import run_openmm_md
    from workflows.boxes import ec_dmc_lipf6_box

    box = ec_dmc_lipf6_box(args.scale, seed=0)
    steps = int(round(args.ps * 1000 / args.timestep))
    cfg = {"ensemble": "npt", "temperature_K": 300.0, "pressure_bar": 1.0, "timestep_fs": args.timestep,
           "steps": steps, "friction_per_fs": 0.01, "log_interval": max(1, steps // 500),
           "trajectory_interval": max(1, steps // 100), "checkpoint_interval": max(1, steps // 10)}
    restart = (args.workdir / "openmm_checkpoint.npz").exists()
    t0 = time.perf_counter()
    report = {"model": str(model_path), "box": box.info.get("composition"), "n_atoms": len(box), "config": cfg}
    try:
        run_openmm_md(box, str(model_path), cfg, args.workdir, restart=restart, platform=args.platform)
        report["guard_trip"] = None
    except MLMDError as exc:
        report["guard_trip"] = str(exc)
    report["wall_s"] = time.perf_counter() - t0
    thermo = read_thermo(args.workdir / "thermo.csv")
    density, t_fs = thermo["density_g_cm3"], thermo["time_fs"]
    half = t_fs >= t_fs[-1] / 2
    slope = np.polyfit(t_fs[half], density[half], 1)[0] if half.sum() > 2 else float("nan")
    report.update({
        "simulated_ps": float(t_fs[-1] / 1000),
        "density_initial_g_cm3": float(density[0]),
        "density_second_half_mean_g_cm3": float(density[half].mean()),
        "density_second_half_std_g_cm3": float(density[half].std()),
        "density_second_half_drift_g_cm3": float(slope * (t_fs[-1] - t_fs[half][0])),
        "temperature_second_half_mean_K": float(thermo["temperature_K"][half].mean()),
        "solvent_ideal_mixing_density_g_cm3": solvent_reference_density(13 * args.scale, 11 * args.scale),
    })
    mean = report["density_second_half_mean_g_cm3"]
    report["physical"] = bool(report["guard_trip"] is None and 1.0 <= mean <= 1.6
                              and abs(report["density_second_half_drift_g_cm3"]) < 0.02)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
