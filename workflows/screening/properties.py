"""Properties of one formulation from its folder, each with an uncertainty, via ``workflows.analysis``.

=============================  ==========================================================================================
property (database key)        estimator and uncertainty
=============================  ==========================================================================================
density_g_cm3 (+ _sem)         NPT production volumes; equilibration detected and dropped; blocking standard error
molarity_M                     salt pairs / (N_A ⟨V⟩): the concentration actually simulated
viscosity_mPa_s (+ _sem)       Green–Kubo, time-decomposition over the replicas (stress every ``stress_interval``
                               steps, five shear components, double-exponential fit of the replica-mean running
                               integral, cut where the replica spread grows past 40 %); bootstrap over replicas
D_<sp> (+ _sem), 1e-9 m²/s     unwrapped molecular centre-of-mass MSD (system COM removed), fit 10–40 % of the run;
                               Yeh–Hummer corrected with the computed viscosity (``D_<sp>_pbc`` uncorrected); error:
                               replica scatter (≥ 3 replicas) or per-molecule scatter, plus the viscosity's error
sigma_NE_mS_cm (+ _sem)        Nernst–Einstein from the PBC diffusion coefficients (no ion correlations)
sigma_Einstein_mS_cm (+ _sem)  collective Einstein: MSD of the total charge displacement
haven_ratio                    sigma_NE / sigma_Einstein
t_Li_NE (+ _sem)               Li⁺ transference number D_Li/(D_Li + D_anion) form (Nernst–Einstein, uncorrelated)
t_Li_Onsager (+ _sem)          Li⁺ transference number from the Onsager coefficients (σ_LiLi + σ_Li,anion)/σ, in the
                               barycentric frame: includes ion–ion correlations; neither is the concentrated-solution
                               (Bruce–Vincent / Newman) t+ that electrochemical measurements report
CN_Li_<El> (+ _sem)            Li⁺–O/F/N coordination numbers at the first RDF minimum (mdtraj); block-averaging error
shell_<sp> (+ _sem)            molecules of each species in the Li⁺ first shell
pair_free / pair_CIP / pair_AGG  ion-pairing fractions (+ _sem)
epistemic_*                    only for models with posterior samples / ensemble members: the model's spread of the
                               energy, forces and pressure on NPT frames and the first-order density spread
                               (:func:`epistemic_spread`)
=============================  ==========================================================================================

Each estimator runs on its own: if one cannot be evaluated (too short a run, too few replicas) its properties are
left out and the reason is recorded in ``notes``; the others are still reported.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from mlmd.units import BAR_PER_EV_PER_A3
from workflows.screening import protocol
from workflows.screening.composition import AVOGADRO, LI_LABEL, Plan

#: 1 Å²/fs in 10⁻⁹ m²/s.
D_UNIT = 1.0e4
_STRESS_COLUMNS = ("pxx_bar", "pyy_bar", "pzz_bar", "pyz_bar", "pxz_bar", "pxy_bar")


def key_name(text: str) -> str:
    """A database-safe key fragment (identifier characters only)."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", str(text))
    return out if out and not out[0].isdigit() else f"x{out}"


def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_replicas(plan: Plan, folder: Path) -> dict[str, Any]:
    """Stress series, unwrapped positions, cells, volumes and temperatures of the finished replicas."""
    from ase.io import read

    from mlmd.md.io import read_thermo

    stress, positions, cells, volumes, temps = [], [], [], [], []
    for d in protocol.replica_dirs(plan, folder, finished_only=True):
        thermo = read_thermo(d / "thermo.csv")
        s = np.stack([thermo[c] for c in _STRESS_COLUMNS], axis=1) / BAR_PER_EV_PER_A3
        stress.append(s)
        frames = read(d / "trajectory.extxyz", index=":")
        positions.append(np.stack([f.positions for f in frames]))
        cells.append(np.stack([f.cell.array for f in frames]))
        volumes.append(float(np.nanmean(thermo["volume_A3"])))
        temps.append(float(np.nanmean(thermo["temperature_K"])))
    n = min(len(p) for p in positions) if positions else 0
    m = min(len(s) for s in stress) if stress else 0
    return {"stress": [s[:m] for s in stress], "positions": [p[:n] for p in positions],
            "cells": [c[:n] for c in cells], "volumes": volumes, "temperatures": temps}


