"""Figures for the estimators: density traces, MSD fits, Green–Kubo running integrals, RDFs.

Each function returns a ``matplotlib.figure.Figure`` (built without pyplot: no global state, no backend switch)
and, given ``path``, also writes it atomically (format from the suffix: .png, .svg, .pdf).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from matplotlib.figure import Figure

from mlmd.errors import InputError
from mlmd.io import atomic_path

from .statistics import Density
from .structure import RDF
from .transport import DiffusionResult, MSDFit
from .viscosity import GreenKuboResult

_FORMATS = {".png", ".svg", ".pdf"}


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically (temporary file + rename)."""
    target = Path(path)
    fmt = target.suffix.lower()
    if fmt not in _FORMATS:
        raise InputError(f"figure path must end in one of {sorted(_FORMATS)}; got {str(target)!r}")
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=fmt[1:], dpi=dpi, bbox_inches="tight")
    return target


def _items(obj, kinds) -> list:
    if isinstance(obj, kinds):
        return [obj]
    if isinstance(obj, Mapping):
        return list(obj.values())
    if isinstance(obj, Iterable):
        return list(obj)
    raise InputError(f"expected a result or a collection of results; got {type(obj).__name__}")


def plot_msd(results, path: str | os.PathLike | None = None, d_units: str = "×10⁻⁹ m²/s") -> Figure:
    """MSD curves with their linear fits; the fit window is shaded. Accepts MSDFit/DiffusionResult, lists or dicts."""
    items = _items(results, (MSDFit, DiffusionResult))
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for it in items:
        fit = it.fit if isinstance(it, DiffusionResult) else it
        t_ps = fit.lag_fs / 1000.0
        line = ax.plot(t_ps, fit.msd, lw=1.2, label=fit.label)[0]
        w = (fit.lag_fs >= fit.window_fs[0]) & (fit.lag_fs <= fit.window_fs[1])
        text = ""
        if isinstance(it, DiffusionResult):
            text = f" D = {it.d * 1e4:.3g} ± {it.sem * 1e4:.2g} {d_units}"
        ax.plot(t_ps[w], fit.line(fit.lag_fs[w]), ls="--", color=line.get_color(), label=f"fit{text}")
    if items:
        f0 = items[0].fit if isinstance(items[0], DiffusionResult) else items[0]
        ax.axvspan(f0.window_fs[0] / 1000.0, f0.window_fs[1] / 1000.0, color="0.9", zorder=0)
    ax.set_xlabel("lag time (ps)")
    ax.set_ylabel("MSD (Å²)")
    ax.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_green_kubo(result: GreenKuboResult, path: str | os.PathLike | None = None) -> Figure:
    """Running Green–Kubo integral (replica mean ± spread), double-exponential fit, cut and plateau; and the spread
    with its power law."""
    if not isinstance(result, GreenKuboResult):
        raise InputError(f"result must be a GreenKuboResult; got {type(result).__name__}")
    fig = Figure(figsize=(9.0, 3.8))
    ax, ax2 = fig.subplots(1, 2)
    t_ps = result.time_fs / 1000.0
    ax.fill_between(t_ps, result.running_mean - result.running_std, result.running_mean + result.running_std,
                    color="C0", alpha=0.2, lw=0, label="replica spread")
    ax.plot(t_ps, result.running_mean, color="C0", lw=1.0, label=f"mean of {result.n_replicas} replicas")
    tf = result.time_fs[result.time_fs <= result.cutoff_fs]
    ax.plot(tf / 1000.0, result.fit_curve(tf), color="C3", lw=1.5, label="double-exponential fit")
    ax.axhline(result.viscosity, color="C3", ls=":", lw=1.0,
               label=f"η = {result.viscosity:.3g} ± {result.sem:.2g} mPa·s")
    ax.axvline(result.cutoff_fs / 1000.0, color="0.4", ls="--", lw=0.8, label="cut")
    ax.set_xlabel("correlation time (ps)")
    ax.set_ylabel("η(t) (mPa·s)")
    ax.legend(fontsize=8)
    c, b = result.power_law
    pos = (result.time_fs > 0) & (result.running_std > 0)
    ax2.loglog(t_ps[pos], result.running_std[pos], color="C0", lw=1.0, label="replica spread σ(t)")
    ax2.loglog(t_ps[pos], c * result.time_fs[pos] ** b, color="C1", ls="--", label=f"c t^{b:.2f}")
    ax2.set_xlabel("correlation time (ps)")
    ax2.set_ylabel("σ(t) (mPa·s)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_rdf(rdfs, path: str | os.PathLike | None = None) -> Figure:
    """g(r) curves (left axis) and running coordination numbers (right axis, dashed), first minima marked."""
    items = _items(rdfs, (RDF,))
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    ax2 = ax.twinx()
    for k, g in enumerate(items):
        color = f"C{k % 10}"
        ax.plot(g.r, g.g, color=color, lw=1.2, label=g.label or f"rdf {k}")
        ax2.plot(g.r, g.coordination, color=color, lw=0.8, ls="--")
        if np.isfinite(g.first_minimum):
            ax.axvline(g.first_minimum, color=color, lw=0.6, ls=":")
            ax2.plot([g.first_minimum], [g.coordination_number], "o", color=color, ms=4)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g(r)")
    ax2.set_ylabel("n(r)")
    ax.legend(fontsize=8, loc="upper right")
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_density(result: Density, dt_fs: float | None = None, path: str | os.PathLike | None = None) -> Figure:
    """Density trace with the discarded equilibration shaded and the mean ± standard error."""
    if not isinstance(result, Density):
        raise InputError(f"result must be a Density; got {type(result).__name__}")
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    n = result.series.shape[0]
    if dt_fs is None:
        x, xlabel, x0 = np.arange(n), "sample", result.start
    else:
        x, xlabel, x0 = np.arange(n) * dt_fs / 1000.0, "time (ps)", result.start * dt_fs / 1000.0
    ax.plot(x, result.series, lw=0.8, color="C0")
    if result.start > 0:
        ax.axvspan(x[0], x0, color="0.9", zorder=0, label="equilibration (discarded)")
    ax.axhline(result.mean, color="C3", lw=1.0, label=f"{result.mean:.4f} ± {result.sem:.4f} g/cm³")
    ax.axhspan(result.mean - result.sem, result.mean + result.sem, color="C3", alpha=0.2, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density (g/cm³)")
    ax.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig
