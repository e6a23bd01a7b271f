"""Block averaging and statistical inefficiency against AR(1) series with known answers."""

import numpy as np
import pytest
from scipy.signal import lfilter

from mlmd.errors import InputError
from workflows.analysis.statistics import (autocorrelation, block_average, density, detect_equilibration,
                                           replica_mean, standard_error,
                                           statistical_inefficiency)


def ar1(phi: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return lfilter([1.0], [1.0, -phi], rng.standard_normal(n))


def ar1_sem(phi: float, n: int) -> float:
    # var = 1/(1-phi^2), statistical inefficiency g = (1+phi)/(1-phi).
    return float(np.sqrt((1.0 / (1.0 - phi ** 2)) * (1.0 + phi) / (1.0 - phi) / n))


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_block_average_matches_ar1_standard_error(phi):
    n = 2 ** 17
    ratios = [block_average(ar1(phi, n, seed)).sem / ar1_sem(phi, n) for seed in range(4)]
    # Measured: ratios within 0.93-1.03 for these seeds.
    assert np.all(np.abs(np.array(ratios) - 1.0) < 0.12), ratios
    assert abs(np.mean(ratios) - 1.0) < 0.08


def test_block_average_flags_too_short_series():
    x = ar1(0.999, 256, 0)            # correlation time ~1000 samples >> length
    res = block_average(x)
    assert not res.converged
    assert res.block_sizes[0] == 1 and res.sems.shape == res.sem_errors.shape


def test_min_block_size_raises_the_level():
    x = ar1(0.5, 4096, 1)
    assert block_average(x, min_block_size=64).block_sizes[block_average(x, min_block_size=64).level] >= 64


def test_statistical_inefficiency_ar1():
    phi = 0.8
    x = ar1(phi, 2 ** 16, 3)
    g_exact = (1 + phi) / (1 - phi)
    assert statistical_inefficiency(x) == pytest.approx(g_exact, rel=0.15)
    assert standard_error(x, "inefficiency") == pytest.approx(ar1_sem(phi, x.shape[0]), rel=0.1)
    assert block_average(x).statistical_inefficiency == pytest.approx(g_exact, rel=0.15)


def test_autocorrelation_of_ar1_decays_geometrically():
    x = ar1(0.7, 2 ** 16, 4)
    rho = autocorrelation(x)
    assert rho[0] == pytest.approx(1.0)
    assert rho[1] == pytest.approx(0.7, abs=0.02)
    assert rho[2] == pytest.approx(0.49, abs=0.03)


def test_constant_series_has_zero_error():
    res = block_average(np.full(100, 3.0))
    assert res.mean == 3.0 and res.sem == 0.0
    assert statistical_inefficiency(np.full(100, 3.0)) == 1.0


def test_replica_mean():
    m, s = replica_mean([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0 / np.sqrt(3))


def message(exc_info) -> str:
    return str(exc_info.value)


@pytest.mark.parametrize("bad, msg", [
    (np.ones((10, 2)), "series must have shape (samples,); got (10, 2)"),
    (np.array([1.0] * 9 + [np.nan]), "series contains NaN or inf; finite values required"),
    (np.ones(5), "series must hold at least 8 samples; got 5"),
    ("abc", "series must be a numeric array; got str"),
])
def test_bad_series(bad, msg):
    with pytest.raises(InputError) as e:
        block_average(bad)
    assert message(e) == msg


def test_bad_method_and_replicas():
    with pytest.raises(InputError) as e:
        standard_error(np.ones(10), "bootstrap")
    assert message(e) == "method must be 'blocking' or 'inefficiency'; got 'bootstrap'"
    with pytest.raises(InputError) as e:
        replica_mean([1.0])
    assert message(e) == "replica values must hold at least 2 replicas; got 1"


def test_detect_equilibration_skips_a_transient():
    x = ar1(0.5, 4000, 5)
    x[:400] += np.linspace(10.0, 0.0, 400)          # relaxation at the start
    eq = detect_equilibration(x)
    assert 300 <= eq.start <= 700
    assert eq.g == pytest.approx(3.0, rel=0.3)


def test_density_from_volume_series():
    mass = 6.022e3                                   # amu
    v = 1e4 * (1 + 0.01 * ar1(0.9, 20000, 7) * np.sqrt(1 - 0.81))  # Å³, ~1 % fluctuations
    res = density(mass, v)
    expected = mass / 1e4 * 1.66053906660
    assert res.mean == pytest.approx(expected, rel=1e-3)
    assert 0 < res.sem < 1e-3 and res.converged
    assert res.n_samples + res.start == 20000
    assert res.stationary and abs(res.drift) < 2e-3
    with pytest.raises(InputError) as e:
        density(mass, np.r_[v[:10], -1.0])
    assert str(e.value) == "volumes_A3 must all be > 0 Å³; got -1.0"
    with pytest.raises(InputError) as e:
        density(0.0, v)
    assert str(e.value) == "total_mass_amu must be a number > 0 amu; got 0.0"


def test_a_box_that_keeps_compressing_is_not_stationary():
    # A steady 3 % compression over the run: no equilibration cut removes it, and the two halves differ by far
    # more than their noise.
    mass = 6.022e3
    v = 1e4 * (1 - 0.03 * np.linspace(0.0, 1.0, 2000)) * (1 + 0.002 * ar1(0.5, 2000, 3))
    res = density(mass, v)
    assert not res.stationary
    # density rises ~3 %; the cut keeps at least the last half, whose halves differ by at least ~0.75 %
    assert 0.0075 * 1.0 * 0.9 < res.drift < 0.016
