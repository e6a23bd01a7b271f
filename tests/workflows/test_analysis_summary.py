"""summary(): every result becomes a JSON-ready dict of scalars."""

import json

import numpy as np
import pytest

from workflows.analysis import summary
from workflows.analysis.statistics import block_average, density
from workflows.analysis.structure import build_topology, make_trajectory, rdf, solvation_shells
from workflows.analysis.transport import ionic_conductivity, self_diffusion
from workflows.analysis.viscosity import green_kubo_viscosity


def test_summaries_are_json_ready():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(0, 0.3, (200, 8, 3)), axis=0)
    q = np.r_[np.ones(4), -np.ones(4)]
    labels = ["Li"] * 4 + ["X"] * 4
    d = self_diffusion(x, 10.0, np.ones(8), labels)
    s = summary(d["Li"])
    assert set(s) >= {"label", "d", "sem", "method", "converged", "d_m2_per_s", "window_fs", "msd_exponent"}
    assert s["d_m2_per_s"] == pytest.approx(d["Li"].d * 1e-5)
    c = summary(ionic_conductivity(x, 10.0, np.ones(8), q, labels, 1000.0, 300.0, diffusion=d))
    assert c["collective_ms_per_cm"] == pytest.approx(10 * c["collective"])
    assert isinstance(c["t_ne"]["Li"], list)
    gk = summary(green_kubo_viscosity([rng.normal(0, 1e-3, (300, 6)) for _ in range(3)], 2.0, 8000.0, 300.0,
                                      n_bootstrap=3))
    assert "running_mean" not in gk and "viscosity" in gk
    top = build_topology([3, 8, 8, 9])
    traj = make_trajectory(rng.uniform(0, 10, (10, 4, 3)), np.eye(3) * 10, top)
    sh = summary(solvation_shells(traj, [0], {"O": 2.8, "F": 2.9}))
    assert "classes" not in sh and set(sh["pairing"]) == {"free", "CIP", "AGG"}
    g = summary(rdf(traj, [0], [1, 2]))
    assert g["first_minimum"] is None               # NaN becomes None
    for item in (s, c, gk, sh, g, summary(block_average(rng.normal(size=64))),
                 summary(density(100.0, 1000 + rng.normal(size=64)))):
        json.dumps(item, allow_nan=False)
    with pytest.raises(TypeError):
        summary(3.0)
