"""Self-diffusion, ionic conductivity and transference numbers from unwrapped MD positions.

Units in: Å, fs, amu, e, K, Å³. Diffusion coefficients come out in Å²/fs (``D * 1e4`` is 10⁻⁹ m²/s), conductivities
in S/m (``mS/cm = 10 × S/m``).

Method
------
- **Units of motion.** With ``mol_id`` every molecule moves as its centre of mass (its charge is the sum of its atoms'
  charges, placed at that centre); without it every atom is its own unit. The centre of mass of the whole system is
  subtracted from every frame (removes thermostat/barostat drift). The displacement of a centre of mass is the mass-
  weighted mean of its atoms' unwrapped displacements, so molecules broken across the box in frame 0 do no harm.
- **MSD** with every frame as a time origin, by FFT (Kneller et al., Comput. Phys. Commun. 91, 191 (1995)).
- **Fit.** Ordinary least squares of MSD(t) = 6 D t + c over a window: by default from 10 % to 40 % of the trajectory
  length, which skips the ballistic/caged start and stops before the few-origin noise of long lags dominates. The
  log–log slope of the MSD over the window is reported (``exponent``); a value far from 1 means the window is not
  diffusive yet and the run is too short.
- **Uncertainty.** With ≥ 3 replicas: the standard error of the replica values. Otherwise, for self-diffusion, the
  scatter of the per-unit coefficients (each unit's MSD fitted with the same weights; their mean is the fit of the
  mean MSD) divided by sqrt(units) — this treats units as independent, which neglects the weak collective
  correlations of a liquid. For a single unit and for the collective (charge) MSD, the fit is repeated per time
  origin (the same OLS slope applied to the displacements from one origin), giving a correlated series of
  per-origin slopes whose mean is the estimate; its standard error comes from block averaging with blocks at least
  as long as the fit window (:func:`workflows.analysis.statistics.block_average`). That needs a trajectory many
  windows long; if fewer than 8 such blocks exist the result says ``converged=False`` — use replicas or a shorter
  window.
- **Conductivity.** Nernst–Einstein σ_NE = Σ_s N_s q_s² D_s / (V k_B T) from the self-diffusion of each charged
  species, and the collective (Einstein) σ = lim ⟨|Σ_i q_i Δr_i(t)|²⟩ / (6 V k_B T t) from the MSD of the charge
  displacement, fitted the same way. The collective value is split into Onsager terms σ_ab between charged species
  (from the cross-MSD of M_a = Σ_{i∈a} q_i r_i and M_b, by polarisation).
- **Transference numbers.** ``t_ne[s] = N_s q_s² D_s / Σ_s' N_s' q_s'² D_s'`` (Nernst–Einstein, no ion correlation;
  for a 1:1 salt t+ = D+ / (D+ + D-)) and ``t_collective[s] = Σ_b σ_sb / σ`` (Onsager, with cross terms), both in the
  barycentric (system centre-of-mass) reference frame.

kinisi (PyPI) implements a Bayesian variant of the same estimators but refuses NPT input and is heavy; these
estimators are small, plain NumPy/SciPy and are checked against Brownian trajectories in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.signal import fftconvolve

from mlmd.errors import InputError
from mlmd.units import KB_EV_PER_K

from . import _checks
from .statistics import block_average

#: Elementary charge in coulomb (exact SI value); not in mlmd.units.
E_CHARGE_C = 1.602176634e-19
#: 1 Å²/fs in m²/s.
M2_PER_S_PER_A2_PER_FS = 1.0e-5
#: 1 e²/(Å·eV·fs) in S/m  (e²/eV = e/V in C/V; / (1e-10 m · 1e-15 s)).
S_PER_M_PER_E2_PER_A_EV_FS = E_CHARGE_C / (1.0e-10 * 1.0e-15)
#: Yeh–Hummer constant for a cubic box.
XI_CUBIC = 2.837297
#: Default fit window as fractions of the trajectory length.
DEFAULT_WINDOW_FRACTIONS = (0.1, 0.4)
#: Fewest frames for an MSD fit.
MIN_FRAMES = 10
#: Fewest replicas for a replica-scatter error bar.
MIN_REPLICAS_FOR_SCATTER = 3
_CHUNK_BYTES = 64 * 1024 * 1024


# --------------------------------------------------------------------------------------------- MSD core

def msd_fft(x) -> np.ndarray:
    """Mean-squared displacement with all time origins.

    Parameters
    ----------
    x : (T, M, 3) positions of M units over T frames.

    Returns
    -------
    (T, M) array: MSD of each unit at lags 0..T-1 (in frames), averaged over the T - lag origins.
    """
    x = np.asarray(x, dtype=np.float64)
    t, m, _ = x.shape
    out = np.empty((t, m))
    nfft = 1 << (2 * t - 1).bit_length()
    per_unit = max(1, _CHUNK_BYTES // (nfft * 3 * 16))
    counts = (t - np.arange(t))[:, None]
    for lo in range(0, m, per_unit):
        xc = x[:, lo:lo + per_unit]
        xc = xc - xc.mean(axis=0)                      # MSD is shift-invariant; small numbers cancel better
        d = np.sum(xc * xc, axis=2)                                       # (T, m)
        cs = np.concatenate([np.zeros((1, d.shape[1])), np.cumsum(d, axis=0)])
        lag = np.arange(t)
        s1 = (cs[t - lag] + cs[t] - cs[lag]) / counts
        f = np.fft.rfft(xc, nfft, axis=0)
        s2 = np.fft.irfft(f * np.conj(f), nfft, axis=0)[:t].sum(axis=2) / counts
        out[:, lo:lo + per_unit] = s1 - 2.0 * s2
    return np.maximum(out, 0.0)


def _ols_weights(lags: np.ndarray) -> np.ndarray:
    """Weights w with Σ w = 0 and Σ w lag = 1, so that Σ w y is the OLS slope of y against lag."""
    c = lags - lags.mean()
    return c / np.sum(c * c)


def _origin_slopes(x: np.ndarray, w: np.ndarray, i0: int) -> np.ndarray:
    """Per-origin OLS slope of |x(t0 + τ) - x(t0)|² over lags τ = i0 .. i0+len(w)-1 (in frames), summed over units.

    x : (T, M, 3). Returns a series of length T - i1, one value per origin t0 (the slope in the units of ``w``,
    summed over the M units).
    Uses Σ w = 0:  Σ_τ w_τ |x(t0+τ) - x(t0)|² = Σ_τ w_τ |x(t0+τ)|² - 2 x(t0)·Σ_τ w_τ x(t0+τ).
    """
    t, m, _ = x.shape
    i1 = i0 + len(w) - 1
    n = t - i1
    wr = w[::-1]
    per_unit = max(1, _CHUNK_BYTES // (t * 3 * 8 * 4))
    total = np.zeros(n)
    for lo in range(0, m, per_unit):
        xc = x[:, lo:lo + per_unit]
        xc = xc - xc.mean(axis=0)
        sq = np.sum(xc * xc, axis=2)                                      # (T, m)
        a = fftconvolve(sq[i0:], wr[:, None], mode="valid", axes=0)[:n]   # Σ_τ w_τ |x(t0+τ)|²
        b = fftconvolve(xc[i0:], wr[:, None, None], mode="valid", axes=0)[:n]
        total += a.sum(axis=1) - 2.0 * np.sum(xc[:n] * b, axis=(1, 2))
    return total


def _origin_sem(x: np.ndarray, w: np.ndarray, i0: int, i1: int) -> tuple[float, bool]:
    """Standard error of the mean per-origin slope (per frame-time unit of ``w``) by blocking, blocks ≥ the window."""
    series = _origin_slopes(x, w, i0) / x.shape[1]
    if series.shape[0] < 8:
        return float("inf"), False
    ba = block_average(series, min_block_size=i1 + 1)
    return ba.sem, ba.converged


@dataclass
class MSDFit:
    """An MSD curve and its linear fit. Times in fs, MSD in Å², slope in Å²/fs."""

    label: str
    lag_fs: np.ndarray = field(repr=False)
    msd: np.ndarray = field(repr=False)
    window_fs: tuple[float, float]
    slope: float
    intercept: float
    exponent: float
    n_units: int
    dimension_factor: float = 6.0

    def line(self, t_fs) -> np.ndarray:
        return self.intercept + self.slope * np.asarray(t_fs)


def _fit_window(n_frames: int, dt_fs: float, window_fs) -> tuple[int, int, tuple[float, float]]:
    duration = (n_frames - 1) * dt_fs
    if window_fs is None:
        window_fs = (DEFAULT_WINDOW_FRACTIONS[0] * duration, DEFAULT_WINDOW_FRACTIONS[1] * duration)
    else:
        window_fs = _checks.fraction_window("window_fs", window_fs, duration)
    i0 = int(np.ceil(window_fs[0] / dt_fs - 1e-9))
    i1 = int(np.floor(window_fs[1] / dt_fs + 1e-9))
    i0 = max(i0, 1)
    if i1 - i0 + 1 < 3:
        raise InputError(f"window_fs must span at least 3 frames at dt_fs={dt_fs:g}; got {window_fs!r}")
    return i0, i1, (float(window_fs[0]), float(window_fs[1]))


def _fit_curve(msd: np.ndarray, dt_fs: float, i0: int, i1: int) -> tuple[float, float, float]:
    lags = np.arange(i0, i1 + 1) * dt_fs
    y = msd[i0:i1 + 1]
    slope, intercept = np.polyfit(lags, y, 1)
    pos = y > 0
    exponent = float(np.polyfit(np.log(lags[pos]), np.log(y[pos]), 1)[0]) if pos.sum() >= 2 else float("nan")
    return float(slope), float(intercept), exponent


#: |log-log MSD slope - 1| up to which a fit window counts as diffusive.
DIFFUSIVE_EXPONENT_TOLERANCE = 0.2


def msd_regime(exponent: float, tolerance: float = DIFFUSIVE_EXPONENT_TOLERANCE) -> str:
    """"diffusive" when the log-log MSD slope is within ``tolerance`` of 1, "ballistic" above (too short: the
    motion is still inertial or caged-free flight), "subdiffusive" below (caged), "unknown" when it is not finite."""
    if not np.isfinite(exponent):
        return "unknown"
    if abs(exponent - 1.0) <= tolerance:
        return "diffusive"
    return "ballistic" if exponent > 1.0 else "subdiffusive"


# --------------------------------------------------------------------------------------------- inputs

def _replicas(positions) -> list[np.ndarray]:
    if isinstance(positions, np.ndarray) and positions.ndim == 4:      # (replicas, frames, atoms, 3)
        positions = list(positions)
    if isinstance(positions, (list, tuple)):
        if len(positions) == 0:
            raise InputError("positions must be an array (frames, atoms, 3) or a non-empty list of them; got []")
        reps = [_checks.positions(p, f"positions[{k}]", MIN_FRAMES) for k, p in enumerate(positions)]
    else:
        reps = [_checks.positions(positions, "positions", MIN_FRAMES)]
    shape = reps[0].shape
    for k, r in enumerate(reps[1:], start=1):
        if r.shape != shape:
            raise InputError(f"positions[{k}] must have the shape of positions[0] {shape}; got {r.shape}")
    return reps


@dataclass
class Units:
    """Moving units (molecules or atoms): index of each atom's unit, and per-unit label, mass and charge."""

    atom_unit: np.ndarray
    labels: np.ndarray
    masses: np.ndarray
    charges: np.ndarray