def compute(plan: Plan, folder: Path, figures: bool = True) -> dict[str, Any]:
    """All properties of a formulation whose stages have finished.

    Returns ``{"properties": {key: float}, "summaries": {...}, "notes": [...], "figures": {name: path}}``.
    """
    from workflows.analysis.summaries import summary

    folder = Path(folder)
    f = plan.formulation
    p = f.protocol
    props: dict[str, float] = {}
    summaries: dict[str, Any] = {}
    notes: list[str] = []
    figs: dict[str, str] = {}
    fig_dir = folder / "figures"

    def figure(name: str, make) -> None:
        if not figures:
            return
        try:
            fig_dir.mkdir(exist_ok=True)
            path = fig_dir / f"{name}.png"
            make(path)
            figs[name] = str(path)
        except Exception as exc:  # a figure never costs a result
            notes.append(f"figure {name}: {_first_line(exc)}")

    # Density (NPT production).
    rho = protocol.density_series(plan, folder)
    decision = protocol.read_json(folder / protocol.DENSITY)
    props["density_g_cm3"], props["density_g_cm3_sem"] = rho.mean, rho.sem
    summaries["density"] = {**summary(rho), "stopped": decision.get("stopped"), "production_steps": decision.get("steps")}
    if not rho.converged:
        notes.append("density: blocking found no plateau; the error bar is a lower bound")
    if not rho.stationary:
        notes.append(f"density: still drifting ({rho.drift:+.4f} g/cm³ between the production halves); "
                     "run a longer equilibration")
    from workflows.analysis.plots import plot_density

    log_dt = p.density_log_interval * p.timestep_fs
    figure("density", lambda path: plot_density(rho, dt_fs=log_dt, path=path))
    mean_volume = plan.total_mass_amu * 1.66053906660 / rho.mean
    if plan.n_salt:
        props["molarity_M"] = plan.n_salt / AVOGADRO / (mean_volume * 1e-27)
    if plan.model.uncertainty:
        try:
            spread = epistemic_spread(plan, folder, rho)
            props.update(spread)
            summaries["epistemic"] = spread
            if spread:
                notes.append("epistemic: model spread on NPT frames; density spread is the first-order response "
                             "to the pressure spread (transport properties carry no epistemic term)")
        except Exception as exc:
            notes.append(f"epistemic spread: {_first_line(exc)}")
    if p.n_replicas == 0:
        return {"properties": _clean(props), "summaries": summaries, "notes": notes, "figures": figs}

    reps = load_replicas(plan, folder)
    missing = p.n_replicas - len(reps["stress"])
    if missing:
        notes.append(f"{missing} of {p.n_replicas} replicas failed; transport from the {len(reps['stress'])} "
                     "that finished")
    props["n_replicas_used"] = float(len(reps["stress"]))
    temperature = float(np.mean(reps["temperatures"]))
    props["temperature_mean_K"] = temperature
    volume = float(np.mean(reps["volumes"]))
    box = _read_box(folder)
    masses = box.get_masses()
    labels = np.asarray(plan.labels())
    mol_id = box.arrays["mol_id"]
    numbers = box.numbers
    charges = plan.charges()
    length = volume ** (1 / 3)

    # Viscosity (Green–Kubo, time decomposition).
    eta = eta_sem = None
    try:
        from workflows.analysis.plots import plot_green_kubo
        from workflows.analysis.viscosity import green_kubo_viscosity

        gk = green_kubo_viscosity(reps["stress"], p.stress_interval * p.timestep_fs, reps["volumes"], temperature,
                                  seed=f.seed)
        eta, eta_sem = gk.viscosity, gk.sem
        props["viscosity_mPa_s"], props["viscosity_mPa_s_sem"] = eta, eta_sem
        summaries["viscosity"] = summary(gk)
        if not gk.converged:
            notes.append("viscosity: the Green-Kubo fit did not settle (run longer or add replicas)")
        figure("green_kubo", lambda path: plot_green_kubo(gk, path))
    except Exception as exc:
        notes.append(f"viscosity: {_first_line(exc)}")

    # Self-diffusion, Yeh–Hummer corrected with the viscosity.
    diff = None
    dt_frames = p.trajectory_interval * p.timestep_fs
    try:
        from workflows.analysis.plots import plot_msd
        from workflows.analysis.transport import corrected_diffusion, self_diffusion

        diff = self_diffusion(reps["positions"], dt_frames, masses, labels, mol_id)
        corrected = None
        if eta is not None and eta > 0 and math.isfinite(eta):
            corrected = corrected_diffusion(diff, temperature, eta, length,
                                            viscosity_sem=eta_sem if _finite(eta_sem) else 0.0)
        else:
            notes.append("diffusion: no viscosity, so no Yeh-Hummer correction (D_* are the periodic-box values)")
        for sp, res in diff.items():
            k = key_name(sp)
            props[f"D_{k}_pbc"] = res.d * D_UNIT
            d, sem = corrected[sp] if corrected else (res.d, res.sem)
            props[f"D_{k}"], props[f"D_{k}_sem"] = d * D_UNIT, sem * D_UNIT
            props[f"msd_exponent_{k}"] = res.msd_exponent
            if not res.converged:
                notes.append(f"diffusion {sp}: error bar not converged")
        regimes = {sp: res.regime for sp, res in diff.items()}
        props["transport_diffusive"] = all(r == "diffusive" for r in regimes.values())
        if not props["transport_diffusive"]:
            slopes = ", ".join(f"{sp} {diff[sp].msd_exponent:.2f} ({r})" for sp, r in regimes.items() if r != "diffusive")
            notes.append(f"transport: the MSD is not diffusive over the fit window (log-log slope, 1 when diffusive: "
                         f"{slopes}); diffusion, conductivity and transference numbers are not estimates, run longer "
                         f"replicas")
        summaries["diffusion"] = {sp: summary(res) for sp, res in diff.items()}
        figure("msd", lambda path: plot_msd(diff, path))
    except Exception as exc:
        notes.append(f"diffusion: {_first_line(exc)}")

    # Conductivity and transference numbers.
    if plan.n_salt:
        try:
            from workflows.analysis.transport import ionic_conductivity

            ions = [c.label for c in plan.components if c.role != "solvent"]
            cond = ionic_conductivity(reps["positions"], dt_frames, masses, charges, labels, volume, temperature,
                                      mol_id=mol_id, diffusion={k: v for k, v in diff.items() if k in ions}
                                      if diff else None)
            props["sigma_NE_mS_cm"], props["sigma_NE_mS_cm_sem"] = cond.nernst_einstein_ms_per_cm, \
                cond.nernst_einstein_sem_ms_per_cm
            props["sigma_Einstein_mS_cm"], props["sigma_Einstein_mS_cm_sem"] = cond.collective_ms_per_cm, \
                cond.collective_sem_ms_per_cm
            props["haven_ratio"] = cond.haven_ratio
            if LI_LABEL in cond.t_ne:
                props["t_Li_NE"], props["t_Li_NE_sem"] = cond.t_ne[LI_LABEL]
            if LI_LABEL in cond.t_collective:
                props["t_Li_Onsager"], props["t_Li_Onsager_sem"] = cond.t_collective[LI_LABEL]
            summaries["conductivity"] = summary(cond)
            if not cond.converged:
                notes.append("conductivity: collective error bar not converged (run longer or add replicas)")
        except Exception as exc:
            notes.append(f"conductivity: {_first_line(exc)}")

        # Solvation structure.
        try:
            from workflows.analysis.plots import plot_rdf
            from workflows.analysis.structure import solvation_analysis

            anion = [c.label for c in plan.components if c.role == "anion"]
            pos = np.concatenate(reps["positions"], axis=0)
            cells = np.concatenate(reps["cells"], axis=0)
            r_max = min(8.0, 0.5 * float(np.min(np.linalg.norm(cells[0], axis=1))) - 0.05)
            sol = solvation_analysis(pos, cells, numbers, mol_id, labels, li_label=LI_LABEL, anion_labels=anion,
                                     r_max_A=r_max)
            for el, (v, s) in sol.shells.coordination.items():
                props[f"CN_Li_{key_name(el)}"], props[f"CN_Li_{key_name(el)}_sem"] = v, s
            for name, (v, s) in sol.shells.composition.items():
                if name != LI_LABEL:
                    props[f"shell_{key_name(name)}"], props[f"shell_{key_name(name)}_sem"] = v, s
            for cls, (v, s) in sol.shells.pairing.items():
                props[f"pair_{cls}"], props[f"pair_{cls}_sem"] = v, s
            summaries["solvation"] = {"rdfs": {k: summary(g) for k, g in sol.rdfs.items()},
                                      "shells": summary(sol.shells)}
            figure("rdf", lambda path: plot_rdf(sol.rdfs, path))
        except Exception as exc:
            notes.append(f"solvation: {_first_line(exc)}")
    return {"properties": _clean(props), "summaries": summaries, "notes": notes, "figures": figs}


