"""Run a screen on Dask: validate everything first, then schedule each formulation's stages as tasks.

Task graph per formulation: ``prepare`` (box -> minimise -> NPT equilibration -> NPT density) -> ``n_replicas`` x
``replica`` (fan out; any worker) -> ``analyse`` (properties, ``result.json``) -> the client writes the database row.
Tasks are idempotent: they resume from the files of their formulation folder and write their results there
before they return, so a task that is re-run (a worker died, the screen was interrupted) continues where it
stopped and a finished formulation is never recomputed. A task that raises records ``error.json`` and returns a
failure; the client records it in the database and the other formulations go on.

Clusters: an in-process ``LocalCluster`` (``workers`` worker processes, one thread each) by default, or an existing
scheduler (``tcp://HOST:PORT``), e.g. one started by dask-jobqueue on SLURM::

    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(cores=1, processes=1, memory="4GB", walltime="04:00:00")
    cluster.scale(jobs=16)
    print(cluster.scheduler_address)      # pass this to: mlmd screen SPEC.yaml --scheduler tcp://...

The formulation folders must be on a file system the workers share with the client (they are the hand-off
between stages and the source of the report figures).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlmd.errors import InputError
from workflows.screening import protocol
from workflows.screening.composition import Plan, model_info, plan_formulation
from workflows.screening.spec import ScreenSpec
from workflows.screening.store import ResultStore, check_database

#: Seconds to wait for a TCP connection to a scheduler before calling it unreachable.
CONNECT_TIMEOUT_S = 3.0


# ------------------------------------------------------------------------------------------ validation

def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """InputError unless ``address`` (tcp://HOST:PORT) accepts a TCP connection within ``timeout`` seconds."""
    text = address if "://" in address else f"tcp://{address}"
    url = urlparse(text)
    if url.scheme not in ("tcp", "tls") or not url.hostname or url.port is None:
        raise InputError(f"scheduler address {address!r} is not of the form tcp://HOST:PORT")
    try:
        with socket.create_connection((url.hostname, url.port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError) or isinstance(exc, socket.timeout):
            reason = f"no answer within {timeout:g} s"
        raise InputError(f"scheduler {text} is unreachable ({reason}); start it or check the address") from None
    return text


def validate(spec: ScreenSpec, database: str, scheduler: str | None = None) -> tuple[list[Plan], str]:
    """Every check that can fail on bad input, before any MD starts: spec chemistry, model species and cutoff,
    box size, engine, database folder, scheduler address. Returns the plans and the normalised database target."""
    target = check_database(database)
    plans = []
    for f in spec.formulations:
        try:
            info = model_info(f.model)
        except InputError as exc:
            raise type(exc)(f"formulation {f.name!r}: {exc}") from None
        plans.append(plan_formulation(f, info))
    if scheduler:
        check_scheduler(scheduler)
    return plans, target


# ------------------------------------------------------------------------------------------ tasks

def _threads(n: int) -> None:
    try:
        import torch

        torch.set_num_threads(max(1, int(n)))
    except ImportError:
        pass


def _run(stage: str, folder: str, fn, threads: int) -> dict[str, Any]:
    _threads(threads)
    t0 = time.time()
    try:
        out = fn()
    except Exception as exc:  # recorded in the folder and in the database; the screen goes on
        return {"ok": False, "stage": stage, "error": protocol.record_error(Path(folder), stage, exc),
                "seconds": time.time() - t0}
    return {"ok": True, "stage": stage, "value": out, "seconds": time.time() - t0}


def task_prepare(plan: dict, folder: str, threads: int = 1) -> dict[str, Any]:
    p = Plan.from_dict(plan)
    return _run("prepare", folder, lambda: protocol.prepare(p, Path(folder)), threads)


def task_replica(plan: dict, folder: str, k: int, threads: int = 1) -> dict[str, Any]:
    p = Plan.from_dict(plan)
    return _run(f"replica {k}", folder, lambda: protocol.run_replica(p, Path(folder), k), threads)


def task_analyse(plan: dict, folder: str, threads: int = 1) -> dict[str, Any]:
    from workflows.screening.properties import analyse

    p = Plan.from_dict(plan)
    return _run("analyse", folder, lambda: analyse(p, Path(folder)), threads)


def final_structure(plan: Plan, folder: Path):
    """The last saved state: the last replica's production, else the density run, else the packed box."""
    from ase.io import read

    folder = Path(folder)
    box_path = folder / protocol.BOX
    if not box_path.is_file():
        return None
    box = read(box_path, format="extxyz")
    runs = list(reversed(protocol.replica_dirs(plan, folder))) + [folder / "density", folder / "equilibrate"]
    for d in runs:
        if (d / protocol.FINAL).is_file():
            try:
                return protocol._final_state(box, d)
            except Exception:  # an unreadable file: fall back to an earlier stage
                continue
    return box


# ------------------------------------------------------------------------------------------ client side

@dataclass
class Job:
    plan: Plan
    folder: Path
    state: str = "queued"            # queued | prepare | replicas | analyse | done | failed | skipped
    futures: list = field(default_factory=list)
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.state in ("done", "failed", "skipped")


@dataclass
class ScreenResult:
    jobs: list[Job]
    database: str
    wall_s: float
    workers: int

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for j in self.jobs:
            out[j.state] = out.get(j.state, 0) + 1
        return out

    @property
    def formulations_per_hour(self) -> float:
        n = sum(1 for j in self.jobs if j.state == "done")
        return n / self.wall_s * 3600.0 if self.wall_s > 0 else float("nan")


def _open_client(workers: int | None, scheduler: str | None, processes: bool):
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler, timeout="10s"), None, None
    n = workers or max(1, min(os.cpu_count() or 1, 4))
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=None,
                           silence_logs=40)
    return Client(cluster), cluster, n


