"""Self-diffusion, conductivity and transference numbers on Brownian trajectories with known answers."""

import numpy as np
import pytest

from mlmd.errors import InputError
from mlmd.units import KB_EV_PER_K
from workflows.analysis.transport import (S_PER_M_PER_E2_PER_A_EV_FS, box_length_from_cell, corrected_diffusion,
                                          ionic_conductivity, make_units, msd_fft, msd_regime, self_diffusion,
                                          yeh_hummer, yeh_hummer_correction)

DT = 10.0


def brownian(d, n_frames, seed, drift=0.0):
    """Random walks, (T, N, 3); ``d`` one coefficient per particle (Å²/fs)."""
    rng = np.random.default_rng(seed)
    d = np.asarray(d, dtype=float)
    steps = rng.standard_normal((n_frames, d.shape[0], 3)) * np.sqrt(2.0 * d * DT)[None, :, None]
    return np.cumsum(steps, axis=0) + drift * np.arange(n_frames)[:, None, None]


def test_msd_fft_matches_direct_average():
    x = brownian(np.full(3, 0.02), 50, 0) + 1.0e4      # far from the origin: no loss of precision
    direct = np.array([np.mean(np.sum((x[k:] - x[:50 - k]) ** 2, axis=2), axis=0) for k in range(50)])
    np.testing.assert_allclose(msd_fft(x), direct, rtol=1e-9, atol=1e-9)


def test_brownian_self_diffusion_with_drift_removed():
    d0 = 0.01
    x = brownian(np.full(1000, d0), 2000, 1, drift=0.05)  # a large common drift, removed with the system COM
    res = self_diffusion(x, DT, np.ones(1000), ["A"] * 1000)["A"]
    # Measured: d/d0 = 0.988-1.010 over seeds 0-2, sem ≈ 1.5 %.
    assert res.d == pytest.approx(d0, rel=0.04)
    assert abs(res.d - d0) < 3.5 * res.sem
    assert res.sem / d0 < 0.03
    assert res.fit.exponent == pytest.approx(1.0, abs=0.02)
    assert res.method == "blocking" and res.converged
    assert res.d_m2_per_s == pytest.approx(res.d * 1e-5)


def test_msd_regime_tells_diffusive_from_ballistic_and_caged_motion():
    n, frames = 200, 400
    rng = np.random.default_rng(3)
    walk = self_diffusion(brownian(np.full(n, 0.01), frames, 2), DT, np.ones(n), ["A"] * n)["A"]
    velocities = rng.standard_normal((1, n, 3)) * 0.01
    flight = self_diffusion(velocities * DT * np.arange(frames)[:, None, None], DT, np.ones(n), ["A"] * n)["A"]
    cage = self_diffusion(rng.standard_normal((frames, n, 3)) * 0.3, DT, np.ones(n), ["A"] * n)["A"]
    assert walk.regime == "diffusive" and walk.msd_exponent == pytest.approx(1.0, abs=0.05)
    assert flight.regime == "ballistic" and flight.msd_exponent == pytest.approx(2.0, abs=0.05)
    assert cage.regime == "subdiffusive" and cage.msd_exponent < 0.2
    assert msd_regime(1.19) == "diffusive" and msd_regime(1.21) == "ballistic" and msd_regime(0.79) == "subdiffusive"
    assert msd_regime(float("nan")) == "unknown"


def test_self_diffusion_error_bar_is_calibrated():
    d0 = 0.01
    z = []
    for seed in range(12):
        res = self_diffusion(brownian(np.full(100, d0), 400, seed), DT, np.ones(100), ["A"] * 100)["A"]
        z.append((res.d - d0) / res.sem)
    # Measured: std(z) = 0.8-1.1 for 12-20 seeds.
    assert 0.6 < np.std(z) < 1.5
    assert abs(np.mean(z)) < 1.0


def test_single_particle_uses_origin_blocking_and_flags_long_windows():
    z = []
    for seed in range(12):
        x = brownian([0.01], 8000, seed)
        long = self_diffusion(x, DT, [1.0], ["Li"], remove_com=False)["Li"]
        assert not long.converged                   # window = 40 % of the run: too few independent blocks
        short = self_diffusion(x, DT, [1.0], ["Li"], remove_com=False, window_fs=(50.0, 1000.0))["Li"]
        assert short.converged and short.method == "blocking"
        z.append((short.d - 0.01) / short.sem)
    # Measured: std(z) = 1.02 over 30 seeds.
    assert 0.6 < np.std(z) < 1.5


