"""OpenMM reporters for Systems built with ``MLPotential("mlmd", ...)`` (plain OpenMM scripts; the engine
``mlmd md --engine openmm`` has its own loop and does the same).

    simulation.reporters.append(ForceSpreadReporter("spread.csv", 10, max_forces_std=0.5))

:class:`ForceSpreadReporter` writes, every ``reportInterval`` steps, the largest per-atom force spread (eV/Å) of the
posterior / ensemble model over *every* force evaluation since the previous report, and raises
:class:`mlmd.errors.SimulationError` when it exceeds ``max_forces_std`` (the same guard as the MD engines).
"""

from __future__ import annotations

import os
from typing import IO

from mlmd.errors import InputError, SimulationError


class ForceSpreadReporter:
    """Per-interval maximum of the mlmd force's ``forces_std`` (eV/Å); CSV columns ``step,forces_std_max_eV_A``."""

    def __init__(self, file: str | os.PathLike | IO[str], reportInterval: int, max_forces_std: float | None = None):
        if int(reportInterval) < 1:
            raise InputError(f"reportInterval {reportInterval!r} must be a positive number of steps")
        self._interval = int(reportInterval)
        self._max = max_forces_std
        self._own = not hasattr(file, "write")
        self._out = open(file, "w") if self._own else file
        self._out.write("step,forces_std_max_eV_A\n")
        self._compute = None

    def describeNextReport(self, simulation):
        steps = self._interval - simulation.currentStep % self._interval
        return {"steps": steps, "periodic": None, "include": []}  # no extra force evaluation

    def report(self, simulation, state) -> None:
        from mlmd.openmm.plugin import find_compute

        if self._compute is None:
            self._compute = find_compute(simulation.system)
            if self._compute is None:
                raise InputError("ForceSpreadReporter needs a System built with MLPotential('mlmd', ...); none found")
        value = self._compute.take_max_forces_std()
        step = simulation.currentStep
        self._out.write(f"{step},{'' if value is None else f'{value:.6g}'}\n")
        self._out.flush()
        if self._max is not None and value is not None and not value <= self._max:
            raise SimulationError(f"guard 'forces_std' tripped at step {step}: force uncertainty {value:.3f} eV/Å "
                                  f"exceeds {self._max} eV/Å (largest per-atom spread since the previous report)")

    def close(self) -> None:
        if self._own:
            self._out.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
