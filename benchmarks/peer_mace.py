"""Peer measurement, run inside the MACE virtual environment (never imported by mlmd).

Usage: python peer_mace.py STRUCTURE.extxyz --calls N [--threads T]
Builds an untrained MACE (64x0e hidden irreps, 2 interactions, r_max 5 Å, the project's elements), attaches
mace's ASE calculator (neighbour list rebuilt on every call) and prints one JSON line with the timing.
"""

import argparse
import json
import os
import resource
import tempfile
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.io import read  # noqa: E402
from e3nn import o3  # noqa: E402
from mace import modules  # noqa: E402
from mace.calculators import MACECalculator  # noqa: E402

ELEMENTS = [1, 3, 5, 6, 7, 8, 9, 15, 16]


def build_model(r_max: float = 5.0) -> torch.nn.Module:
    z_table = ELEMENTS
    return modules.ScaleShiftMACE(
        r_max=r_max, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2, num_elements=len(z_table), hidden_irreps=o3.Irreps("64x0e"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(z_table)), avg_num_neighbors=40.0,
        atomic_numbers=z_table, correlation=3, gate=torch.nn.functional.silu,
        atomic_inter_scale=1.0, atomic_inter_shift=0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("structure")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="a trained MACE model file instead of an untrained one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    atoms = read(args.structure)
    path = args.model
    if path is None:
        torch.manual_seed(0)
        path = os.path.join(tempfile.mkdtemp(), "mace.model")
        torch.save(build_model(), path)
    atoms.calc = MACECalculator(model_paths=path, device="cpu", default_dtype="float32")
    rng = np.random.default_rng(0)
    baseline_MB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    atoms.get_forces()  # warm-up
    times, cpu = [], []
    for _ in range(args.calls):
        atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
        start, start_cpu = time.perf_counter(), time.process_time()
        atoms.get_forces()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    seconds = float(np.median(times))
    print(json.dumps({"model": "MACE 64x0e 2 interactions (mace-torch)", "n_atoms": len(atoms), "seconds_per_call": seconds, "cpu_seconds_per_call": float(np.median(cpu)),
                      "atom_steps_per_s": len(atoms) / seconds,
                      "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "calc_memory_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline_MB}))


if __name__ == "__main__":
    main()