def test_molecules_move_as_centres_of_mass_and_species_are_separated():
    rng = np.random.default_rng(2)
    n_mol = 300
    centres = brownian(np.r_[np.full(150, 0.004), np.full(150, 0.012)], 800, 3)
    offsets = rng.normal(0, 1.0, (1, n_mol, 2, 3)) + rng.normal(0, 0.3, (800, n_mol, 2, 3))  # rattling atoms
    masses = np.tile([12.0, 4.0], n_mol)
    # Place atoms so the mass-weighted centre equals the walk: r_a = c + o_a - (sum m o)/M.
    wmean = (offsets * np.array([12.0, 4.0])[None, None, :, None]).sum(axis=2, keepdims=True) / 16.0
    pos = (centres[:, :, None, :] + offsets - wmean).reshape(800, 2 * n_mol, 3)
    labels = np.repeat(["slow"] * 150 + ["fast"] * 150, 2)
    mol_id = np.repeat(np.arange(n_mol), 2)
    res = self_diffusion(pos, DT, masses, labels, mol_id=mol_id)
    assert res["slow"].n_units == 150
    assert res["slow"].d == pytest.approx(0.004, rel=0.1)
    assert res["fast"].d == pytest.approx(0.012, rel=0.1)


def test_replicas_give_replica_error():
    reps = [brownian(np.full(50, 0.01), 300, s) for s in range(4)]
    res = self_diffusion(reps, DT, np.ones(50), ["A"] * 50)["A"]
    assert res.method == "replicas" and res.replica_values.shape == (4,)
    assert self_diffusion(np.stack(reps), DT, np.ones(50), ["A"] * 50)["A"].d == res.d
    assert res.d == pytest.approx(0.01, rel=0.1)


def ions(n_frames, seeds, d_plus=0.004, d_minus=0.008, n_pairs=32, n_solvent=0):
    d = np.r_[np.full(n_pairs, d_plus), np.full(n_pairs, d_minus), np.full(n_solvent, 0.006)]
    q = np.r_[np.ones(n_pairs), -np.ones(n_pairs), np.zeros(n_solvent)]
    labels = ["Li"] * n_pairs + ["X"] * n_pairs + ["S"] * n_solvent
    return [brownian(d, n_frames, s) for s in seeds], q, labels


def test_independent_ions_collective_equals_nernst_einstein():
    reps, q, labels = ions(10000, range(6))
    vol, temp = 20.0 ** 3, 300.0
    res = ionic_conductivity(reps, DT, np.ones(64), q, labels, vol, temp, window_fs=(100, 2000), remove_com=False)
    analytic = S_PER_M_PER_E2_PER_A_EV_FS * 32 * (0.004 + 0.008) / (vol * KB_EV_PER_K * temp)
    # Measured: NE within 0.3 % (sem 0.6 %), collective +4 % (sem 3.6 %).
    assert res.nernst_einstein == pytest.approx(analytic, rel=0.03)
    assert abs(res.collective - res.nernst_einstein) < 3 * np.hypot(res.collective_sem, res.nernst_einstein_sem)
    assert res.collective == pytest.approx(analytic, rel=0.15)
    assert res.method == "replicas"
    assert res.collective_ms_per_cm == pytest.approx(10 * res.collective)
    # t+ = D+/(D+ + D-) = 1/3 by both definitions when ions are uncorrelated.
    assert res.t_ne["Li"][0] == pytest.approx(1 / 3, abs=0.01)
    assert res.t_collective["Li"][0] == pytest.approx(1 / 3, abs=3 * res.t_collective["Li"][1] + 0.01)
    assert res.t_ne["Li"][0] + res.t_ne["X"][0] == pytest.approx(1.0)
    # Cross term ~ 0 for independent ions.
    assert abs(res.onsager["Li"]["X"]) < 0.1 * res.onsager["X"]["X"]


def test_single_trajectory_collective_uses_blocking():
    reps, q, labels = ions(20000, [7])
    vol, temp = 20.0 ** 3, 300.0
    res = ionic_conductivity(reps[0], DT, np.ones(64), q, labels, vol, temp, window_fs=(100, 1000))
    analytic = S_PER_M_PER_E2_PER_A_EV_FS * 32 * 0.012 / (vol * KB_EV_PER_K * temp)
    assert res.method == "blocking" and res.converged
    assert abs(res.collective - analytic) < 3.5 * res.collective_sem
    assert 0.02 < res.collective_sem / analytic < 0.3


def test_barycentric_frame_fixes_collective_transference_of_a_pure_salt():
    # With equal masses and no solvent, momentum conservation makes M_+ = M_- in the centre-of-mass frame.
    reps, q, labels = ions(2000, [3])
    res = ionic_conductivity(reps[0], DT, np.ones(64), q, labels, 8000.0, 300.0)
    assert res.t_collective["Li"][0] == pytest.approx(0.5, abs=1e-9)


