"""MD stability of the bundled potential: NVE energy drift and a long NVT run without a guard trip.

    .venv/bin/python -m benchmarks.md_stability [--nve-ps 10] [--nvt-ps 20] [--out benchmarks/results/md_stability.json]

NVE: the 278-atom EC/DMC + LiPF6 box, 0.5 fs step, after a short Langevin warm-up at 300 K; drift = slope of a
linear fit of the total energy, in meV/atom/ps (target < 1). NVT: the 1,112-atom box, Langevin at 300 K
(``--timestep-fs``, default 0.5 fs, sets both runs); at the end it also checks that every molecule is still one
piece and bonded to no other. ``--nvt-workdir`` keeps the NVT run so that a rerun continues it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def molecule_integrity(atoms) -> dict:
    """Covalent bonds (the topology's rule: covalent radii, ions bond to nothing) against the box's ``mol_id``:
    molecules split into several pieces, and bonds that join two molecules."""
    from mlmd.openmm.topology import bond_components, covalent_bonds

    mol_id = atoms.arrays["mol_id"]
    bonds = covalent_bonds(atoms, None)
    within = [(i, j) for i, j in bonds if mol_id[i] == mol_id[j]]
    piece = bond_components(len(atoms), within)
    pieces = [len(set(piece[mol_id == m])) for m in np.unique(mol_id)]
    return {"molecules": len(pieces), "split_molecules": sum(n > 1 for n in pieces),
            "bonds_between_molecules": len(bonds) - len(within)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bamboo-electrolyte")
    parser.add_argument("--nve-ps", type=float, default=10.0)
    parser.add_argument("--nvt-ps", type=float, default=20.0)
    parser.add_argument("--warmup-ps", type=float, default=0.5)
    parser.add_argument("--timestep-fs", type=float, default=0.5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "md_stability.json"))
    parser.add_argument("--nvt-workdir", default=None,
                        help="keep the NVT run here and continue it from its checkpoint when rerun "
                             "(default: a temporary folder)")
    args = parser.parse_args()

    import torch

    from mlmd.calculator import MLMDCalculator
    from mlmd.errors import SimulationError
    from mlmd.md import MDConfig, read_thermo, run_md
    from workflows.boxes import ec_dmc_lipf6_box

    torch.set_num_threads(args.threads)
    dt = args.timestep_fs
    report: dict = {"model": args.model, "timestep_fs": dt, "dtype": args.dtype}
    with tempfile.TemporaryDirectory() as tmp:
        if args.nve_ps > 0:
            atoms = ec_dmc_lipf6_box(1, seed=1)
            calc = MLMDCalculator(args.model, dtype=args.dtype)
            warm = run_md(atoms, calc, MDConfig(ensemble="nvt", temperature_K=300, timestep_fs=dt,
                                                steps=int(args.warmup_ps * 1000 / dt), log_interval=100,
                                                trajectory_interval=10**9, checkpoint_interval=10**9), Path(tmp, "warm"))
            start = time.perf_counter()
            nve = run_md(warm.atoms, calc, MDConfig(ensemble="nve", temperature_K=300, initial_velocities="keep",
                                                    timestep_fs=dt, steps=int(args.nve_ps * 1000 / dt), log_interval=20,
                                                    trajectory_interval=10**9, checkpoint_interval=10**9), Path(tmp, "nve"))
            thermo = read_thermo(nve.paths["thermo"])
            t_ps = thermo["time_fs"] / 1000
            slope = np.polyfit(t_ps, thermo["etot_eV"], 1)[0]
            report["nve"] = {"n_atoms": len(atoms), "length_ps": float(t_ps[-1] - t_ps[0]),
                             "drift_meV_per_atom_per_ps": float(1000 * slope / len(atoms)),
                             "etot_std_meV_per_atom": float(1000 * np.std(thermo["etot_eV"]) / len(atoms)),
                             "mean_temperature_K": float(np.mean(thermo["temperature_K"])),
                             "wall_s": time.perf_counter() - start}
            print(json.dumps(report["nve"]))
        if args.nvt_ps > 0:
            atoms = ec_dmc_lipf6_box(4, seed=2)
            calc = MLMDCalculator(args.model, dtype=args.dtype)
            workdir = Path(args.nvt_workdir) if args.nvt_workdir else Path(tmp, "nvt")
            resume = (workdir / "checkpoint.npz").exists()
            nvt = MDConfig(ensemble="nvt", temperature_K=300, timestep_fs=dt, steps=int(args.nvt_ps * 1000 / dt),
                           log_interval=100, trajectory_interval=10**9, checkpoint_interval=1000)
            start = time.perf_counter()
            try:
                run = run_md(atoms, calc, nvt, workdir, restart=resume)
                thermo = read_thermo(run.paths["thermo"])
                report["nvt"] = {"n_atoms": len(atoms), "length_ps": args.nvt_ps, "guard_trip": None,
                                 "mean_temperature_K": float(np.mean(thermo["temperature_K"])),
                                 "temperature_std_K": float(np.std(thermo["temperature_K"])),
                                 "min_distance_guard_A": nvt.guards.min_distance_A,
                                 **molecule_integrity(run.atoms),
                                 "resumed": resume, "wall_s_this_call": time.perf_counter() - start}
            except SimulationError as exc:
                report["nvt"] = {"n_atoms": len(atoms), "length_ps": args.nvt_ps, "guard_trip": str(exc),
                                 "resumed": resume, "wall_s_this_call": time.perf_counter() - start}
            print(json.dumps(report["nvt"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
