"""Error bars for correlated time series.

- :func:`block_average` — Flyvbjerg–Petersen blocking (successive pairwise averaging) with the block size chosen
  automatically by Jonsson's test (M. Jonsson, Phys. Rev. E 98, 043304 (2018)): the first blocking level at which
  the remaining levels show no significant lag-1 correlation (chi-squared test at 99 %).
- :func:`statistical_inefficiency` — g = 1 + 2 Σ (1 - t/n) ρ(t), summed until ρ(t) first drops to ≤ 0
  (the estimator of Chodera et al., J. Chem. Theory Comput. 3, 26 (2007)); g ≥ 1, and the number of
  independent samples is n / g.
- :func:`standard_error` — the standard error of the mean of a correlated series by either method.
- :func:`replica_mean` — mean and standard error over independent replicas.
- :func:`detect_equilibration` — where to start averaging (maximum number of independent samples).
- :func:`density` — g/cm³ from an NPT volume series, with equilibration cut and blocking error bar.
- :func:`half_drift` — second half's mean minus the first's.

All take plain 1-D arrays and return plain Python numbers or small dataclasses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from mlmd.errors import InputError
from mlmd.units import G_PER_CM3_PER_AMU_PER_A3

from . import _checks

#: Fewest samples a series may hold for an error estimate.
MIN_SAMPLES = 8
#: Largest SEM growth from the previous blocking level still accepted as a plateau (sqrt(2) = no plateau at all).
PLATEAU_GROWTH = 1.25


def _series(x, name: str = "series") -> np.ndarray:
    a = _checks.finite_array(name, x, 1, "(samples,)")
    if a.shape[0] < MIN_SAMPLES:
        raise InputError(f"{name} must hold at least {MIN_SAMPLES} samples; got {a.shape[0]}")
    return a


@dataclass
class BlockAverage:
    """Result of :func:`block_average`.

    ``block_sizes[k]``, ``sems[k]`` and ``sem_errors[k]`` describe blocking level k (block size 2**k):
    the standard error of the mean estimated from that level and the error of that estimate.
    ``level`` is the level chosen automatically; ``converged`` is False when the test found no plateau
    before running out of blocks, or when the SEM still grows by more than 25 % from the previous level
    (then the error bar is a lower bound: the series is too short for its correlation time).
    """

    mean: float
    sem: float
    sem_error: float
    statistical_inefficiency: float
    level: int
    converged: bool
    n_samples: int
    block_sizes: np.ndarray = field(repr=False)
    sems: np.ndarray = field(repr=False)
    sem_errors: np.ndarray = field(repr=False)


def block_average(x, min_blocks: int = 8, min_block_size: int = 1) -> BlockAverage:
    """Mean and standard error of a correlated series by automatic blocking.

    Parameters
    ----------
    x : (n,) array, n ≥ 8
    min_blocks : the chosen level must keep at least this many blocks; if the test asks for fewer, the result
        is flagged ``converged=False``.
    min_block_size : smallest acceptable block (samples), for series whose correlation length is known
        (e.g. per-origin MSD slopes, correlated over the fit window); the level is raised to reach it, and
        the plateau-growth check only compares levels at or above it.

    At each level the series is halved by averaging neighbouring pairs (a trailing odd sample is dropped).
    The per-level estimate is SEM_k² = s_k² / (n_k - 1) with s_k² the biased variance of the n_k blocks,
    and its error SEM_k / sqrt(2 (n_k - 1)) (Flyvbjerg & Petersen, J. Chem. Phys. 91, 461 (1989)).
    """
    a = _series(x, "series")
    n0 = a.shape[0]
    mean = float(a.mean())
    var0 = float(a.var())
    sizes, sems, errs, ms = [], [], [], []
    level_data = a
    size = 1
    while level_data.shape[0] >= 2:
        n = level_data.shape[0]
        mu = level_data.mean()
        d = level_data - mu
        s2 = float(np.mean(d * d))
        gamma = float(np.sum(d[:-1] * d[1:]) / n)
        sizes.append(size)
        sem = np.sqrt(s2 / (n - 1)) if n > 1 else np.nan
        sems.append(sem)
        errs.append(sem / np.sqrt(2.0 * (n - 1)))
        ms.append(n * (gamma / s2) ** 2 if s2 > 0 else 0.0)
        m = (n // 2) * 2
        level_data = 0.5 * (level_data[0:m:2] + level_data[1:m:2])
        size *= 2
    sizes_a = np.asarray(sizes)
    sems_a = np.asarray(sems)
    errs_a = np.asarray(errs)
    if var0 == 0.0:
        return BlockAverage(mean, 0.0, 0.0, 1.0, 0, True, n0, sizes_a, sems_a, errs_a)
    # Jonsson's statistic: M_j = sum_{k >= j} n_k (gamma_k / s_k^2)^2 ~ chi2(d - j) when levels >= j are uncorrelated.
    ms_a = np.asarray(ms)
    d = len(ms_a)
    m_tail = np.cumsum(ms_a[::-1])[::-1]
    n_blocks = np.array([n0 // s for s in sizes_a])
    chosen, converged = None, False
    for j in range(d):
        if m_tail[j] < stats.chi2.ppf(0.99, d - j):
            chosen = j
            converged = bool(n_blocks[j] >= min_blocks)
            break
    usable = np.nonzero(n_blocks >= min_blocks)[0]
    last_usable = int(usable[-1]) if usable.size else 0
    if chosen is None or chosen > last_usable:
        chosen, converged = last_usable, False
    if sizes_a[chosen] < min_block_size:
        big = np.nonzero((sizes_a >= min_block_size) & (n_blocks >= 2))[0]
        chosen = int(big[0]) if big.size else d - 1
        converged = bool(n_blocks[chosen] >= min_blocks)
    # Still rising towards the plateau (sqrt(2) per level when blocks << correlation time)? Only judged between
    # admissible levels: below min_block_size the series is known to be correlated.
    if chosen > 0 and sizes_a[chosen - 1] >= min_block_size and sems_a[chosen - 1] > 0 \
            and sems_a[chosen] / sems_a[chosen - 1] > PLATEAU_GROWTH:
        converged = False
    sem = float(sems_a[chosen])
    g = max(1.0, sem * sem * n0 / var0) if var0 > 0 else 1.0
    return BlockAverage(mean, sem, float(errs_a[chosen]), float(g), int(chosen), converged, n0,
                        sizes_a, sems_a, errs_a)


def autocorrelation(x, normalise: bool = True) -> np.ndarray:
    """Autocovariance (or autocorrelation if ``normalise``) of a 1-D series at lags 0..n-1 by FFT.

    Uses the unbiased estimator C(t) = 1/(n - t) Σ_i δx_i δx_{i+t} with δx = x - mean(x).
    """
    a = _checks.finite_array("series", x, 1, "(samples,)")
    n = a.shape[0]
    d = a - a.mean()
    nfft = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(d, nfft)
    c = np.fft.irfft(f * np.conj(f), nfft)[:n] / (n - np.arange(n))
    if normalise:
        c = c / c[0] if c[0] > 0 else np.zeros_like(c)
    return c


def statistical_inefficiency(x) -> float:
    """g = 1 + 2 Σ_{t≥1} (1 - t/n) ρ(t), summed until ρ(t) first drops to ≤ 0; at least 1.

    For an AR(1) series with coefficient φ the exact value is (1 + φ) / (1 - φ).
    """
    a = _series(x, "series")
    n = a.shape[0]
    if np.all(a == a[0]):
        return 1.0
    rho = autocorrelation(a)
    g = 1.0
    for t in range(1, n - 1):
        if rho[t] <= 0.0:
            break
        g += 2.0 * rho[t] * (1.0 - t / n)
    return float(max(1.0, g))


def standard_error(x, method: str = "blocking") -> float:
    """Standard error of the mean of a correlated series.

    ``method``: ``"blocking"`` (automatic Flyvbjerg–Petersen, :func:`block_average`) or ``"inefficiency"``
    (sqrt(g var / n) with g from :func:`statistical_inefficiency`).
    """
    if method == "blocking":
        return block_average(x).sem
    if method == "inefficiency":
        a = _series(x, "series")
        return float(np.sqrt(statistical_inefficiency(a) * a.var(ddof=1) / a.shape[0]))
    raise InputError(f"method must be 'blocking' or 'inefficiency'; got {method!r}")


def replica_mean(values) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation / sqrt(n)) over ≥ 2 independent replicas."""
    a = _checks.finite_array("replica values", values, 1, "(replicas,)")
    if a.shape[0] < 2:
        raise InputError(f"replica values must hold at least 2 replicas; got {a.shape[0]}")
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(a.shape[0]))