def make_units(masses, labels, mol_id=None, charges=None) -> Units:
    """Group atoms into units (molecules by ``mol_id``, else single atoms).

    masses : (N,) amu, > 0. labels : (N,) species names (the same for all atoms of a molecule).
    mol_id : (N,) integers or None. charges : (N,) e or None (zeros).
    """
    m = _checks.finite_array("masses", masses, 1, "(atoms,)")
    n = m.shape[0]
    if np.any(m <= 0):
        raise InputError(f"masses must all be > 0 amu; got {float(m[m <= 0][0])!r} at atom {int(np.argmax(m <= 0))}")
    lab = np.asarray([str(s) for s in np.asarray(labels).ravel()]) if np.ndim(labels) == 1 else np.asarray(labels)
    _checks.per_atom("labels", lab, n, numeric=False)
    q = np.zeros(n) if charges is None else _checks.per_atom("charges", charges, n)
    if mol_id is None:
        return Units(np.arange(n), lab, m.copy(), q.copy())
    mid = np.asarray(mol_id)
    _checks.per_atom("mol_id", mid, n, numeric=False)
    if not np.issubdtype(mid.dtype, np.integer):
        raise InputError(f"mol_id must hold integers; got dtype {mid.dtype}")
    uniq, inv = np.unique(mid, return_inverse=True)
    k = uniq.shape[0]
    first = np.zeros(k, dtype=int)
    first[inv[::-1]] = np.arange(n)[::-1]
    ulab = lab[first]
    bad = np.nonzero(ulab[inv] != lab)[0]
    if bad.size:
        i = bad[0]
        raise InputError(f"labels must be equal within a molecule; mol_id {uniq[inv[i]]} has {str(ulab[inv[i]])!r} "
                         f"and {str(lab[i])!r}")
    return Units(inv, ulab, np.bincount(inv, m, k), np.bincount(inv, q, k))


