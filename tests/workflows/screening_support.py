"""Shared helpers of the screening tests: a tiny random checkpoint, a tiny protocol, spec writers."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY_PROTOCOL = dict(
    timestep_fs=1.0, minimise_steps=5, equilibration_steps=10, density_min_steps=20, density_max_steps=30,
    density_chunk_steps=10, density_log_interval=1, n_replicas=2, replica_equilibration_steps=0,
    replica_steps=40, trajectory_interval=2, checkpoint_interval=10,
)
PLACEHOLDER = "workflows.screening.placeholder:calculator"


def tiny_checkpoint(path: Path, species=None) -> Path:
    from mlmd.checkpoint import save_checkpoint
    from potentials.bamboo import BambooPotential

    cfg = {"num_features": 16, "num_rbf": 8, "num_layers": 2, "num_heads": 2}
    if species is not None:
        cfg["species"] = list(species)
    if not path.exists():
        save_checkpoint(BambooPotential(cfg), path)
    return path


def formulation(model: Path, **kw) -> dict:
    base = dict(solvents="DME", salt="LiFSI", concentration=1.0, n_atoms=110, model=str(model),
                calculator=PLACEHOLDER, protocol=dict(TINY_PROTOCOL))
    base.update(kw)
    return base


def write_spec(path: Path, formulations: list[dict], **top) -> Path:
    path.write_text(yaml.safe_dump({"formulations": formulations, **top}))
    return path


def failing_calculator(model_path=None, dtype="float32"):
    """The placeholder calculator, but every force call after the 20th raises (a formulation that fails mid-MD)."""
    from workflows.screening.placeholder import calculator

    calc = calculator(model_path, dtype)
    original = calc.calculate
    calls = [0]

    def calculate(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 20:
            raise RuntimeError("synthetic failure for the failure-isolation test")
        return original(*args, **kwargs)

    calc.calculate = calculate
    return calc


INSTANCES = [0]


def third_calculator_fails(model_path=None, dtype="float32"):
    """The placeholder calculator; the third one built in this process fails after 5 force calls (with one
    thread-worker: prepare builds the first, replicas 0, 1, 2 the next ones, so replica 1 fails)."""
    from workflows.screening.placeholder import calculator

    INSTANCES[0] += 1
    calc = calculator(model_path, dtype)
    if INSTANCES[0] == 3:
        original = calc.calculate
        calls = [0]

        def calculate(*args, **kwargs):
            calls[0] += 1
            if calls[0] > 5:
                raise RuntimeError("synthetic replica failure")
            return original(*args, **kwargs)

        calc.calculate = calculate
    return calc
