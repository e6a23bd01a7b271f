"""Shear viscosity by Green–Kubo with the time-decomposition method.

Zhang, Otani & Maginn, J. Chem. Theory Comput. 11, 3537 (2015):

1. For every replica (independent trajectory, stress every step or every few steps) take the five independent
   traceless stress components of an isotropic fluid, P_xy, P_xz, P_yz, (P_xx - P_yy)/2 and (P_yy - P_zz)/2
   (Daivis & Evans), their autocorrelation (FFT, all time origins), averaged over the five, and the running
   integral η_r(t) = V / (k_B T) ∫_0^t ⟨P(0) P(t')⟩ dt'.
2. Average the running integrals over replicas, η(t), and take their standard deviation σ(t); fit σ(t) = c t^b.
3. Cut the integral at the first time where c t^b exceeds ``std_fraction`` (default 0.4) of η(t).
4. Fit A α τ1 (1 - e^{-t/τ1}) + A (1 - α) τ2 (1 - e^{-t/τ2}) to η(t) on (0, t_cut], each point weighted by 1/t^b
   (``curve_fit`` with sigma = t^b). The viscosity is the plateau A α τ1 + A (1 - α) τ2.
5. Its standard error: bootstrap over replicas (resample replicas, average, refit with the same cut and b),
   reported as half the central 68 % interval of the bootstrap plateaus.

Both decay times are bounded by the fitted range (a decay slower than the cut would be an extrapolation).

Inputs are mlmd units: stress in eV/Å³ (either sign convention: only products enter), volume in Å³, time in fs,
temperature in K. The viscosity comes out in mPa·s.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import cumulative_trapezoid
from scipy.optimize import OptimizeWarning, curve_fit

from mlmd.errors import InputError
from mlmd.units import GPA_PER_EV_PER_A3, KB_EV_PER_K

from . import _checks

#: 1 eV·fs/Å³ in mPa·s (eV/Å³ -> GPa -> Pa, fs -> s, Pa·s -> mPa·s).
MPA_S_PER_EV_FS_PER_A3 = GPA_PER_EV_PER_A3 * 1.0e9 * 1.0e-15 * 1.0e3
#: Fewest stress samples per replica.
MIN_SAMPLES = 16
#: Most points used in a fit (the curve is subsampled evenly beyond this).
MAX_FIT_POINTS = 400


def shear_components(stress) -> np.ndarray:
    """The five traceless shear components of a stress series.

    stress : (T, 3, 3) tensors or (T, 6) Voigt (xx, yy, zz, yz, xz, xy).
    Returns (T, 5): xy, xz, yz, (xx - yy)/2, (yy - zz)/2.
    """
    s = np.asarray(stress, dtype=np.float64)
    if s.ndim == 3 and s.shape[1:] == (3, 3):
        xx, yy, zz, yz, xz, xy = s[:, 0, 0], s[:, 1, 1], s[:, 2, 2], s[:, 1, 2], s[:, 0, 2], s[:, 0, 1]
    elif s.ndim == 2 and s.shape[1] == 6:
        xx, yy, zz, yz, xz, xy = s.T
    else:
        raise InputError(f"stress must have shape (frames, 3, 3) or (frames, 6) in Voigt order; got {s.shape}")
    return np.stack([xy, xz, yz, 0.5 * (xx - yy), 0.5 * (yy - zz)], axis=1)


def _acf(x: np.ndarray, n_lags: int, subtract_mean: bool) -> np.ndarray:
    """Autocorrelation ⟨x(0) x(t)⟩ of each column of (T, K) at lags 0..n_lags-1 (all origins, divided by the
    number of origins), averaged over columns."""
    t = x.shape[0]
    d = x - x.mean(axis=0) if subtract_mean else x
    nfft = 1 << (2 * t - 1).bit_length()
    f = np.fft.rfft(d, nfft, axis=0)
    c = np.fft.irfft(f * np.conj(f), nfft, axis=0)[:n_lags]
    return c.mean(axis=1) / (t - np.arange(n_lags))


def double_exponential(t, a, alpha, tau1, tau2):
    """A α τ1 (1 - e^{-t/τ1}) + A (1 - α) τ2 (1 - e^{-t/τ2})."""
    t = np.asarray(t, dtype=np.float64)
    return a * alpha * tau1 * (-np.expm1(-t / tau1)) + a * (1.0 - alpha) * tau2 * (-np.expm1(-t / tau2))


@dataclass
class GreenKuboResult:
    """Green–Kubo viscosity (mPa·s) with the curves needed to plot and audit it.

    time_fs, running_mean, running_std : the replica-averaged running integral η(t) and its replica spread (mPa·s).
    cutoff_fs : where the fit stops. power_law : (c, b) of σ(t) = c t^b. params : (A, α, τ1, τ2), A in mPa·s/fs.
    replica_plateaus : each replica's running integral averaged over the last 20 % before the cut (diagnostic).
    converged : False when the fit failed to settle or the cut came before the fast decay was resolved.
    """

    viscosity: float
    sem: float
    cutoff_fs: float
    power_law: tuple[float, float]
    params: tuple[float, float, float, float]
    n_replicas: int
    converged: bool
    time_fs: np.ndarray = field(repr=False)
    running_mean: np.ndarray = field(repr=False)
    running_std: np.ndarray = field(repr=False)
    replica_plateaus: np.ndarray = field(repr=False)
    bootstrap: np.ndarray = field(repr=False)

    def fit_curve(self, t_fs) -> np.ndarray:
        return double_exponential(t_fs, *self.params)


def _replica_stress(stress) -> list[np.ndarray]:
    if isinstance(stress, (list, tuple)):
        reps = list(stress)
    else:
        arr = np.asarray(stress)
        if arr.ndim in (3, 4) and not (arr.ndim == 3 and arr.shape[1:] == (3, 3)):
            reps = list(arr)
        else:
            raise InputError(f"stress must be (replicas, frames, 3, 3), (replicas, frames, 6) or a list of "
                             f"per-replica arrays; got shape {arr.shape}")
    if len(reps) < 2:
        raise InputError(f"stress must hold at least 2 replicas for the time-decomposition method; got {len(reps)}")
    out = []
    for k, r in enumerate(reps):
        a = np.asarray(r, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise InputError(f"stress[{k}] contains NaN or inf; finite values required")
        c = shear_components(a)
        if c.shape[0] < MIN_SAMPLES:
            raise InputError(f"stress[{k}] must hold at least {MIN_SAMPLES} frames; got {c.shape[0]}")
        out.append(c)
    n = min(c.shape[0] for c in out)
    if any(c.shape[0] != n for c in out):
        raise InputError(f"stress replicas must have equal lengths; got {[c.shape[0] for c in out]}")
    return out


def _fit(t: np.ndarray, eta: np.ndarray, sigma: np.ndarray, guess_scale: float, start=None):
    """Best double-exponential fit over a few starting points (or from ``start`` only); None if all fail."""
    eta_end = max(float(eta[-1]), 1e-30)
    t_end = float(t[-1])
    best, best_cost = None, np.inf
    if start is not None:
        starts = [tuple(start)]
    else:
        starts = []
        for tau1, tau2 in ((guess_scale, 10 * guess_scale), (0.1 * guess_scale, guess_scale),
                           (0.02 * t_end, 0.3 * t_end)):
            for alpha in (0.5, 0.9):
                starts.append((eta_end / (alpha * tau1 + (1 - alpha) * tau2), alpha, tau1, tau2))
    lower = [0.0, 0.0, 1e-6 * t_end, 1e-6 * t_end]
    upper = [np.inf, 1.0, t_end, t_end]   # both decays must be resolved inside the fitted range
    for p0 in starts:
        p0 = np.clip(p0, lower, upper)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                p, _ = curve_fit(double_exponential, t, eta, p0=p0, sigma=sigma, maxfev=5000, bounds=(lower, upper))
        except (RuntimeError, ValueError):
            continue
        cost = float(np.sum(((double_exponential(t, *p) - eta) / sigma) ** 2))
        if cost < best_cost:
            best, best_cost = p, cost
    return best


def _plateau(p) -> float:
    a, alpha, tau1, tau2 = p
    return float(a * alpha * tau1 + a * (1 - alpha) * tau2)


def green_kubo_viscosity(stress, dt_fs, volume_A3, temperature_K, max_lag_fs=None, std_fraction: float = 0.4,
                         n_bootstrap: int = 100, seed: int = 0, subtract_mean: bool = False) -> GreenKuboResult:
    """Viscosity (mPa·s) by Green–Kubo with the time-decomposition method.

    Parameters
    ----------
    stress : replicas of stress series, (R, T, 3, 3) / (R, T, 6) or a list of (T, 3, 3) / (T, 6), eV/Å³, R ≥ 2.
    dt_fs : time between stress samples (fs).
    volume_A3 : box volume (Å³), one number or one per replica.
    temperature_K : K.
    max_lag_fs : longest correlation time integrated (default: half the replica length).
    std_fraction : cut the integral where the fitted replica spread exceeds this fraction of η(t).
    n_bootstrap : bootstrap resamples over replicas for the standard error (0 disables it: sem = nan).
    seed : for the bootstrap.
    subtract_mean : subtract each component's mean before correlating. Off by default: the traceless shear
        components of an equilibrium fluid have zero mean, and subtracting the sample mean biases the integral
        low by about 2 t / (replica length).
    """
    reps = _replica_stress(stress)
    dt = _checks.positive("dt_fs", dt_fs, "fs")
    temp = _checks.positive("temperature_K", temperature_K, "K")
    vols = np.atleast_1d(np.asarray(volume_A3, dtype=np.float64))
    if vols.shape[0] not in (1, len(reps)) or vols.ndim != 1:
        raise InputError(f"volume_A3 must be one number or one per replica ({len(reps)}); got shape {vols.shape}")
    for v in vols:
        _checks.positive("volume_A3", v, "Å³")
    vols = np.broadcast_to(vols, (len(reps),))
    frac = _checks.positive("std_fraction", std_fraction, "")
    n_frames = reps[0].shape[0]
    duration = (n_frames - 1) * dt
    n_lags = n_frames // 2 if max_lag_fs is None else \
        int(_checks.positive("max_lag_fs", max_lag_fs, "fs") / dt) + 1
    if n_lags > n_frames or n_lags < 4:
        raise InputError(f"max_lag_fs must lie between {3 * dt:g} and {duration:g} fs; got {max_lag_fs!r}")
    t = np.arange(n_lags) * dt
    running = np.empty((len(reps), n_lags))
    for k, (c, v) in enumerate(zip(reps, vols)):
        acf = _acf(c, n_lags, subtract_mean)
        running[k] = v / (KB_EV_PER_K * temp) * cumulative_trapezoid(acf, t, initial=0.0) * MPA_S_PER_EV_FS_PER_A3
    mean = running.mean(axis=0)
    std = running.std(axis=0, ddof=1)

    # Power law for the spread, fitted in log-log on t > 0 where the spread is positive.
    ok = (t > 0) & (std > 0)
    if ok.sum() < 2:
        raise InputError("stress replicas are identical (zero spread between replicas); independent replicas "
                         "are required")
    b, log_c = np.polyfit(np.log(t[ok]), np.log(std[ok]), 1)
    c = float(np.exp(log_c))
    spread = c * np.power(np.maximum(t, dt), b)
    over = np.nonzero((t > 0) & ((mean <= 0) | (spread > frac * mean)))[0]
    # The first crossing after the integral has started to rise (skip t = dt where η(t) is tiny).
    i_cut = n_lags - 1
    for i in over:
        if i >= 3:
            i_cut = int(i)
            break
    idx = np.arange(1, i_cut + 1)
    if idx.size > MAX_FIT_POINTS:
        idx = np.unique(np.linspace(1, i_cut, MAX_FIT_POINTS).astype(int))
    tf = t[idx]
    sig = np.power(tf, b)
    # Time scale guess: where the mean integral first reaches half its value at the cut.
    half = np.nonzero(mean[: i_cut + 1] >= 0.5 * mean[i_cut])[0]
    scale = float(t[half[0]]) if half.size and half[0] > 0 else float(t[max(1, i_cut // 10)])
    p = _fit(tf, mean[idx], sig, scale)
    converged = p is not None and i_cut >= 10
    if p is None:
        p = np.array([np.nan] * 4)
    eta = _plateau(p)
    boots = []
    if n_bootstrap > 0 and p is not None and np.all(np.isfinite(p)):
        rng = np.random.default_rng(seed)
        for _ in range(int(n_bootstrap)):
            pick = rng.integers(0, len(reps), len(reps))
            pb = _fit(tf, running[pick][:, idx].mean(axis=0), sig, scale, start=p)
            if pb is not None:
                boots.append(_plateau(pb))
    boots_a = np.asarray(boots)
    # Half the central 68 % interval: robust to the occasional resample whose slow decay runs away.
    sem = float(0.5 * np.subtract(*np.percentile(boots_a, [84.135, 15.865]))) if boots_a.size >= 2 else float("nan")
    lo = max(1, int(0.8 * i_cut))
    plateaus = running[:, lo:i_cut + 1].mean(axis=1)
    if np.all(np.isfinite(p)) and max(p[2], p[3]) > 0.5 * t[i_cut]:
        converged = False   # the slow decay is not well inside the fitted range: the plateau is an extrapolation
    return GreenKuboResult(eta, sem, float(t[i_cut]), (c, float(b)), tuple(float(v) for v in p), len(reps),
                           bool(converged), t, mean, std, plateaus, boots_a)