def test_yeh_hummer_arithmetic():
    # kT xi / (6 pi eta L), T = 300 K, eta = 1 mPa s, L = 30 Å  ->  2.1975e-10 m^2/s.
    kt = 1.380649e-23 * 300.0
    expected_si = kt * 2.837297 / (6 * np.pi * 1e-3 * 30e-10)
    corr = yeh_hummer_correction(300.0, 1.0, 30.0)
    assert corr * 1e-5 == pytest.approx(expected_si, rel=1e-6)
    d_inf, sem = yeh_hummer(1e-4, 300.0, 1.0, 30.0, d_sem=1e-6, viscosity_sem=0.1)
    assert d_inf == pytest.approx(1e-4 + corr)
    assert sem == pytest.approx(np.hypot(1e-6, 0.1 * corr))
    assert box_length_from_cell(np.eye(3) * 30.0) == 30.0
    d = self_diffusion(brownian(np.full(20, 1e-3), 50, 0), DT, np.ones(20), ["A"] * 20)
    both = corrected_diffusion(d, 300.0, 1.0, 30.0, viscosity_sem=0.1)
    assert both["A"] == pytest.approx(yeh_hummer(d["A"].d, 300.0, 1.0, 30.0, d["A"].sem, 0.1))


def msg(exc_info):
    return str(exc_info.value)


@pytest.mark.parametrize("positions, text", [
    (np.zeros((20, 4)), "positions must have shape (frames, atoms, 3); got (20, 4)"),
    (np.zeros((20, 4, 2)), "positions must have shape (frames, atoms, 3); got (20, 4, 2)"),
    (np.zeros((5, 4, 3)), "positions must hold at least 10 frames; got 5"),
    (np.full((20, 4, 3), np.nan), "positions contains NaN or inf; finite values required"),
    ([], "positions must be an array (frames, atoms, 3) or a non-empty list of them; got []"),
    ([np.zeros((20, 4, 3)), np.zeros((21, 4, 3))], "positions[1] must have the shape of positions[0] (20, 4, 3); "
                                                  "got (21, 4, 3)"),
])
def test_bad_positions(positions, text):
    with pytest.raises(InputError) as e:
        self_diffusion(positions, DT, np.ones(4), ["A"] * 4)
    assert msg(e) == text


def test_bad_scalars_and_per_atom_inputs():
    x = brownian(np.full(4, 0.01), 20, 0)
    cases = [
        (lambda: self_diffusion(x, 0.0, np.ones(4), ["A"] * 4), "dt_fs must be a number > 0 fs; got 0.0"),
        (lambda: self_diffusion(x, DT, np.ones(3), ["A"] * 4),
         "masses must have shape (4,), one entry per atom; got (3,)"),
        (lambda: self_diffusion(x, DT, -np.ones(4), ["A"] * 4), "masses must all be > 0 amu; got -1.0 at atom 0"),
        (lambda: self_diffusion(x, DT, np.ones(4), ["A"] * 4, window_fs=(50, 500)),
         "window_fs must satisfy 0 <= start < end <= 190 fs; got (50, 500)"),
        (lambda: self_diffusion(x, DT, np.ones(4), ["A"] * 4, species=["B"]),
         "species 'B' is not among the labels; accepted: ['A']"),
        (lambda: self_diffusion(x, DT, np.ones(4), ["A", "A", "B", "B"], mol_id=[0, 0, 0, 1]),
         "labels must be equal within a molecule; mol_id 0 has 'A' and 'B'"),
        (lambda: ionic_conductivity(x, DT, np.ones(4), [1, -1, 1, -1], ["A"] * 4, 1000.0, -5.0),
         "temperature_K must be a number > 0 K; got -5.0"),
        (lambda: ionic_conductivity(x, DT, np.ones(4), [1, -1, 1, -1], ["A"] * 4, 0.0, 300.0),
         "volume_A3 must be a number > 0 Å³; got 0.0"),
        (lambda: ionic_conductivity(x, DT, np.ones(4), [0, 0, 0, 0], ["A"] * 4, 1000.0, 300.0),
         "charges must give at least one charged unit (|q| > 1e-06 e); got none"),
        (lambda: ionic_conductivity(x, DT, np.ones(4), [1, -1, 1, -1], ["A"] * 4, 1000.0, 300.0),
         "charges of species 'A' differ between its units (-1 to 1 e); one charge per species is required"),
        (lambda: yeh_hummer_correction(300.0, 0.0, 30.0), "viscosity_mpa_s must be a number > 0 mPa·s; got 0.0"),
        (lambda: box_length_from_cell(np.diag([30.0, 30.0, 31.0])),
         "cell must be cubic for the Yeh–Hummer ξ = 2.837297; got edge lengths [30.0, 30.0, 31.0] Å"),
        (lambda: make_units(np.ones(2), ["A", "A"], mol_id=[0.5, 1.5]), "mol_id must hold integers; got dtype float64"),
    ]
    for call, text in cases:
        with pytest.raises(InputError) as e:
            call()
        assert msg(e) == text