def unit_positions(x: np.ndarray, masses: np.ndarray, units: Units, remove_com: bool = True) -> np.ndarray:
    """(T, N, 3) atom positions -> (T, M, 3) unit centres of mass, relative to the system's centre of mass
    (unless ``remove_com`` is False)."""
    m = np.asarray(masses, dtype=np.float64)
    k = units.masses.shape[0]
    com = np.einsum("tni,n->ti", x, m) / m.sum() if remove_com else np.zeros((x.shape[0], 3))
    if k == x.shape[1] and np.array_equal(units.atom_unit, np.arange(k)):
        return x - com[:, None, :]
    n = x.shape[1]
    assign = sparse.csr_matrix((m, (np.arange(n), units.atom_unit)), shape=(n, k))
    flat = x.transpose(0, 2, 1).reshape(-1, n)                               # (T*3, N)
    out = np.asarray(assign.T @ flat.T).T.reshape(x.shape[0], 3, k).transpose(0, 2, 1)
    return out / units.masses[None, :, None] - com[:, None, :]


# --------------------------------------------------------------------------------------------- diffusion

@dataclass
class DiffusionResult:
    """Self-diffusion of one species. ``d`` and ``sem`` in Å²/fs; ``replica_values`` one per replica."""

    label: str
    d: float
    sem: float
    method: str
    converged: bool
    n_units: int
    replica_values: np.ndarray = field(repr=False)
    fit: MSDFit = field(repr=False)

    _summary_properties = ("d_m2_per_s", "sem_m2_per_s", "window_fs", "msd_exponent", "regime")

    @property
    def window_fs(self) -> tuple[float, float]:
        return self.fit.window_fs

    @property
    def msd_exponent(self) -> float:
        """Log–log slope of the MSD over the fit window (1 when diffusive)."""
        return self.fit.exponent

    @property
    def regime(self) -> str:
        """:func:`msd_regime` of the fit window: transport numbers mean something only when "diffusive"."""
        return msd_regime(self.fit.exponent)

    @property
    def d_m2_per_s(self) -> float:
        return self.d * M2_PER_S_PER_A2_PER_FS

    @property
    def sem_m2_per_s(self) -> float:
        return self.sem * M2_PER_S_PER_A2_PER_FS