class _Display:
    """A rich live table: one row per formulation with its stage and the latest detail."""

    def __init__(self, jobs: list[Job], enabled: bool):
        self.jobs = jobs
        self.live = None
        if enabled:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self._table(), console=Console(stderr=True), refresh_per_second=2, transient=False)
            self.live.start()

    def _table(self):
        from rich.table import Table

        table = Table(title="mlmd screen", expand=False)
        for col in ("formulation", "stage", "detail", "time"):
            table.add_column(col)
        colours = {"done": "green", "failed": "red", "skipped": "cyan"}
        for j in self.jobs:
            status = protocol.read_status(j.folder) if not j.terminal else {}
            detail = j.error if j.state == "failed" else status.get("detail", "")
            stage = j.state if j.terminal or j.state == "queued" else status.get("stage", j.state)
            if j.state == "replicas":
                done = sum(1 for f in j.futures if f.done())
                stage = f"replicas {done}/{len(j.futures)}"
            elapsed = ((j.ended or time.time()) - j.started) if j.started else 0.0
            colour = colours.get(j.state, "yellow")
            table.add_row(j.plan.name, f"[{colour}]{stage}[/{colour}]", (detail or "")[:70], f"{elapsed:.0f} s")
        return table

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._table())

    def stop(self) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.stop()
            if not self.live.console.is_terminal:
                self.live.console.file.write("\n")