def epistemic_spread(plan: Plan, folder: Path, rho, n_frames: int = 8) -> dict[str, float]:
    """The model's epistemic spread on the NPT production frames, for models that carry posterior samples or
    ensemble members (``energy_std``/``forces_std``/``stress_std``).

    Returns mean per-atom energy spread (eV/atom), mean force spread (eV/Å), the pressure spread σ_P (bar; the
    mean of the three diagonal stress spreads, an upper bound on the spread of their average), and a first-order
    density spread δρ = ρ κ_T σ_P with the isothermal compressibility κ_T = var(V) / (k_B T ⟨V⟩) from the same NPT
    run: how far the density would move if the pressure were off by σ_P. Per-member MD (the full propagation to
    transport properties) is not run by this protocol.
    """
    from ase.io import read

    from mlmd.calculator import MLMDCalculator
    from mlmd.md.io import read_thermo
    from mlmd.units import KB_EV_PER_K

    frames = read(folder / "density" / "trajectory.extxyz", index=":")
    frames = frames[len(frames) // 2:] or frames
    picks = np.unique(np.linspace(0, len(frames) - 1, min(n_frames, len(frames))).round().astype(int))
    box = _read_box(folder)
    calc = MLMDCalculator(plan.model.path, dtype=plan.formulation.dtype)
    e_std, f_std, p_std = [], [], []
    for i in picks:
        atoms = box.copy()
        atoms.set_cell(frames[int(i)].cell, scale_atoms=False)
        atoms.positions = frames[int(i)].positions
        res = calc.evaluate(atoms, stress=True)
        if "energy_std" not in res:
            return {}
        e_std.append(float(np.ravel(res["energy_std"])[0]) / len(atoms))
        f_std.append(float(np.mean(np.linalg.norm(np.reshape(res["forces_std"], (len(atoms), 3)), axis=1))))
        if "stress_std" in res:
            s = np.reshape(res["stress_std"], (3, 3))
            p_std.append(float(np.mean(np.diag(s))) * BAR_PER_EV_PER_A3)
    out = {"epistemic_energy_eV_atom": float(np.mean(e_std)), "epistemic_forces_eV_A": float(np.mean(f_std))}
    if p_std:
        sigma_p = float(np.mean(p_std))
        out["epistemic_pressure_bar"] = sigma_p
        thermo = read_thermo(folder / "density" / "thermo.csv")
        v = thermo["volume_A3"][rho.start:]
        temp = float(np.nanmean(thermo["temperature_K"][rho.start:]))
        if v.size > 2 and np.var(v) > 0:
            kappa = float(np.var(v) / (KB_EV_PER_K * temp * np.mean(v)))        # 1/(eV/Å³)
            out["compressibility_per_GPa"] = kappa / 160.21766208
            out["epistemic_density_g_cm3"] = rho.mean * kappa * sigma_p / BAR_PER_EV_PER_A3
    return out


def _read_box(folder: Path):
    from ase.io import read

    return read(folder / protocol.BOX, format="extxyz")


def _clean(props: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in props.items():
        fv = _finite(v)
        if fv is not None:
            out[k] = fv
    return out


def analyse(plan: Plan, folder: Path) -> dict[str, Any]:
    """Compute the properties and write ``result.json`` atomically (the formulation's completion marker)."""
    folder = Path(folder)
    path = folder / protocol.RESULT
    if path.is_file():
        data = protocol.read_json(path)
        if data.get("key") == plan.key:
            return data
    protocol.write_status(folder, "analyse", "estimators")
    out = compute(plan, folder)
    out["key"] = plan.key
    out["name"] = plan.name
    protocol.write_json(path, out)
    protocol.write_status(folder, "done", "")
    return out