def _combine(values: list[float], sems: list[float], convs: list[bool]) -> tuple[float, float, str, bool]:
    v = np.asarray(values)
    if v.shape[0] >= MIN_REPLICAS_FOR_SCATTER:
        return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.shape[0])), "replicas", True
    s = np.asarray(sems)
    return float(v.mean()), float(np.sqrt(np.sum(s * s)) / v.shape[0]), "blocking", all(convs)


def self_diffusion(positions, dt_fs, masses, labels, mol_id=None, window_fs=None,
                   species=None, remove_com: bool = True) -> dict[str, DiffusionResult]:
    """Self-diffusion coefficient of each species from unwrapped positions.

    Parameters
    ----------
    positions : (T, N, 3) unwrapped positions in Å, or replicas: a list of such arrays (same shape) or (R, T, N, 3).
    dt_fs : time between frames in fs.
    masses : (N,) amu. labels : (N,) species name per atom (equal within a molecule).
    mol_id : (N,) molecule index per atom, or None to treat atoms as units.
    window_fs : (start, end) of the fit in fs; default 10 %–40 % of the trajectory length.
    species : names to analyse (default: all labels).
    remove_com : subtract the system's centre of mass from every frame (default True).

    Returns
    -------
    {label: DiffusionResult}, D in Å²/fs (finite-size *uncorrected*; see :func:`yeh_hummer`).
    """
    reps = _replicas(positions)
    dt = _checks.positive("dt_fs", dt_fs, "fs")
    n_frames, n_atoms, _ = reps[0].shape
    m = _checks.per_atom("masses", masses, n_atoms)
    units = make_units(m, labels, mol_id)
    i0, i1, win = _fit_window(n_frames, dt, window_fs)
    names = list(dict.fromkeys(units.labels.tolist())) if species is None else [str(s) for s in species]
    for s in names:
        if s not in set(units.labels.tolist()):
            raise InputError(f"species {s!r} is not among the labels; accepted: {sorted(set(units.labels.tolist()))}")
    w = _ols_weights(np.arange(i0, i1 + 1) * dt)
    per = {s: ([], [], [], []) for s in names}   # values, sems, converged, msd curves
    for x in reps:
        ux = unit_positions(x, m, units, remove_com)
        for s in names:
            sel = ux[:, units.labels == s]
            per_unit = msd_fft(sel)                                        # (T, M)
            msd = per_unit.mean(axis=1)
            slope, _, _ = _fit_curve(msd, dt, i0, i1)
            if sel.shape[1] >= 2:
                # One D per unit (same OLS weights, so their mean is the fit of the mean MSD).
                d_units = w @ per_unit[i0:i1 + 1] / 6.0
                sem, conv = float(d_units.std(ddof=1) / np.sqrt(d_units.shape[0])), True
            else:
                sem, conv = _origin_sem(sel, w, i0, i1)
                sem /= 6.0
            per[s][0].append(slope / 6.0)
            per[s][1].append(sem)
            per[s][2].append(conv)
            per[s][3].append(msd)
    out = {}
    for s in names:
        vals, sems, convs, curves = per[s]
        d, sem, method, conv = _combine(vals, sems, convs)
        msd = np.mean(curves, axis=0)
        slope, intercept, exponent = _fit_curve(msd, dt, i0, i1)
        fit = MSDFit(s, np.arange(n_frames) * dt, msd, win, slope, intercept, exponent,
                     int(np.sum(units.labels == s)))
        out[s] = DiffusionResult(s, d, sem, method, conv, fit.n_units, np.asarray(vals), fit)
    return out


