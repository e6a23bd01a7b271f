"""MD engine (mlmd.md) and the `mlmd md` command, on small EMT Cu / LJ Ar systems and toy calculators."""

from __future__ import annotations

import json
import re

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from mlmd.errors import ConfigError, InputError, SimulationError
from mlmd.md import GuardConfig, MDConfig, load_checkpoint, load_config, make_config, read_thermo, run_md


# --- systems and toy calculators ---------------------------------------------------------------------------

def cu32(a: float = 3.61) -> Atoms:
    return bulk("Cu", "fcc", a=a, cubic=True).repeat(2)


def ar32() -> Atoms:
    return bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)


def lj_ar() -> LennardJones:
    return LennardJones(sigma=3.405, epsilon=0.0103, rc=5.2, smooth=True)


class FreshEMT(EMT):
    """EMT that rebuilds its neighbour list on every call, so results are a pure function of the positions
    (ASE's EMT keeps a skin list whose build history changes the summation order in the last bit)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, list(system_changes) + ["numbers"])


class Wrapped(Calculator):
    """Delegates to ``inner`` and lets a test tamper with the results (``hook(results, ncalls)``)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, inner, hook):
        super().__init__()
        self.inner, self.hook, self.ncalls = inner, hook, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.ncalls += 1
        self.inner.calculate(self.atoms, ["energy", "forces", "stress"], all_changes)
        self.results = {k: np.copy(v) if isinstance(v, np.ndarray) else v for k, v in self.inner.results.items()}
        self.hook(self.results, self.ncalls)


class Spring(Calculator):
    """E = k/2 |r1 - r0|² between atoms 0 and 1 (zero rest length): pulls them through each other."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        k = 0.01
        d = self.atoms.positions[1] - self.atoms.positions[0]
        forces = np.zeros((len(self.atoms), 3))
        forces[0], forces[1] = k * d, -k * d
        self.results = {"energy": 0.5 * k * float(d @ d), "forces": forces}


class Push(Calculator):
    """A constant force F pushing atom 0 along -x and atom 1 along +x: kinetic energy grows without bound."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        f = 1.0
        x = self.atoms.positions[:, 0]
        forces = np.zeros((len(self.atoms), 3))
        forces[0, 0], forces[1, 0] = -f, f
        self.results = {"energy": f * (x[0] - x[1]), "forces": forces}


def pair(distance: float = 3.0) -> Atoms:
    return Atoms("Ar2", positions=[[0, 0, 0], [distance, 0, 0]])


def fast(**kw) -> MDConfig:
    """Config with every output each few steps (tests are short)."""
    base = dict(timestep_fs=2.0, temperature_K=300.0, log_interval=5, trajectory_interval=5, checkpoint_interval=10)
    base.update(kw)
    return MDConfig(**base)


# --- ensembles ---------------------------------------------------------------------------------------------

def test_nve_conserves_energy(tmp_path):
    atoms = cu32()
    res = run_md(atoms, EMT(), fast(ensemble="nve", timestep_fs=1.0, steps=50, log_interval=1), tmp_path / "nve")
    th = read_thermo(res.paths["thermo"])
    assert list(th["step"]) == list(range(51))
    etot = th["etot_eV"]
    assert np.ptp(etot) / len(atoms) < 5e-5  # eV/atom over 50 fs
    assert np.allclose(th["conserved_eV"], etot)
    assert np.allclose(th["etot_eV"], th["epot_eV"] + th["ekin_eV"])
    assert th["temperature_K"][0] == pytest.approx(300, rel=0.3)  # Maxwell-Boltzmann start
    assert th["density_g_cm3"][0] == pytest.approx(8.96, abs=0.05)
    assert np.isfinite(th["pressure_bar"]).all()
    assert np.allclose((th["pxx_bar"] + th["pyy_bar"] + th["pzz_bar"]) / 3, th["pressure_bar"], rtol=1e-8)
    assert np.isfinite(th["pxy_bar"]).all() and np.abs(th["pxy_bar"]).max() > 0
    assert abs(res.summary["conserved_drift_meV_per_atom_per_ps"]) < 1.0
    assert json.loads((tmp_path / "nve" / "result.json").read_text())["summary"]["rows"] == 51
    # The centre of mass does not move (velocities were made stationary).
    assert np.allclose(res.atoms.get_momenta().sum(axis=0), 0, atol=1e-10)


