"""OpenMM driver overhead and OpenMM-vs-ASE agreement for an mlmd potential (prints JSON).

    .venv/bin/python -m benchmarks.openmm_overhead [--model bamboo-electrolyte] [--scale 4] [--steps 20] [--threads 1]

On the periodic EC/DMC + LiPF6 box (scale 4: 1,112 atoms):

* ``agreement``: energy and forces through ``MLPotential("mlmd")`` in OpenMM (Reference platform) vs the ASE
  calculator, float64, on the box and on a non-periodic cluster of whole molecules cut from it
  (target: both within 1e-5 relative).
* ``overhead``: MD steps in OpenMM (LangevinMiddleIntegrator) in two ways — the bare ``Simulation.step`` loop and the
  full engine ``run_openmm_md`` (guards, log and trajectory at their default intervals) — with the time spent inside
  the model evaluation (``MLMDCalculator.evaluate``: neighbour list + network + conversion, what the ASE path pays
  too) measured in the same run. ``overhead_ratio`` = (wall per step - model time per step) / model time per step
  (target: <= 0.10 on the ~1,100-atom box).

Without the trained bundled model (``potentials/pretrained/bamboo-electrolyte/model.pt``) the model is a random-init
BAMBOO of the bundled architecture (default config); the cost and overhead do not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class _Timer:
    """Accumulates the wall time spent in MLMDCalculator.evaluate (patched for the benchmark only)."""

    def __init__(self):
        self.durations: list[float] = []

    def install(self):
        from mlmd.calculator import MLMDCalculator

        original = MLMDCalculator.evaluate
        timer = self

        def evaluate(self, atoms, stress=False):
            t0 = time.perf_counter()
            try:
                return original(self, atoms, stress=stress)
            finally:
                timer.durations.append(time.perf_counter() - t0)

        MLMDCalculator.evaluate = evaluate
        return self

    def reset(self):
        self.durations = []


def _model(name: str | None, workdir: Path) -> tuple[str, str]:
    from mlmd.checkpoint import save_checkpoint
    from mlmd.registry import resolve_model_path
    from mlmd.errors import InputError

    if name:
        try:
            path = resolve_model_path(name)
            if path.is_file():
                return str(path), name
        except InputError:
            pass
    import torch

    from potentials.bamboo import BambooPotential

    torch.manual_seed(0)
    model = BambooPotential({})  # the bundled architecture (64 features, 3 layers, 5 Å), random weights
    model.set_reference_energies({1: -13.6, 3: -5.4, 5: -20.0, 6: -37.8, 7: -54.6, 8: -75.0, 9: -99.7, 15: -340.0, 16: -397.0}, 0.1)
    path = save_checkpoint(model, workdir / "random-bamboo.pt")
    return str(path), "random-init BAMBOO (bundled architecture; trained model not available)"


def _cluster(atoms, n_molecules: int):
    """Whole molecules (made whole across the box boundary) with mol_id < n_molecules, as a non-periodic cluster."""
    from mlmd import keys

    mol = atoms.arrays[keys.MOL_ID]
    keep = np.flatnonzero(mol < n_molecules)
    sub = atoms[keep]
    cell = np.asarray(atoms.cell.array)
    inverse = np.linalg.inv(cell)
    for m in range(n_molecules):
        idx = np.flatnonzero(sub.arrays[keys.MOL_ID] == m)
        if len(idx) == 0:
            continue
        ref = sub.positions[idx[0]]
        d = sub.positions[idx] - ref
        d -= np.round(d @ inverse) @ cell
        sub.positions[idx] = ref + d
    sub.pbc = False
    sub.set_cell(np.zeros((3, 3)))
    sub.info["total_charge"] = 0  # the first molecules of a build_box box are solvent (EC): neutral
    return sub


def agreement(atoms, model_path: str) -> dict:
    import openmm
    from openmm import unit
    from mlmd.openmm.plugin import mlpotential

    from mlmd.calculator import MLMDCalculator
    from mlmd.openmm.topology import openmm_positions, reduced_box, topology_from_atoms
    from mlmd.units import KJ_PER_MOL_PER_EV

    atoms = atoms.copy()
    atoms.calc = MLMDCalculator(model_path, dtype="float64")
    ref_e, ref_f = atoms.get_potential_energy(), atoms.get_forces()
    topology = topology_from_atoms(atoms)
    system = mlpotential(model=model_path, dtype="float64").createSystem(topology)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    if topology.getPeriodicBoxVectors() is not None:
        context.setPeriodicBoxVectors(*topology.getPeriodicBoxVectors())
    context.setPositions(openmm_positions(atoms))
    state = context.getState(getEnergy=True, getForces=True)
    e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV
    f = np.asarray(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom)) / KJ_PER_MOL_PER_EV
    if atoms.pbc.any():
        f = f @ reduced_box(atoms)[1]
    return {
        "n_atoms": len(atoms),
        "periodic": bool(atoms.pbc.any()),
        "energy_eV_ase": ref_e,
        "energy_eV_openmm": e,
        "energy_rel_diff": abs(e - ref_e) / abs(ref_e),
        "forces_max_abs_diff_eV_A": float(np.abs(f - ref_f).max()),
        "forces_rel_diff": float(np.abs(f - ref_f).max() / np.abs(ref_f).max()),
    }


def overhead_bare(atoms, model_path: str, steps: int, timer: _Timer, platform: str) -> dict:
    import openmm
    from openmm import app, unit
    from mlmd.openmm.plugin import mlpotential

    from mlmd.openmm.topology import openmm_positions, topology_from_atoms

    topology = topology_from_atoms(atoms)
    system = mlpotential(model=model_path, dtype="float32").createSystem(topology)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 10 / unit.picosecond, 0.0005 * unit.picosecond)
    simulation = app.Simulation(topology, system, integrator, openmm.Platform.getPlatformByName(platform),
                                {"Threads": "1"} if platform == "CPU" else {})
    simulation.context.setPeriodicBoxVectors(*topology.getPeriodicBoxVectors())
    simulation.context.setPositions(openmm_positions(atoms))
    simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    simulation.step(2)  # warm-up (first neighbour list, allocator)
    timer.reset()
    t0 = time.perf_counter()
    simulation.step(steps)
    wall = time.perf_counter() - t0
    return _ratio(wall, steps, timer)


def overhead_engine(atoms, model_path: str, steps: int, timer: _Timer, platform: str, workdir: Path) -> dict:
    from mlmd.openmm.engine import run_openmm_md

    cfg = {"ensemble": "nvt", "temperature_K": 300, "steps": steps, "timestep_fs": 0.5, "log_interval": 10,
           "trajectory_interval": 100, "checkpoint_interval": 1000, "log_pressure": False}
    run_openmm_md(atoms, model_path, dict(cfg, steps=2), workdir / "warm", dtype="float32", platform=platform)
    timer.reset()
    result = run_openmm_md(atoms, model_path, cfg, workdir / "run", dtype="float32", platform=platform)
    # result.wall_time_s covers the stepping loop, not System creation nor the initial (guarded) evaluation.
    timer.durations = timer.durations[1:]
    return _ratio(result.wall_time_s, steps, timer)


def _ratio(wall: float, steps: int, timer: _Timer) -> dict:
    per_step = wall / steps
    model = sum(timer.durations) / steps
    return {
        "steps": steps,
        "model_evaluations": len(timer.durations),
        "wall_per_step_s": per_step,
        "model_per_step_s": model,
        "driver_overhead_per_step_s": per_step - model,
        "overhead_ratio": (per_step - model) / model if model > 0 else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bamboo-electrolyte")
    parser.add_argument("--scale", type=int, default=4, help="box scale: 1 -> 278 atoms, 4 -> 1,112 atoms")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--platform", default="Reference")
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from workflows.boxes import ec_dmc_lipf6_box

    timer = _Timer().install()
    with tempfile.TemporaryDirectory(prefix="mlmd-omm-bench-") as tmp:
        tmp = Path(tmp)
        model_path, model_label = _model(args.model, tmp)
        box = ec_dmc_lipf6_box(args.scale, seed=0)
        report = {"model": model_label, "box": box.info.get("composition"), "n_atoms": len(box),
                  "torch_threads": args.threads, "platform": args.platform}
        if not args.skip_agreement:
            cluster = _cluster(ec_dmc_lipf6_box(1, seed=0), 8)  # EC and DMC only: the salt comes last in mol_id
            report["agreement"] = {"periodic_box": agreement(box, model_path), "cluster": agreement(cluster, model_path)}
            report["agreement"]["within_1e-5"] = all(
                v["energy_rel_diff"] <= 1e-5 and v["forces_rel_diff"] <= 1e-5
                for v in report["agreement"].values() if isinstance(v, dict))
        report["overhead_bare_loop"] = overhead_bare(box, model_path, args.steps, timer, args.platform)
        report["overhead_engine"] = overhead_engine(box, model_path, args.steps, timer, args.platform, tmp)
        report["overhead_within_10pct"] = report["overhead_engine"]["overhead_ratio"] <= 0.10
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