def yeh_hummer_correction(temperature_K, viscosity_mpa_s, box_length_A, xi: float = XI_CUBIC) -> float:
    """Finite-size correction k_B T ξ / (6 π η L) in Å²/fs (add it to D_PBC). ξ = 2.837297 for a cubic box."""
    t = _checks.positive("temperature_K", temperature_K, "K")
    eta = _checks.positive("viscosity_mpa_s", viscosity_mpa_s, "mPa·s")
    length = _checks.positive("box_length_A", box_length_A, "Å")
    kt_joule = KB_EV_PER_K * t * E_CHARGE_C
    d_si = kt_joule * xi / (6.0 * np.pi * eta * 1.0e-3 * length * 1.0e-10)
    return float(d_si / M2_PER_S_PER_A2_PER_FS)


def yeh_hummer(d_pbc, temperature_K, viscosity_mpa_s, box_length_A, d_sem=0.0, viscosity_sem=0.0,
               xi: float = XI_CUBIC) -> tuple[float, float]:
    """D∞ = D_PBC + k_B T ξ / (6 π η L) and its standard error (D and η errors combined in quadrature).

    d_pbc, d_sem in Å²/fs; viscosity in mPa·s; box length in Å. Returns (D∞, sem) in Å²/fs.
    """
    d = float(_checks.finite_array("d_pbc", d_pbc, 0, "()"))
    corr = yeh_hummer_correction(temperature_K, viscosity_mpa_s, box_length_A, xi)
    rel = float(viscosity_sem) / float(viscosity_mpa_s)
    return d + corr, float(np.hypot(float(d_sem), corr * rel))