@pytest.mark.parametrize("thermostat", ["langevin", "bussi"])
def test_nvt_reaches_target_temperature(tmp_path, thermostat):
    atoms = ar32()  # starts at rest at 0 K; the thermostat must heat it to 80 K
    cfg = MDConfig(
        ensemble="nvt", thermostat=thermostat, temperature_K=80.0, timestep_fs=10.0, steps=400,
        friction_per_fs=0.05, thermostat_time_fs=50.0, initial_velocities="keep", log_interval=2,
        trajectory_interval=400, checkpoint_interval=400, log_pressure=False,
    )
    if thermostat == "bussi":  # CSVR rescales velocities, so it cannot start from rest
        cfg = cfg.model_copy(update={"initial_velocities": "maxwell"})
    res = run_md(atoms, lj_ar(), cfg, tmp_path / thermostat)
    th = read_thermo(res.paths["thermo"])
    t = th["temperature_K"][th["step"] >= 100]
    assert t.mean() == pytest.approx(80.0, rel=0.1)
    assert 0.05 < t.std() / t.mean() < 0.5  # canonical fluctuations (~sqrt(2/3N) = 14 %), not a clamp


def test_npt_relaxes_volume_towards_equilibrium(tmp_path):
    cfg = MDConfig(ensemble="npt", timestep_fs=4.0, steps=100, temperature_K=300.0, pressure_bar=1.0,
                   thermostat_time_fs=50.0, barostat_time_fs=100.0, log_interval=5, trajectory_interval=50)
    stretched = run_md(cu32(3.72), EMT(), cfg, tmp_path / "stretched")
    squeezed = run_md(cu32(3.52), EMT(), cfg, tmp_path / "squeezed")
    s, q = read_thermo(stretched.paths["thermo"]), read_thermo(squeezed.paths["thermo"])
    assert s["pressure_bar"][0] < -1e4 and q["pressure_bar"][0] > 1e4
    v_eq = 377.0  # EMT Cu at 300 K and 1 bar (a = 3.613 Å)
    # Both move towards the equilibrium volume; the cell stays cubic (isotropic barostat).
    assert abs(s["volume_A3"][-5:].mean() - v_eq) < 0.3 * abs(s["volume_A3"][0] - v_eq)
    assert abs(q["volume_A3"][-5:].mean() - v_eq) < 0.3 * abs(q["volume_A3"][0] - v_eq)
    assert s["density_g_cm3"][-1] > s["density_g_cm3"][0] and q["density_g_cm3"][-1] < q["density_g_cm3"][0]
    lengths = stretched.atoms.cell.lengths()
    assert np.allclose(lengths, lengths[0]) and np.allclose(stretched.atoms.cell.angles(), 90)
    # Trajectory frames carry the changing cell.
    frames = ase.io.read(stretched.paths["trajectory_extxyz"], ":")
    assert frames[-1].get_volume() == pytest.approx(s["volume_A3"][-1], rel=1e-8)


def test_npt_conserves_extended_energy_near_equilibrium(tmp_path):
    """The MTK integrator conserves its extended-system energy (a check that state and units are consistent)."""
    cfg = MDConfig(ensemble="npt", timestep_fs=2.0, steps=60, temperature_K=300.0, pressure_bar=1.0,
                   thermostat_time_fs=50.0, barostat_time_fs=200.0, log_interval=2, trajectory_interval=60)
    res = run_md(cu32(3.613), EMT(), cfg, tmp_path / "eq")
    th = read_thermo(res.paths["thermo"])
    assert np.ptp(th["conserved_eV"]) / 32 < 2e-4
    assert np.ptp(th["volume_A3"]) > 0.1  # the volume does fluctuate


