"""Plot helpers: figures without global side effects, written atomically when asked."""

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from mlmd.errors import InputError
from workflows.analysis.plots import plot_density, plot_green_kubo, plot_msd, plot_rdf, save_figure
from workflows.analysis.statistics import density
from workflows.analysis.structure import build_topology, make_trajectory, rdf
from workflows.analysis.transport import self_diffusion
from workflows.analysis.viscosity import green_kubo_viscosity


def test_import_has_no_global_side_effects():
    # dict.__getitem__ reads the stored backend without resolving it (resolving would import pyplot).
    code = ("import matplotlib, sys; b = dict.__getitem__(matplotlib.rcParams, 'backend'); "
            "import workflows.analysis, workflows.analysis.plots; "
            "assert 'matplotlib.pyplot' not in sys.modules; "
            "assert dict.__getitem__(matplotlib.rcParams, 'backend') == b")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plots_return_figures_and_save(tmp_path):
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(0, 0.3, (200, 20, 3)), axis=0)
    d = self_diffusion(x, 10.0, np.ones(20), ["A"] * 10 + ["B"] * 10)
    fig = plot_msd(d, tmp_path / "msd.png")
    assert isinstance(fig, Figure) and (tmp_path / "msd.png").stat().st_size > 1000

    stress = [rng.normal(0, 1e-3, (400, 6)) for _ in range(3)]
    gk = green_kubo_viscosity(stress, 2.0, 8000.0, 300.0, n_bootstrap=5)
    assert isinstance(plot_green_kubo(gk, tmp_path / "sub" / "gk.svg"), Figure)
    assert (tmp_path / "sub" / "gk.svg").read_text().lstrip().startswith("<?xml")

    traj = make_trajectory(rng.uniform(0, 20, (5, 100, 3)), np.eye(3) * 20, build_topology([3] * 10 + [8] * 90))
    g = rdf(traj, np.arange(10), np.arange(10, 100), r_max_A=8.0, label="Li-O")
    assert isinstance(plot_rdf({"O": g}), Figure)
    vols = 1e4 * (1 + 0.01 * rng.standard_normal(500))
    vols[:50] *= 1.1
    assert isinstance(plot_density(density(6000.0, vols), dt_fs=100.0, path=tmp_path / "rho.pdf"), Figure)
    assert (tmp_path / "rho.pdf").read_bytes()[:4] == b"%PDF"
    assert not list(tmp_path.glob(".*.tmp"))          # no temporary files left


def test_bad_path_and_input(tmp_path):
    with pytest.raises(InputError) as e:
        save_figure(Figure(), tmp_path / "fig.jpg2")
    assert str(e.value) == f"figure path must end in one of ['.pdf', '.png', '.svg']; got '{tmp_path / 'fig.jpg2'}'"
    with pytest.raises(InputError) as e:
        plot_green_kubo(None)
    assert str(e.value) == "result must be a GreenKuboResult; got NoneType"