def corrected_diffusion(diffusion: dict[str, DiffusionResult], temperature_K, viscosity_mpa_s, box_length_A,
                        viscosity_sem: float = 0.0, xi: float = XI_CUBIC) -> dict[str, tuple[float, float]]:
    """Yeh–Hummer D∞ and its standard error (Å²/fs) for every species of :func:`self_diffusion`'s result."""
    return {k: yeh_hummer(v.d, temperature_K, viscosity_mpa_s, box_length_A, v.sem, viscosity_sem, xi)
            for k, v in diffusion.items()}


def box_length_from_cell(cell, tol: float = 1e-3) -> float:
    """Edge length in Å of a cubic cell (3, 3); InputError if the cell is not cubic within ``tol`` (relative)."""
    c = _checks.finite_array("cell", cell, 2, "(3, 3)")
    if c.shape != (3, 3):
        raise InputError(f"cell must have shape (3, 3); got {c.shape}")
    lengths = np.linalg.norm(c, axis=1)
    cosines = [c[i] @ c[j] / (lengths[i] * lengths[j]) for i, j in ((0, 1), (0, 2), (1, 2))] if np.all(lengths > 0) \
        else [1.0]
    if np.ptp(lengths) > tol * lengths.max() or max(abs(v) for v in cosines) > tol:
        raise InputError(f"cell must be cubic for the Yeh–Hummer ξ = {XI_CUBIC}; got edge lengths "
                         f"{np.round(lengths, 4).tolist()} Å")
    return float(lengths.mean())


# --------------------------------------------------------------------------------------------- conductivity

@dataclass
class ConductivityResult:
    """Ionic conductivity in S/m (``*_ms_per_cm`` give mS/cm) and transference numbers.

    ``onsager[a][b]`` are the collective terms σ_ab in S/m between charged species (sum = ``collective``).
    ``t_ne`` and ``t_collective`` map each charged species to its transference number and standard error.
    """

    nernst_einstein: float
    nernst_einstein_sem: float
    collective: float
    collective_sem: float
    method: str
    converged: bool
    onsager: dict[str, dict[str, float]]
    t_ne: dict[str, tuple[float, float]]
    t_collective: dict[str, tuple[float, float]]
    diffusion: dict[str, DiffusionResult] = field(repr=False)
    fit: MSDFit = field(repr=False)

    _summary_properties = ("nernst_einstein_ms_per_cm", "nernst_einstein_sem_ms_per_cm", "collective_ms_per_cm",
                           "collective_sem_ms_per_cm", "haven_ratio")

    @property
    def nernst_einstein_ms_per_cm(self) -> float:
        return 10.0 * self.nernst_einstein

    @property
    def nernst_einstein_sem_ms_per_cm(self) -> float:
        return 10.0 * self.nernst_einstein_sem

    @property
    def collective_ms_per_cm(self) -> float:
        return 10.0 * self.collective

    @property
    def collective_sem_ms_per_cm(self) -> float:
        return 10.0 * self.collective_sem

    @property
    def haven_ratio(self) -> float:
        """σ_NE / σ_collective (1 for uncorrelated ions)."""
        return self.nernst_einstein / self.collective if self.collective != 0 else float("nan")


