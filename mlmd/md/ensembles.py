"""Integrators for each ensemble, and the save/restore of their internal state for restarts.

==========  ============  ===============================================================================
ensemble    choice        ASE integrator
==========  ============  ===============================================================================
nve         --            ``VelocityVerlet``
nvt         langevin      ``Langevin`` (Vanden-Eijnden/Ciccotti, ``fixcm=False``), seeded numpy Generator
nvt         bussi         ``Bussi`` stochastic velocity rescaling (CSVR), seeded numpy Generator
nvt         nose_hoover   ``NoseHooverChainNVT``
npt         mtk_iso       ``IsotropicMTKNPT``: Nosé-Hoover chains + MTK isotropic barostat (samples NPT)
npt         mtk           ``MTKNPT``: as above with a fully flexible cell
npt         langevin      ``LangevinBAOAB`` (hydrostatic): BAOAB Langevin particles + Langevin-Hoover volume
                          (Quigley & Probert 2004), seeded numpy Generator; robust for rough ML potentials
==========  ============  ===============================================================================

The MTK and Langevin-Hoover integrators sample the isothermal-isobaric ensemble (Martyna, Tobias, Klein 1994), unlike
Berendsen-type barostats. The state functions read and write the private attributes ASE keeps for these
integrators (thermostat and barostat coordinates and momenta), so a restart continues the same trajectory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms, units
from ase.md.md import MolecularDynamics

from mlmd.errors import ConfigError, InputError
from mlmd.md.config import MDConfig
from mlmd.units import BAR_PER_EV_PER_A3


def integrator_name(config: MDConfig) -> str:
    if config.ensemble == "nve":
        return "nve"
    if config.ensemble == "nvt":
        return f"nvt-{config.thermostat}"
    return f"npt-{config.barostat}"


def build_dynamics(atoms: Atoms, config: MDConfig, rng: np.random.Generator) -> MolecularDynamics:
    """Create the ASE integrator for ``config`` on ``atoms`` (which carries the calculator)."""
    dt = config.timestep_fs * units.fs
    if config.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)

    temperature = float(config.temperature_K)
    if config.ensemble == "nvt":
        if config.thermostat == "langevin":
            from ase.md.langevin import Langevin

            return Langevin(
                atoms, timestep=dt, temperature_K=temperature, friction=config.friction_per_fs / units.fs,
                fixcm=False, rng=rng,
            )
        if config.thermostat == "bussi":
            from ase.md.bussi import Bussi

            if atoms.get_kinetic_energy() <= 0:
                raise InputError(
                    "thermostat 'bussi' cannot start from atoms at rest; set initial_velocities to 'auto' or 'maxwell'"
                )
            return Bussi(atoms, timestep=dt, temperature_K=temperature, taut=config.thermostat_time_fs * units.fs, rng=rng)
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        return NoseHooverChainNVT(
            atoms, timestep=dt, temperature_K=temperature, tdamp=config.thermostat_time_fs * units.fs
        )

    # npt
    if not atoms.pbc.all():
        raise InputError(
            f"ensemble 'npt' needs a fully periodic structure, got pbc={atoms.pbc.tolist()}; use nvt for clusters"
        )
    if "stress" not in getattr(atoms.calc, "implemented_properties", ()):
        raise ConfigError(
            f"ensemble 'npt' needs a calculator that computes stress; {type(atoms.calc).__name__} does not"
        )
    if atoms.constraints and config.barostat != "langevin":
        raise InputError("ensemble 'npt' (MTK) does not support constraints; remove them or use barostat 'langevin'")
    if config.barostat == "langevin":
        import warnings

        from ase.md.langevinbaoab import LangevinBAOAB

        with warnings.catch_warnings():  # it announces its heuristic barostat mass
            warnings.simplefilter("ignore", UserWarning)
            return LangevinBAOAB(
                atoms,
                timestep=dt,
                temperature_K=temperature,
                externalstress=-config.pressure_bar / BAR_PER_EV_PER_A3,  # stress = -pressure
                hydrostatic=True,
                T_tau=units.fs / config.friction_per_fs,
                P_tau=config.barostat_time_fs * units.fs,
                rng=rng,
            )
    from ase.md.nose_hoover_chain import IsotropicMTKNPT, MTKNPT

    cls = IsotropicMTKNPT if config.barostat == "mtk_iso" else MTKNPT
    return cls(
        atoms,
        timestep=dt,
        temperature_K=temperature,
        pressure_au=config.pressure_bar / BAR_PER_EV_PER_A3,
        tdamp=config.thermostat_time_fs * units.fs,
        pdamp=config.barostat_time_fs * units.fs,
    )


# --- state for checkpoints -------------------------------------------------------------------------------

def _chain_state(obj: Any, names: tuple[str, ...], prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{n}": np.array(getattr(obj, n), dtype=np.float64) for n in names}


def _set_chain(obj: Any, names: tuple[str, ...], prefix: str, state: dict[str, np.ndarray]) -> None:
    for n in names:
        current = getattr(obj, n)
        value = np.array(state[f"{prefix}{n}"], dtype=np.float64)
        if np.shape(current) != value.shape:
            raise InputError(f"checkpoint integrator state {prefix}{n} has shape {value.shape}, expected {np.shape(current)}")
        setattr(obj, n, value if np.ndim(current) else float(value))


_NHC = ("_eta", "_p_eta")
_BARO = ("_xi", "_p_xi")


def get_state(dyn: MolecularDynamics) -> dict[str, np.ndarray]:
    """Arrays that, with positions, momenta and cell, let the integrator continue bit-for-bit."""
    from ase.md.bussi import Bussi
    from ase.md.nose_hoover_chain import IsotropicMTKNPT, MTKNPT, NoseHooverChainNVT

    from ase.md.langevinbaoab import LangevinBAOAB

    if isinstance(dyn, Bussi):
        return {"transferred_energy": np.array(dyn.transferred_energy, dtype=np.float64)}
    if isinstance(dyn, LangevinBAOAB):
        if dyn.externalstress is None:
            return {}
        # force_eps is computed mid-step (before the last velocity half-kick), so it is state, not derivable.
        return {"p_eps": np.array(dyn.p_eps, dtype=np.float64), "force_eps": np.array(dyn.force_eps, dtype=np.float64)}
    if isinstance(dyn, NoseHooverChainNVT):
        return _chain_state(dyn._thermostat, _NHC, "thermostat")
    if isinstance(dyn, IsotropicMTKNPT):
        state = _chain_state(dyn._thermostat, _NHC, "thermostat")
        state.update(_chain_state(dyn._barostat, _BARO, "barostat"))
        state.update(_chain_state(dyn, ("_eps", "_p_eps", "_volume0", "_cell0"), "baro"))
        return state
    if isinstance(dyn, MTKNPT):
        state = _chain_state(dyn._thermostat, _NHC, "thermostat")
        state.update(_chain_state(dyn._barostat, _BARO, "barostat"))
        state.update(_chain_state(dyn, ("_h", "_p_g"), "baro"))
        return state
    return {}


def set_state(dyn: MolecularDynamics, state: dict[str, np.ndarray]) -> None:
    """Restore what :func:`get_state` saved (after the atoms' positions, momenta and cell are restored)."""
    from ase.md.bussi import Bussi
    from ase.md.nose_hoover_chain import IsotropicMTKNPT, MTKNPT, NoseHooverChainNVT

    from ase.md.langevinbaoab import LangevinBAOAB

    try:
        if isinstance(dyn, Bussi):
            dyn.transferred_energy = float(state["transferred_energy"])
        elif isinstance(dyn, LangevinBAOAB):
            if dyn.externalstress is not None:
                dyn.p_eps = float(state["p_eps"])
                dyn.force_eps = float(state["force_eps"])
        elif isinstance(dyn, (NoseHooverChainNVT, IsotropicMTKNPT, MTKNPT)):
            _set_chain(dyn._thermostat, _NHC, "thermostat", state)
            if isinstance(dyn, IsotropicMTKNPT):
                _set_chain(dyn._barostat, _BARO, "barostat", state)
                _set_chain(dyn, ("_eps", "_p_eps", "_volume0", "_cell0"), "baro", state)
            elif isinstance(dyn, MTKNPT):
                _set_chain(dyn._barostat, _BARO, "barostat", state)
                _set_chain(dyn, ("_h", "_p_g"), "baro", state)
            # The integrators keep their own copies of positions and momenta.
            dyn._q = dyn.atoms.get_positions()
            dyn._p = dyn.atoms.get_momenta()
    except KeyError as exc:
        raise InputError(f"checkpoint lacks integrator state {exc.args[0]!r} for {type(dyn).__name__}") from None
