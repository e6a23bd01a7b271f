"""No result lost: kill a Dask worker process mid-run; the screen still finishes, a rerun skips everything, and
every formulation ends with exactly one database row."""

from __future__ import annotations

import os
import signal
import threading
import time

import ase.db
import pytest

from tests.workflows.screening_support import TINY_PROTOCOL, formulation, tiny_checkpoint, write_spec
from workflows.screening import protocol
from workflows.screening.runner import screen
from workflows.screening.spec import load_spec


@pytest.mark.slow
def test_kill_a_worker_mid_run_then_rerun(tmp_path):
    from distributed import Client, LocalCluster

    model = tiny_checkpoint(tmp_path / "tiny.pt")
    longer = {**TINY_PROTOCOL, "replica_steps": 60, "density_min_steps": 30, "density_max_steps": 40}
    spec = write_spec(tmp_path / "spec.yaml", [
        formulation(model, name="A", protocol=longer),
        formulation(model, name="B", solvents="PC", salt="LiBF4", protocol=longer),
        formulation(model, name="C", seed=1, protocol=longer),
    ])
    db = tmp_path / "screen.db"
    out = tmp_path / "runs"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        outcome = {}

        def run():
            try:
                outcome["result"] = screen(load_spec(spec), database=str(db), output_dir=out,
                                           scheduler=cluster.scheduler_address, progress=False)
            except BaseException as exc:  # noqa: BLE001 - reported below
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        # Wait until a formulation is inside an MD stage, then kill the worker process running it.
        deadline = time.time() + 300
        killed = None
        while time.time() < deadline and killed is None:
            stages = [protocol.read_status(d).get("stage") for d in out.glob("*-*")] if out.exists() else []
            if any(s in ("density", "replicas") for s in stages):
                pids = client.run(os.getpid)
                busy = [addr for addr, tasks in client.processing().items() if tasks]
                victim = busy[0] if busy else next(iter(pids))
                os.kill(pids[victim], signal.SIGKILL)
                killed = victim
            time.sleep(0.5)
        assert killed is not None, "no formulation reached an MD stage in time"
        thread.join(900)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
        first = outcome["result"]
        assert first.counts == {"done": 3}, [(j.plan.name, j.state, j.error) for j in first.jobs]
        # Rerun: everything is skipped, still one row per formulation.
        again = screen(load_spec(spec), database=str(db), output_dir=out, scheduler=cluster.scheduler_address,
                       progress=False)
    assert again.counts == {"skipped": 3}
    rows = list(ase.db.connect(str(db)).select())
    assert sorted(r.formulation for r in rows) == ["A", "B", "C"]
    assert all(r.status == "done" for r in rows)