class Zero(Calculator):
    """No interactions at all: an ideal gas."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": 0.0, "free_energy": 0.0, "forces": np.zeros((n, 3)), "stress": np.zeros(6)}


@pytest.mark.slow
@pytest.mark.parametrize("barostat, steps", [("mtk_iso", 20000), ("langevin", 40000)])
def test_npt_samples_isothermal_isobaric_ensemble_of_ideal_gas(tmp_path, barostat, steps):
    """Ideal gas in NPT: p(V) ~ V^N exp(-PV/kT), so <V> = (N+1) kT / P and std(V)/<V> = 1/sqrt(N+1).
    A Berendsen barostat fails the second check (it suppresses volume fluctuations). ~30 s each."""
    from ase import units

    n, temperature, v_target = 8, 300.0, 1000.0
    pressure_bar = (n + 1) * units.kB * temperature / v_target / units.bar
    atoms = Atoms(f"Ar{n}", positions=np.random.default_rng(1).random((n, 3)) * 10, cell=[10, 10, 10], pbc=True)
    cfg = MDConfig(ensemble="npt", barostat=barostat, timestep_fs=5.0, steps=steps, temperature_K=temperature,
                   pressure_bar=pressure_bar, thermostat_time_fs=100.0, friction_per_fs=0.01, barostat_time_fs=500.0,
                   log_interval=5, trajectory_interval=steps, checkpoint_interval=steps,
                   guards=GuardConfig(interval=100, min_distance_A=1e-3, temperature_factor=None))
    res = run_md(atoms, Zero(), cfg, tmp_path / "gas")
    th = read_thermo(res.paths["thermo"])
    v = th["volume_A3"][th["step"] >= steps // 5]
    assert v.mean() == pytest.approx(v_target, rel=0.08)
    assert v.std() / v.mean() == pytest.approx(1 / np.sqrt(n + 1), rel=0.25)
    assert th["temperature_K"].mean() == pytest.approx(temperature, rel=0.05)


def test_npt_langevin_barostat_relaxes_volume(tmp_path):
    cfg = MDConfig(ensemble="npt", barostat="langevin", timestep_fs=4.0, steps=100, temperature_K=300.0,
                   friction_per_fs=0.02, barostat_time_fs=100.0, log_interval=5, trajectory_interval=100)
    res = run_md(cu32(3.72), EMT(), cfg, tmp_path / "l")
    th = read_thermo(res.paths["thermo"])
    assert abs(th["volume_A3"][-5:].mean() - 377.0) < 0.3 * abs(th["volume_A3"][0] - 377.0)
    lengths = res.atoms.cell.lengths()
    assert np.allclose(lengths, lengths[0]) and np.allclose(res.atoms.cell.angles(), 90)


def test_npt_full_cell_runs(tmp_path):
    res = run_md(cu32(3.70), EMT(), fast(ensemble="npt", barostat="mtk", steps=60, barostat_time_fs=100.0),
                 tmp_path / "mtk")
    th = read_thermo(res.paths["thermo"])
    assert th["volume_A3"][-1] < th["volume_A3"][0]
    assert np.isfinite(th["conserved_eV"]).all()


# --- restart -----------------------------------------------------------------------------------------------

def _read_dcd(path):
    from mdtraj.formats import DCDTrajectoryFile

    with DCDTrajectoryFile(str(path)) as f:
        return f.read()


@pytest.mark.parametrize(
    "settings",
    [
        {"ensemble": "nve"},
        {"ensemble": "nvt", "thermostat": "langevin"},
        {"ensemble": "nvt", "thermostat": "bussi"},
        {"ensemble": "nvt", "thermostat": "nose_hoover"},
        {"ensemble": "npt", "barostat": "mtk_iso", "barostat_time_fs": 200.0},
        {"ensemble": "npt", "barostat": "mtk", "barostat_time_fs": 200.0},
        {"ensemble": "npt", "barostat": "langevin", "barostat_time_fs": 200.0},
    ],
    ids=lambda s: "-".join(str(v) for v in s.values() if isinstance(v, str)),
)
def test_restart_continues_bit_for_bit(tmp_path, settings):
    """2N steps in one go == N steps + restart + N steps: same state bits, same log, same frames."""
    atoms = cu32()
    atoms.rattle(0.02, seed=1)
    # checkpoint_interval 7 does not divide the restart step: the final checkpoint still lands at step 20.
    full = run_md(atoms, FreshEMT(), fast(steps=40, checkpoint_interval=7, **settings), tmp_path / "full")
    run_md(atoms, FreshEMT(), fast(steps=20, checkpoint_interval=7, **settings), tmp_path / "split")
    assert load_checkpoint(tmp_path / "split" / "checkpoint.npz").step == 20
    split = run_md(atoms, FreshEMT(), fast(steps=40, checkpoint_interval=7, **settings), tmp_path / "split", restart=True)
    assert split.first_step == 20 and split.last_step == 40 and split.restarted
    for get in (lambda a: a.positions, lambda a: a.get_momenta(), lambda a: a.cell.array):
        assert np.array_equal(get(full.atoms), get(split.atoms))
    for name in ("thermo.csv", "trajectory.extxyz"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "split" / name).read_text()
    (xf, lf, af), (xs, ls, as_) = _read_dcd(full.paths["trajectory_dcd"]), _read_dcd(split.paths["trajectory_dcd"])
    assert len(xf) == len(xs) == 9 and np.array_equal(xf, xs) and np.array_equal(lf, ls) and np.array_equal(af, as_)
    assert full.n_frames == split.n_frames == 9
    result = json.loads((tmp_path / "split" / "result.json").read_text())
    assert result["first_step"] == 20 and result["last_step"] == 40


def test_restart_after_interruption_cuts_outputs_back_to_checkpoint(tmp_path):
    """Rows and frames written after the last checkpoint (a crash) are dropped, then rewritten identically."""
    cfg = fast(ensemble="nvt", steps=30, checkpoint_interval=10)
    full = run_md(cu32(), FreshEMT(), cfg, tmp_path / "full")
    run_md(cu32(), FreshEMT(), cfg.model_copy(update={"steps": 20}), tmp_path / "crash")
    # Simulate a crash at step ~27: extra log rows, extra frames (one cut mid-frame), no result.json.
    crash = tmp_path / "crash"
    ref_rows = (tmp_path / "full" / "thermo.csv").read_text().splitlines(keepends=True)
    with open(crash / "thermo.csv", "a") as fh:
        fh.writelines(ref_rows[6:8])  # steps 25, 30
        fh.write("3")  # a half-written row
    ref_xyz = (tmp_path / "full" / "trajectory.extxyz").read_text()
    frame_len = len(ref_xyz) // full.n_frames
    with open(crash / "trajectory.extxyz", "a") as fh:
        fh.write(ref_xyz[5 * frame_len: 5 * frame_len + frame_len // 2])  # part of the step-25 frame
    (crash / "result.json").unlink()
    res = run_md(cu32(), FreshEMT(), cfg, crash, restart=True)
    assert res.first_step == 20
    for name in ("thermo.csv", "trajectory.extxyz"):
        assert (tmp_path / "full" / name).read_text() == (crash / name).read_text()


def test_restart_checks(tmp_path):
    cfg = fast(ensemble="nvt", steps=10)
    run_md(cu32(), EMT(), cfg, tmp_path / "run")
    with pytest.raises(InputError, match=r"already holds a run \(checkpoint.npz\)"):
        run_md(cu32(), EMT(), cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"integrator 'nvt-langevin' but the config asks for 'nve'"):
        run_md(cu32(), EMT(), fast(ensemble="nve", steps=20), tmp_path / "run", restart=True)
    with pytest.raises(ConfigError, match=r"steps = 5 is below the checkpoint's step 10"):
        run_md(cu32(), EMT(), fast(ensemble="nvt", steps=5), tmp_path / "run", restart=True)
    with pytest.raises(InputError, match=r"do not match"):
        run_md(ar32().repeat((1, 1, 2)), EMT(), fast(ensemble="nvt", steps=20), tmp_path / "run", restart=True)
    with pytest.raises(InputError, match=r"checkpoint .* not found"):
        run_md(cu32(), EMT(), cfg, tmp_path / "nothing", restart=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.npz").write_bytes(b"not a zip file")
    with pytest.raises(InputError, match=r"is corrupt or not an mlmd MD checkpoint"):
        run_md(cu32(), EMT(), cfg, tmp_path / "bad", restart=True)
    # A finished run can be extended: steps is the total.
    res = run_md(cu32(), EMT(), fast(ensemble="nvt", steps=20), tmp_path / "run", restart=True)
    assert (res.first_step, res.last_step) == (10, 20)


def test_checkpoint_contents(tmp_path):
    res = run_md(cu32(), EMT(), fast(ensemble="npt", steps=10), tmp_path / "r")
    with np.load(res.paths["checkpoint"], allow_pickle=False) as data:  # no pickles inside
        keys = set(data.files)
    assert {"positions", "momenta", "cell", "pbc", "numbers", "meta"} <= keys
    assert {"state__baro_eps", "state__baro_p_eps", "state__thermostat_p_eta", "state__barostat_p_xi"} <= keys
    ck = load_checkpoint(res.paths["checkpoint"])
    assert ck.step == 10 and ck.time_fs == 20.0 and ck.integrator == "npt-mtk_iso"
    assert ck.rng_state["bit_generator"] == "PCG64"
    assert np.array_equal(ck.positions, res.atoms.positions) and np.array_equal(ck.cell, res.atoms.cell.array)
    assert ck.config["ensemble"] == "npt"


# --- trajectories ------------------------------------------------------------------------------------------

def test_trajectory_readable_by_mdtraj_and_ase(tmp_path):
    import mdtraj

    atoms = cu32(3.65)
    res = run_md(atoms, EMT(), fast(ensemble="npt", steps=20, barostat_time_fs=100.0), tmp_path / "r")
    frames = ase.io.read(res.paths["trajectory_extxyz"], ":")
    traj = mdtraj.load(str(res.paths["trajectory_dcd"]), top=str(res.paths["topology"]))
    assert len(frames) == traj.n_frames == res.n_frames == 5
    assert traj.n_atoms == len(atoms) and {a.element.symbol for a in traj.topology.atoms} == {"Cu"}
    assert [f.info["step"] for f in frames] == [0, 5, 10, 15, 20]
    assert [f.info["time_fs"] for f in frames] == [0.0, 10.0, 20.0, 30.0, 40.0]
    for k, f in enumerate(frames):
        assert np.allclose(traj.xyz[k] * 10.0, f.positions, atol=1e-3)  # mdtraj: nm, float32
        assert np.allclose(traj.unitcell_lengths[k] * 10.0, f.cell.lengths(), atol=1e-4)
        assert np.allclose(traj.unitcell_angles[k], 90.0)
        assert f.get_momenta().shape == (len(atoms), 3) and np.isfinite(f.get_potential_energy())
        assert f.get_forces().shape == (len(atoms), 3)
    assert frames[-1].get_volume() != pytest.approx(frames[0].get_volume())  # the cell changed under NPT
    assert np.allclose(frames[-1].positions, res.atoms.positions, rtol=0, atol=1e-7)  # extxyz keeps 8 decimals


def test_cluster_trajectory_has_no_cell(tmp_path):
    import mdtraj

    cluster = Atoms("Ar13", positions=bulk("Ar", "fcc", a=5.26).repeat(3).positions[:13])
    cluster.center(vacuum=5.0)
    cluster.pbc = False
    res = run_md(cluster, lj_ar(), fast(ensemble="nvt", temperature_K=40.0, steps=10), tmp_path / "c")
    traj = mdtraj.load(str(res.paths["trajectory_dcd"]), top=str(res.paths["topology"]))
    assert traj.n_frames == 3 and traj.unitcell_lengths is None
    th = read_thermo(res.paths["thermo"])
    assert np.isnan(th["volume_A3"]).all() and np.isnan(th["pressure_bar"]).all()


def test_frames_drop_stale_input_arrays_and_keep_charges(tmp_path):
    def with_charges(results, ncalls):
        results["charges"] = np.linspace(-0.5, 0.5, 32)

    atoms = cu32()
    atoms.set_array("REF_forces", np.ones((32, 3)))  # a labelled input file: must not leak into the frames
    atoms.calc = Wrapped(EMT(), with_charges)
    res = run_md(atoms, None, fast(ensemble="nvt", steps=5), tmp_path / "r")  # None: use atoms.calc
    frame = ase.io.read(res.paths["trajectory_extxyz"], index=-1)
    assert "REF_forces" not in frame.arrays
    assert np.allclose(frame.get_charges(), np.linspace(-0.5, 0.5, 32))
    with pytest.raises(InputError, match=r"^no calculator"):
        run_md(cu32(), None, fast(steps=5), tmp_path / "none")


def test_restart_rebuilds_a_dcd_that_lost_frames(tmp_path):
    cfg = fast(ensemble="nvt", steps=20)
    full = run_md(cu32(), FreshEMT(), cfg.model_copy(update={"steps": 30}), tmp_path / "full")
    run_md(cu32(), FreshEMT(), cfg, tmp_path / "crash")
    xyz, lengths, angles = _read_dcd(tmp_path / "crash" / "trajectory.dcd")
    from mdtraj.formats import DCDTrajectoryFile

    with DCDTrajectoryFile(str(tmp_path / "crash" / "trajectory.dcd"), "w") as f:  # only 2 of 5 frames
        f.write(xyz[:2], cell_lengths=lengths[:2], cell_angles=angles[:2])
    res = run_md(cu32(), FreshEMT(), cfg.model_copy(update={"steps": 30}), tmp_path / "crash", restart=True)
    (xf, lf, _), (xs, ls, _) = _read_dcd(full.paths["trajectory_dcd"]), _read_dcd(res.paths["trajectory_dcd"])
    assert len(xs) == len(xf) == 7 and np.allclose(xs, xf, atol=1e-6) and np.allclose(ls, lf)


def test_topology_uses_molecule_ids(tmp_path):
    import mdtraj

    atoms = pair(3.5) + pair(3.5).copy()
    atoms.positions[2:] += [0, 4.0, 0]
    atoms.set_array("mol_id", np.array([0, 0, 1, 1]))
    res = run_md(atoms, lj_ar(), fast(ensemble="nve", temperature_K=None, steps=5), tmp_path / "m")
    top = mdtraj.load_pdb(str(res.paths["topology"])).topology
    assert top.n_residues == 2 and [r.n_atoms for r in top.residues] == [2, 2]


# --- guards ------------------------------------------------------------------------------------------------

def test_guard_nan_energy(tmp_path):
    def hook(results, ncalls):
        if ncalls > 16:  # call 1 = step 0, call s + 1 = step s: the energy is NaN from step 16 on
            results["energy"] = float("nan")

    run = tmp_path / "r"
    cfg = fast(ensemble="nve", steps=50, guards=GuardConfig(interval=10), log_interval=10, trajectory_interval=10)
    with pytest.raises(SimulationError) as err:
        run_md(cu32(), Wrapped(EMT(), hook), cfg, run)
    path = run / "last_good.extxyz"
    assert str(err.value) == (
        f"guard 'nan' tripped at step 20: non-finite potential energy nan; last good frame (step 10) saved to {path}"
    )
    good = ase.io.read(path)
    assert good.info["step"] == 10 and np.isfinite(good.get_potential_energy())
    frames = ase.io.read(run / "trajectory.extxyz", ":")
    assert [f.info["step"] for f in frames] == [0, 10]  # nothing written after the state went bad
    assert np.array_equal(good.positions, frames[-1].positions)
    assert np.array_equal(good.get_momenta(), frames[-1].get_momenta())
    assert not (run / "result.json").exists()
    assert load_checkpoint(run / "checkpoint.npz").step == 10  # the run can be restarted from the good state


def test_guard_nan_forces(tmp_path):
    def hook(results, ncalls):
        if ncalls > 3:
            results["forces"][5] = np.nan

    with pytest.raises(SimulationError, match=r"^guard 'nan' tripped at step 3: non-finite force on atom 5; "
                       r"last good frame \(step 2\) saved to .*last_good.extxyz$"):
        run_md(cu32(), Wrapped(EMT(), hook), fast(ensemble="nve", steps=10, guards=GuardConfig(interval=1)), tmp_path)


def test_guard_min_distance(tmp_path):
    cfg = MDConfig(ensemble="nve", temperature_K=None, timestep_fs=5.0, steps=400, guards=GuardConfig(interval=1),
                   log_interval=1, trajectory_interval=100)
    with pytest.raises(SimulationError) as err:
        run_md(pair(3.0), Spring(), cfg, tmp_path)
    msg = str(err.value)
    m = re.fullmatch(
        r"guard 'min_distance' tripped at step (\d+): atoms 0 and 1 are (\d\.\d{3}) Å apart \(limit 0.5 Å\); "
        r"last good frame \(step (\d+)\) saved to (.*)", msg,
    )
    assert m, msg
    step, d, good_step, path = int(m[1]), float(m[2]), int(m[3]), m[4]
    assert good_step == step - 1 and d < 0.5 and path == str(tmp_path / "last_good.extxyz")
    good = ase.io.read(path)
    assert good.info["step"] == good_step and good.get_distance(0, 1) >= 0.5
    th = read_thermo(tmp_path / "thermo.csv")
    assert th["step"][-1] == good_step  # the log stops at the last good step


def test_guard_temperature_runaway(tmp_path):
    cfg = MDConfig(ensemble="nve", temperature_K=None, timestep_fs=1.0, steps=2000,
                   guards=GuardConfig(interval=5, max_temperature_K=2000.0), log_interval=5)
    with pytest.raises(SimulationError) as err:
        run_md(pair(3.0), Push(), cfg, tmp_path)
    m = re.fullmatch(
        r"guard 'temperature' tripped at step (\d+): T = ([\d.]+) K exceeds the limit 2000.0 K; "
        r"last good frame \(step (\d+)\) saved to .*last_good.extxyz", str(err.value),
    )
    assert m, str(err.value)
    assert float(m[2]) > 2000 and int(m[3]) == int(m[1]) - 5
    good = ase.io.read(tmp_path / "last_good.extxyz")
    assert good.get_temperature() <= 2000.0


def test_guard_temperature_factor_uses_target(tmp_path):
    # Langevin at 50 K on a system that heats itself: the limit is 3 x 50 K.
    cfg = MDConfig(ensemble="nvt", temperature_K=50.0, timestep_fs=1.0, steps=2000, friction_per_fs=1e-4,
                   guards=GuardConfig(interval=5, temperature_factor=3.0), log_interval=5)
    with pytest.raises(SimulationError, match=r"guard 'temperature' tripped at step \d+: T = [\d.]+ K exceeds the limit 150.0 K"):
        run_md(pair(3.0), Push(), cfg, tmp_path)


def test_guard_forces_std(tmp_path):
    def hook(results, ncalls):
        std = np.zeros_like(results["forces"])
        std[7, 0] = 0.1 * ncalls  # per-atom uncertainty 0.1 eV/Å at step 0, growing by 0.1 per step
        results["forces_std"] = std

    cfg = fast(ensemble="nve", steps=50, guards=GuardConfig(interval=1, max_forces_std_eV_A=1.05))
    with pytest.raises(SimulationError) as err:
        run_md(cu32(), Wrapped(EMT(), hook), cfg, tmp_path)
    assert str(err.value) == (
        "guard 'forces_std' tripped at step 10: force uncertainty 1.100 eV/Å on atom 7 exceeds 1.05 eV/Å; "
        f"last good frame (step 9) saved to {tmp_path / 'last_good.extxyz'}"
    )


def test_calculator_failure_is_a_simulation_error(tmp_path):
    def hook(results, ncalls):
        if ncalls > 4:
            raise RuntimeError("SCF did not converge\nmore details")

    with pytest.raises(SimulationError, match=r"^guard 'calculator' tripped at step 4: the step failed "
                       r"\(RuntimeError: SCF did not converge\); last good frame \(step 3\) saved to .*$"):
        run_md(cu32(), Wrapped(EMT(), hook), fast(ensemble="nve", steps=10, guards=GuardConfig(interval=1)), tmp_path)


def test_calculator_input_errors(tmp_path):
    """An MLMDError from the calculator at the start is bad input (propagates, nothing written); during the run
    (e.g. the ML calculator rejecting atoms that came too close) it is a guard trip with the last good frame."""

    def unknown_element(results, ncalls):
        raise InputError("element Cu is not in the model's species (H, C, O); use a model trained on Cu")

    with pytest.raises(InputError, match=r"^element Cu is not in the model's species"):
        run_md(cu32(), Wrapped(EMT(), unknown_element), fast(steps=5), tmp_path / "start")
    assert not (tmp_path / "start").exists()

    def too_close_later(results, ncalls):
        if ncalls > 3:
            raise InputError("atoms 1 and 2 are 0.400 Å apart; atoms closer than 0.5 Å are rejected")

    with pytest.raises(SimulationError, match=r"^guard 'calculator' tripped at step 3: the step failed \(InputError: "
                       r"atoms 1 and 2 are 0.400 Å apart; atoms closer than 0.5 Å are rejected\); "
                       r"last good frame \(step 2\) saved to .*last_good.extxyz$"):
        run_md(cu32(), Wrapped(EMT(), too_close_later), fast(steps=5, guards=GuardConfig(interval=1)), tmp_path / "mid")


# --- input checks ------------------------------------------------------------------------------------------

def test_input_nan_position(tmp_path):
    atoms = cu32()
    atoms.positions[3, 1] = np.nan
    with pytest.raises(InputError, match=r"^atom 3 has a non-finite position \[.*nan.*\]; all positions must be finite"):
        run_md(atoms, EMT(), fast(steps=5), tmp_path / "r")
    assert not (tmp_path / "r" / "thermo.csv").exists()


def test_input_atoms_too_close(tmp_path):
    atoms = cu32()
    atoms.positions[1] = atoms.positions[0] + [0.3, 0.0, 0.0]
    with pytest.raises(InputError, match=r"^atoms 0 and 1 are 0.300 Å apart, closer than 0.5 Å; fix the structure"):
        run_md(atoms, EMT(), fast(steps=5), tmp_path / "r")
    # Periodic images count: atom 0 near the far face of a tiny box.
    box = Atoms("Cu2", positions=[[0.1, 0, 0], [2.0, 2.0, 2.0]], cell=[4.0, 4.0, 4.0], pbc=True)
    box.positions[1] = [3.8, 0.0, 0.0]
    with pytest.raises(InputError, match=r"atoms 0 and 1 are 0.300 Å apart"):
        run_md(box, EMT(), fast(steps=5), tmp_path / "r2")
    assert not (tmp_path / "r" / "checkpoint.npz").exists()


def test_input_zero_volume_cell(tmp_path):
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1.8, 1.8, 0]], cell=[[4, 0, 0], [0, 4, 0], [0, 0, 0]], pbc=True)
    with pytest.raises(InputError, match=r"^periodic cell .* \(pbc=\[True, True, True\]\) has zero volume"):
        run_md(atoms, EMT(), fast(steps=5), tmp_path / "r")
    flat = Atoms("Cu2", positions=[[0, 0, 0], [1.8, 1.8, 0]], cell=[[4, 0, 0], [8, 0, 0], [0, 0, 4]], pbc=True)
    with pytest.raises(InputError, match=r"has zero volume"):
        run_md(flat, EMT(), fast(steps=5), tmp_path / "r")


def test_input_npt_needs_periodic_box(tmp_path):
    with pytest.raises(InputError, match=r"^ensemble 'npt' needs a fully periodic structure"):
        run_md(pair(3.0), lj_ar(), fast(ensemble="npt", steps=5), tmp_path / "r")
    with pytest.raises(ConfigError, match=r"needs a calculator that computes stress; Push does not"):
        box = pair(3.0)
        box.cell, box.pbc = [10, 10, 10], True
        run_md(box, Push(), fast(ensemble="npt", steps=5), tmp_path / "r2")


# --- config ------------------------------------------------------------------------------------------------

def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"ensemble 'nvt' needs temperature_K"):
        make_config({"ensemble": "nvt", "temperature_K": None})
    bad = tmp_path / "md.yaml"
    bad.write_text("ensemble: nvt\nsteps: 10\nthermostatt: bussi\n")
    with pytest.raises(ConfigError, match=r"^.*md.yaml: unknown key 'thermostatt' \(accepted: ensemble, .*guards\)$"):
        load_config(bad)
    bad.write_text("timestep_fs: fast\n")
    with pytest.raises(ConfigError, match=r"md.yaml: timestep_fs = 'fast': input should be a valid number"):
        load_config(bad)
    bad.write_text("guards:\n  min_distance_A: -1\n")
    with pytest.raises(ConfigError, match=r"md.yaml: guards.min_distance_A = -1: input should be greater than 0"):
        load_config(bad)
    good = tmp_path / "ok.yaml"
    good.write_text("ensemble: npt\nsteps: 10\nguards:\n  interval: 3\n")
    cfg = load_config(good, steps=20, temperature_K=None)  # None flags do not override
    assert cfg.ensemble == "npt" and cfg.steps == 20 and cfg.temperature_K == 300.0 and cfg.guards.interval == 3


# --- CLI ---------------------------------------------------------------------------------------------------

@pytest.fixture
def structure(tmp_path):
    path = tmp_path / "cu.extxyz"
    ase.io.write(path, cu32())
    return path


def _cli(args):
    from workflows.cli import main

    return main(["md", *map(str, args)])


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("steps: 10\nstepz: 3\n", r"unknown key 'stepz' \(accepted: ensemble,"),
        ("steps: ten\n", r"steps = 'ten': input should be a valid integer"),
        ("ensemble: nbt\n", r"ensemble = 'nbt' is not accepted; input should be 'nve', 'nvt' or 'npt'"),
        ("- a list\n", r"must hold a mapping of MD settings, got a list"),
    ],
)
def test_cli_bad_config_exit_2(tmp_path, structure, capsys, yaml_text, message):
    cfg = tmp_path / "md.yaml"
    cfg.write_text(yaml_text)
    out = tmp_path / "run"
    rc = _cli([structure, "--calculator", "ase.calculators.emt:EMT", "--config", cfg, "--out", out, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and str(cfg) in err and re.search(message, err), err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--calculator", "nosuchmodule:Calc"], r"cannot import module 'nosuchmodule'"),
        (["--calculator", "ase.calculators.emt"], r"is not of the form module:factory"),
        ([], r"give exactly one of --model NAME_OR_PATH or --calculator module:factory"),
        (["--calculator", "ase.calculators.emt:EMT", "--ensemble", "nxt"], r"command line: ensemble = 'nxt'"),
        (["--calculator", "ase.calculators.emt:EMT", "--timestep", "-1"], r"timestep_fs = -1.0: input should be greater than 0"),
    ],
)
def test_cli_bad_options_exit_2(tmp_path, structure, capsys, args, message):
    rc = _cli([structure, *args, "--out", tmp_path / "run"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and re.search(message, err), err


def test_cli_bad_structure_exit_2(tmp_path, capsys):
    atoms = cu32()
    atoms.positions[1] = atoms.positions[0] + [0.2, 0, 0]
    ase.io.write(tmp_path / "bad.extxyz", atoms)
    rc = _cli([tmp_path / "bad.extxyz", "--calculator", "ase.calculators.emt:EMT", "--out", tmp_path / "r"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "error: atoms 0 and 1 are 0.200 Å apart, closer than 0.5 Å; fix the structure (overlapping atoms) before running MD\n"
    rc = _cli([tmp_path / "missing.xyz", "--calculator", "ase.calculators.emt:EMT", "--out", tmp_path / "r"])
    assert rc == 2 and "structure file" in capsys.readouterr().err


def test_cli_run_and_restart(tmp_path, structure, capsys):
    out = tmp_path / "run"
    common = [structure, "--calculator", "ase.calculators.emt:EMT", "--out", out, "--no-progress"]
    rc = _cli([*common, "--ensemble", "nvt", "--temperature", "250", "--timestep", "2", "--steps", "20",
               "--trajectory-interval", "10", "--checkpoint-interval", "10", "--log-interval", "5", "--seed", "3"])
    assert rc == 0, capsys.readouterr().err
    assert "md: steps 0 -> 20" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["temperature_K"] == 250.0 and saved["seed"] == 3
    # Restart without --config continues with the run's own settings; --steps extends it.
    rc = _cli([*common, "--restart", "--steps", "40"])
    assert rc == 0, capsys.readouterr().err
    assert "md: steps 20 -> 40" in capsys.readouterr().out
    th = read_thermo(out / "thermo.csv")
    assert list(th["step"]) == list(range(0, 41, 5))
    # STRUCTURE may be omitted on restart (taken from the run's trajectory).
    rc = _cli([*common[1:], "--restart", "--steps", "40"])
    assert rc == 0, capsys.readouterr().err
    assert "md: steps 40 -> 40" in capsys.readouterr().out
    assert _cli(["--calculator", "ase.calculators.emt:EMT", "--out", out]) == 2
    assert "only be omitted with --restart" in capsys.readouterr().err
    assert len(ase.io.read(out / "trajectory.extxyz", ":")) == 5
    assert json.loads((out / "config.json").read_text())["temperature_K"] == 250.0
    # The run's guard trip through the CLI: exit code 2 and one line.
    rc = _cli([*common, "--restart", "--steps", "60", "--temperature", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and re.fullmatch(
        r"error: guard 'temperature' tripped at step 40: T = [\d.]+ K exceeds the limit 5.0 K; "
        r"the starting state \(step 40\) already fails this guard; nothing saved\n", err,
    ), err


def test_cli_progress_bar_and_help(tmp_path, structure, capsys):
    rc = _cli([structure, "--calculator", "ase.calculators.emt:EMT", "--out", tmp_path / "run", "--steps", "20",
               "--ensemble", "npt", "--pressure", "1000"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "md npt" in captured.err and "20/20" in captured.err  # rich progress on stderr
    assert "md: steps 0 -> 20" in captured.out and "density =" in captured.out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pressure_bar"] == 1000.0
    assert _cli(["--help"]) == 0
    help_text = capsys.readouterr().out
    for flag in ("--model", "--calculator", "--config", "--ensemble", "--temperature", "--timestep", "--steps",
                 "--out", "--restart"):
        assert flag in help_text