def screen(spec: ScreenSpec, database: str | None = None, output_dir: str | os.PathLike | None = None,
           workers: int | None = None, scheduler: str | None = None, processes: bool = True,
           progress: bool = True, threads_per_task: int = 1, poll_s: float = 0.5) -> ScreenResult:
    """Screen every formulation of ``spec``; see the module docstring. Bad input raises before any MD."""
    database = database or spec.database or "screen.db"
    default_out = "screen_runs" if "://" in str(database) else Path(database).with_suffix("").as_posix() + "_runs"
    output = Path(output_dir or spec.output_dir or default_out)
    plans, target = validate(spec, database, scheduler)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"output folder {str(output)!r} cannot be created ({exc.strerror})") from None
    store = ResultStore(target)
    jobs = [Job(p, (output / p.formulation.folder_name).resolve()) for p in plans]
    t0 = time.time()
    pending = []
    for j in jobs:
        if store.finished(j.plan.name, j.plan.key):
            j.state = "skipped"
            continue
        result_path = j.folder / protocol.RESULT
        if result_path.is_file():                     # finished but not recorded (client died): record now
            try:
                data = protocol.read_json(result_path)
            except (OSError, ValueError):
                data = {}
            if data.get("key") == j.plan.key:
                store.record_success(j.plan, j.folder, final_structure(j.plan, j.folder), data)
                j.state = "done"
                continue
        protocol.clear_error(j.folder)
        pending.append(j)
    n_workers = 0
    if pending:
        client, cluster, n_workers = _open_client(workers, scheduler, processes)
        if n_workers is None:
            n_workers = len(client.scheduler_info().get("workers", {}))
        display = _Display(jobs, progress)
        try:
            _drive(client, pending, store, display, threads_per_task, poll_s)
        finally:
            display.stop()
            client.close()
            if cluster is not None:
                cluster.close()
    return ScreenResult(jobs, target, time.time() - t0, n_workers)


def _submit(client, fn, *args, priority: int = 0):
    return client.submit(fn, *args, pure=False, priority=priority)


def _drive(client, pending: list[Job], store: ResultStore, display: _Display, threads: int, poll_s: float) -> None:
    # Formulations submitted in order; later stages get higher priority so formulations finish (and land in the
    # database) early instead of all waiting for the last prepare.
    for j in pending:
        j.state, j.started = "prepare", time.time()
        protocol.write_status(j.folder, "queued", "")
        j.futures = [_submit(client, task_prepare, j.plan.to_dict(), str(j.folder), threads, priority=0)]
    while not all(j.terminal for j in pending):
        for j in pending:
            if j.terminal or not all(f.done() for f in j.futures):
                continue
            results = []
            for f in j.futures:
                try:
                    results.append(f.result())
                except Exception as exc:   # e.g. KilledWorker: the worker died on this task too often
                    results.append({"ok": False, "stage": j.state, "error": f"{type(exc).__name__}: {exc}"[:300]})
            for r in results:
                j.stage_seconds[r["stage"]] = j.stage_seconds.get(r["stage"], 0.0) + r.get("seconds", 0.0)
            bad = [r for r in results if not r["ok"]]
            if bad and j.state == "replicas" and len(results) - len(bad) >= 2:
                # Enough replicas for every estimator: analyse those, and say which ones failed.
                j.error = "; ".join(f"{r['stage']}: {r['error']}" for r in bad)
                bad = []
            if bad:
                j.state, j.error, j.ended = "failed", f"{bad[0]['stage']}: {bad[0]['error']}", time.time()
                store.record_failure(j.plan, j.folder, bad[0]["stage"], bad[0]["error"],
                                     final_structure(j.plan, j.folder))
                continue
            plan_d = j.plan.to_dict()
            n_rep = j.plan.formulation.protocol.n_replicas
            if j.state == "prepare" and n_rep:
                j.state = "replicas"
                j.futures = [_submit(client, task_replica, plan_d, str(j.folder), k, threads, priority=1)
                             for k in range(n_rep)]
            elif j.state in ("prepare", "replicas"):
                j.state = "analyse"
                j.futures = [_submit(client, task_analyse, plan_d, str(j.folder), threads, priority=2)]
            elif j.state == "analyse":
                value = dict(results[0]["value"])
                if j.error:                  # replicas that failed while enough others finished
                    value["notes"] = list(value.get("notes", [])) + [f"failed replicas: {j.error}"]
                store.record_success(j.plan, j.folder, final_structure(j.plan, j.folder), value)
                j.state, j.ended = "done", time.time()
        display.refresh()
        time.sleep(poll_s)