def _ratio_sem(num: np.ndarray, den: np.ndarray, min_block_size: int) -> tuple[float, float, bool]:
    """Ratio of means of two correlated series and its standard error (delta method + blocking)."""
    r = num.mean() / den.mean()
    lin = (num - r * den) / den.mean()
    ba = block_average(lin, min_block_size=min_block_size)
    return float(r), float(ba.sem), ba.converged


def ionic_conductivity(positions, dt_fs, masses, charges, labels, volume_A3, temperature_K, mol_id=None,
                       window_fs=None, diffusion: dict[str, DiffusionResult] | None = None,
                       charge_tol: float = 1e-6, remove_com: bool = True) -> ConductivityResult:
    """Nernst–Einstein and collective (Einstein) ionic conductivity, Onsager terms and transference numbers.

    Parameters
    ----------
    positions : (T, N, 3) unwrapped positions in Å, or a list of replicas of that shape.
    dt_fs : time between frames (fs). masses : (N,) amu. charges : (N,) e (formal or partial; with ``mol_id``
        a molecule carries the sum of its atoms' charges). labels : (N,) species names.
    volume_A3 : box volume in Å³ (NVT transport runs). temperature_K : K.
    mol_id : (N,) molecule index per atom, or None (atoms are the units).
    window_fs : fit window (fs), default 10 %–40 % of the trajectory.
    diffusion : results of :func:`self_diffusion` for the same data to reuse (computed otherwise).
    charge_tol : units with |q| below this (e) are neutral.
    remove_com : subtract the system's centre of mass (barycentric frame, default True). Note that this frame
        ties the species together through momentum conservation: in a salt with no solvent the collective
        transference numbers are fixed by the masses.
    """
    reps = _replicas(positions)
    dt = _checks.positive("dt_fs", dt_fs, "fs")
    vol = _checks.positive("volume_A3", volume_A3, "Å³")
    temp = _checks.positive("temperature_K", temperature_K, "K")
    n_frames, n_atoms, _ = reps[0].shape
    m = _checks.per_atom("masses", masses, n_atoms)
    q = _checks.per_atom("charges", charges, n_atoms)
    units = make_units(m, labels, mol_id, q)
    charged = np.abs(units.charges) > charge_tol
    if not np.any(charged):
        raise InputError(f"charges must give at least one charged unit (|q| > {charge_tol:g} e); got none")
    ions = list(dict.fromkeys(units.labels[charged].tolist()))
    for s in ions:
        qs = units.charges[units.labels == s]
        if np.ptp(qs) > 1e-3:
            raise InputError(f"charges of species {s!r} differ between its units ({qs.min():g} to {qs.max():g} e); "
                             f"one charge per species is required")
    i0, i1, win = _fit_window(n_frames, dt, window_fs)
    pref = S_PER_M_PER_E2_PER_A_EV_FS / (vol * KB_EV_PER_K * temp)   # e²Å²/fs -> S/m, with 1/(V kT)
    if diffusion is None:
        diffusion = self_diffusion(reps, dt, m, labels, mol_id, win, species=ions, remove_com=remove_com)
    missing = [s for s in ions if s not in diffusion]
    if missing:
        raise InputError(f"diffusion must hold every charged species {ions}; missing {missing}")

    # Nernst–Einstein.
    terms, terms_sem = {}, {}
    for s in ions:
        n_s = int(np.sum(units.labels == s))
        q_s = float(units.charges[units.labels == s][0])
        terms[s] = pref * n_s * q_s * q_s * diffusion[s].d
        terms_sem[s] = pref * n_s * q_s * q_s * diffusion[s].sem
    sig_ne = float(sum(terms.values()))
    sig_ne_sem = float(np.sqrt(sum(v * v for v in terms_sem.values())))
    t_ne = {}
    for s in ions:
        # Derivative of t_s = x_s / Σ x w.r.t. each x_b, errors of the D's independent.
        grads = {b: ((sig_ne - terms[s]) if b == s else -terms[s]) / sig_ne ** 2 for b in ions}
        t_ne[s] = (terms[s] / sig_ne, float(np.sqrt(sum((grads[b] * terms_sem[b]) ** 2 for b in ions))))

    # Collective: charge displacement per ionic species, M_a(t) = Σ_{i∈a} q_i r_i(t).
    w = _ols_weights(np.arange(i0, i1 + 1) * dt)
    pairs = [(a, b) for ai, a in enumerate(ions) for b in ions[ai:]]
    rep_onsager, rep_total, rep_tc, series_total, series_num = [], [], [], [], []
    curves = []
    for x in reps:
        ux = unit_positions(x, m, units, remove_com)
        mvec = {s: np.einsum("tmi,m->ti", ux[:, units.labels == s], units.charges[units.labels == s])
                for s in ions}
        slope_pair, series_pair = {}, {}
        for a in ions:
            xa = mvec[a][:, None, :]
            slope_pair[(a, a)] = _fit_curve(msd_fft(xa)[:, 0], dt, i0, i1)[0]
            series_pair[(a, a)] = _origin_slopes(xa, w, i0)
        for a, b in pairs:
            if a == b:
                continue
            xab = (mvec[a] + mvec[b])[:, None, :]
            s_ab = _fit_curve(msd_fft(xab)[:, 0], dt, i0, i1)[0]
            slope_pair[(a, b)] = 0.5 * (s_ab - slope_pair[(a, a)] - slope_pair[(b, b)])
            series_pair[(a, b)] = 0.5 * (_origin_slopes(xab, w, i0) - series_pair[(a, a)] - series_pair[(b, b)])
            slope_pair[(b, a)], series_pair[(b, a)] = slope_pair[(a, b)], series_pair[(a, b)]
        ons = {a: {b: pref * slope_pair[(a, b)] / 6.0 for b in ions} for a in ions}
        total = sum(ons[a][b] for a in ions for b in ions)
        rep_onsager.append(ons)
        rep_total.append(total)
        rep_tc.append({a: sum(ons[a].values()) / total if total != 0 else np.nan for a in ions})
        series_total.append(pref / 6.0 * sum(series_pair[(a, b)] for a in ions for b in ions))
        series_num.append({a: pref / 6.0 * sum(series_pair[(a, b)] for b in ions) for a in ions})
        mtot = sum(mvec.values())[:, None, :]
        curves.append(msd_fft(mtot)[:, 0])

    n_rep = len(reps)
    onsager = {a: {b: float(np.mean([o[a][b] for o in rep_onsager])) for b in ions} for a in ions}
    if n_rep >= MIN_REPLICAS_FOR_SCATTER:
        sig_e, sig_e_sem = float(np.mean(rep_total)), float(np.std(rep_total, ddof=1) / np.sqrt(n_rep))
        t_coll = {a: (float(np.mean([t[a] for t in rep_tc])),
                      float(np.std([t[a] for t in rep_tc], ddof=1) / np.sqrt(n_rep))) for a in ions}
        method, converged = "replicas", True
    else:
        sems, convs = [], []
        for s in series_total:
            ba = block_average(s, min_block_size=i1 + 1)
            sems.append(ba.sem)
            convs.append(ba.converged)
        sig_e = float(np.mean(rep_total))
        sig_e_sem = float(np.sqrt(np.sum(np.square(sems))) / n_rep)
        num = {a: np.concatenate([sn[a] for sn in series_num]) for a in ions}
        den = np.concatenate(series_total)
        t_coll = {}
        for a in ions:
            r, r_sem, conv = _ratio_sem(num[a], den, i1 + 1)
            t_coll[a] = (float(np.mean([t[a] for t in rep_tc])), r_sem)
            convs.append(conv)
        method, converged = "blocking", all(convs)
    msd = np.mean(curves, axis=0)
    slope, intercept, exponent = _fit_curve(msd, dt, i0, i1)
    fit = MSDFit("charge", np.arange(n_frames) * dt, msd, win, slope, intercept, exponent, int(charged.sum()))
    return ConductivityResult(sig_ne, sig_ne_sem, sig_e, sig_e_sem, method, converged, onsager, t_ne, t_coll,
                              diffusion, fit)