@dataclass
class Equilibration:
    """Result of :func:`detect_equilibration`: discard ``start`` samples; the rest holds ``n_effective``
    independent samples (statistical inefficiency ``g``)."""

    start: int
    g: float
    n_effective: float


def detect_equilibration(x, n_candidates: int = 50) -> Equilibration:
    """Start of the equilibrated part of a series: the origin t0 that maximises the number of independent samples
    (n - t0) / g(t0) of the remainder (Chodera, J. Chem. Theory Comput. 12, 1799 (2016)).

    ``n_candidates`` evenly spaced origins in the first half of the series are tried.
    """
    a = _series(x, "series")
    n = a.shape[0]
    best = Equilibration(0, statistical_inefficiency(a), n / statistical_inefficiency(a))
    for t0 in np.unique(np.linspace(0, n // 2, max(2, int(n_candidates))).astype(int))[1:]:
        if n - t0 < MIN_SAMPLES:
            break
        g = statistical_inefficiency(a[t0:])
        if (n - t0) / g > best.n_effective:
            best = Equilibration(int(t0), g, (n - t0) / g)
    return best


@dataclass
class Density:
    """Mass density in g/cm³ from a volume series: mean, standard error (automatic blocking), and the equilibration
    cut used. ``converged`` is False when blocking found no plateau (error bar is then a lower bound). ``drift`` is
    the second half's mean minus the first half's (after the cut); ``stationary`` is False when it exceeds twice
    its own standard error: the box was still compressing or expanding, whatever the error bar says."""

    mean: float
    sem: float
    start: int
    n_samples: int
    converged: bool
    series: np.ndarray = field(repr=False)
    drift: float = 0.0
    stationary: bool = True


def density(total_mass_amu, volumes_A3, discard_equilibration: bool = True) -> Density:
    """Density (g/cm³) of a box of total mass ``total_mass_amu`` from its volume series (Å³, NPT).

    With ``discard_equilibration`` the start found by :func:`detect_equilibration` is dropped first.
    """
    mass = _checks.positive("total_mass_amu", total_mass_amu, "amu")
    v = _series(volumes_A3, "volumes_A3")
    if np.any(v <= 0):
        raise InputError(f"volumes_A3 must all be > 0 Å³; got {float(v[v <= 0][0])!r}")
    rho = mass / v * G_PER_CM3_PER_AMU_PER_A3
    start = detect_equilibration(rho).start if discard_equilibration else 0
    ba = block_average(rho[start:])
    drift, stationary = _half_drift(rho[start:])
    return Density(ba.mean, ba.sem, start, rho.shape[0] - start, ba.converged, rho, drift, stationary)


def half_drift(x) -> float:
    """Mean of the second half of a series minus the first (0 for fewer than 2 samples): a trend far beyond the
    standard error says the series was still relaxing."""
    first, second = np.array_split(np.asarray(x, dtype=float), 2)
    return float(second.mean() - first.mean()) if len(first) and len(second) else 0.0


def _half_drift(x: np.ndarray) -> tuple[float, bool]:
    """:func:`half_drift` and whether it is within 2 standard errors (each half's error from its statistical
    inefficiency; a trend inflates those, so this flags only clear drifts)."""
    if x.shape[0] < 2 * MIN_SAMPLES:
        return 0.0, True
    first, second = np.array_split(x, 2)
    drift = half_drift(x)
    noise = math.hypot(standard_error(first, "inefficiency"), standard_error(second, "inefficiency"))
    return drift, bool(abs(drift) <= 2.0 * noise)
