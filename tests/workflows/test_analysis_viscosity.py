"""Green–Kubo (time-decomposition) viscosity on Ornstein–Uhlenbeck stress series with a known answer."""

import numpy as np
import pytest
from scipy.signal import lfilter

from mlmd.errors import InputError
from mlmd.units import KB_EV_PER_K
from workflows.analysis.viscosity import (MPA_S_PER_EV_FS_PER_A3, double_exponential, green_kubo_viscosity,
                                          shear_components)

DT, TAU, AMP, VOL, TEMP = 2.0, 100.0, 6e-4, 8000.0, 300.0   # fs, fs, eV/Å³ (~1 kbar), Å³, K


def ou(n, k, sd, rng):
    """k independent Ornstein–Uhlenbeck columns, stationary, correlation time TAU, standard deviation sd."""
    a = np.exp(-DT / TAU)
    e = rng.standard_normal((n, k)) * sd * np.sqrt(1 - a * a)
    e[0] = rng.standard_normal(k) * sd
    return lfilter([1.0], [1.0, -a], e, axis=0)


def ou_stress(n_rep, n, seed):
    """Voigt stress (xx, yy, zz, yz, xz, xy) whose five shear components all have ACF AMP² exp(-t/TAU)."""
    rng = np.random.default_rng(seed)
    # Independent diagonal terms with variance 2 AMP² make (xx - yy)/2 and (yy - zz)/2 have variance AMP².
    return [np.concatenate([ou(n, 3, np.sqrt(2) * AMP, rng), ou(n, 3, AMP, rng)], axis=1) for _ in range(n_rep)]


def exact_viscosity():
    return VOL / (KB_EV_PER_K * TEMP) * AMP ** 2 * TAU * MPA_S_PER_EV_FS_PER_A3   # ≈ 1.785 mPa·s


def test_ou_stress_gives_analytic_viscosity():
    res = green_kubo_viscosity(ou_stress(10, 20000, 0), DT, VOL, TEMP, max_lag_fs=3000.0)
    eta = exact_viscosity()
    # Measured over 12 seeds: η/η_exact = 1.04 ± 0.08 (the fit's positive skew), z-score spread 0.76;
    # seed 0 gives 0.984 ± 0.042.
    assert res.viscosity == pytest.approx(eta, rel=0.15)
    assert abs(res.viscosity - eta) < 3 * res.sem
    assert 0.005 < res.sem / eta < 0.3
    assert res.converged and res.n_replicas == 10
    # The running integral at the cut and the fitted curve agree with the plateau.
    assert res.fit_curve(res.cutoff_fs) == pytest.approx(res.viscosity, rel=0.05)
    assert res.running_mean.shape == res.time_fs.shape == res.running_std.shape
    b = res.power_law[1]
    assert 0.3 < b < 1.2        # spread grows roughly like sqrt(t) for an exponentially decorrelating integrand


def test_voigt_and_tensor_inputs_agree():
    voigt = ou_stress(3, 500, 1)
    tensors = []
    for v in voigt:
        xx, yy, zz, yz, xz, xy = v.T
        tensors.append(np.stack([np.stack([xx, xy, xz], 1), np.stack([xy, yy, yz], 1), np.stack([xz, yz, zz], 1)], 1))
    np.testing.assert_allclose(shear_components(voigt[0]), shear_components(tensors[0]))
    a = green_kubo_viscosity(voigt, DT, VOL, TEMP, n_bootstrap=0)
    b = green_kubo_viscosity(tensors, DT, VOL, TEMP, n_bootstrap=0)
    np.testing.assert_allclose(a.running_mean, b.running_mean)
    assert np.isnan(a.sem)


def test_double_exponential_plateau():
    t = np.array([0.0, 1e9])
    assert double_exponential(t, 2.0, 0.25, 10.0, 100.0)[1] == pytest.approx(2.0 * (0.25 * 10 + 0.75 * 100))
    assert double_exponential(t, 2.0, 0.25, 10.0, 100.0)[0] == 0.0


def test_units_factor():
    # 1 eV/Å³ = 160.2 GPa; × 1 fs = 1.602e-4 Pa·s = 0.1602 mPa·s.
    assert MPA_S_PER_EV_FS_PER_A3 == pytest.approx(0.16021766208)


def msg(e):
    return str(e.value)


def test_bad_inputs():
    good = ou_stress(2, 100, 2)
    cases = [
        (lambda: green_kubo_viscosity(good[:1], DT, VOL, TEMP),
         "stress must hold at least 2 replicas for the time-decomposition method; got 1"),
        (lambda: green_kubo_viscosity(np.zeros((100, 6)), DT, VOL, TEMP),
         "stress must be (replicas, frames, 3, 3), (replicas, frames, 6) or a list of per-replica arrays; "
         "got shape (100, 6)"),
        (lambda: green_kubo_viscosity([np.zeros((100, 5))] * 2, DT, VOL, TEMP),
         "stress must have shape (frames, 3, 3) or (frames, 6) in Voigt order; got (100, 5)"),
        (lambda: green_kubo_viscosity([good[0], np.full((100, 6), np.nan)], DT, VOL, TEMP),
         "stress[1] contains NaN or inf; finite values required"),
        (lambda: green_kubo_viscosity([good[0][:10], good[1][:10]], DT, VOL, TEMP),
         "stress[0] must hold at least 16 frames; got 10"),
        (lambda: green_kubo_viscosity([good[0], good[1][:50]], DT, VOL, TEMP),
         "stress replicas must have equal lengths; got [100, 50]"),
        (lambda: green_kubo_viscosity(good, DT, VOL, 0.0), "temperature_K must be a number > 0 K; got 0.0"),
        (lambda: green_kubo_viscosity(good, DT, -1.0, TEMP), "volume_A3 must be a number > 0 Å³; got -1.0"),
        (lambda: green_kubo_viscosity(good, DT, [1.0, 2.0, 3.0], TEMP),
         "volume_A3 must be one number or one per replica (2); got shape (3,)"),
        (lambda: green_kubo_viscosity(good, -2.0, VOL, TEMP), "dt_fs must be a number > 0 fs; got -2.0"),
        (lambda: green_kubo_viscosity(good, DT, VOL, TEMP, max_lag_fs=1000.0),
         "max_lag_fs must lie between 6 and 198 fs; got 1000.0"),
        (lambda: green_kubo_viscosity([good[0], good[0]], DT, VOL, TEMP),
         "stress replicas are identical (zero spread between replicas); independent replicas are required"),
    ]
    for call, text in cases:
        with pytest.raises(InputError) as e:
            call()
        assert msg(e) == text
