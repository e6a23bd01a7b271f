"""Results store: one row per formulation whatever the history; provenance keys; database target checks."""

from __future__ import annotations

import pytest
from ase import Atoms

from mlmd.errors import InputError
from tests.workflows.screening_support import formulation, tiny_checkpoint
from workflows.screening.composition import model_info, plan_formulation
from workflows.screening.spec import spec_from_dict
from workflows.screening.store import ResultStore, check_database


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    model = tiny_checkpoint(tmp_path_factory.mktemp("m") / "tiny.pt")
    f = spec_from_dict({"formulations": [formulation(model, name="P")]}).formulations[0]
    return plan_formulation(f, model_info(str(model)))


@pytest.mark.parametrize("suffix", [".db", ".json"])
def test_failure_then_success_leaves_one_row(plan, tmp_path, suffix):
    store = ResultStore(check_database(tmp_path / f"s{suffix}"))
    store.record_failure(plan, tmp_path, "prepare", "SimulationError: boom")
    store.record_failure(plan, tmp_path, "replica 1", "KilledWorker: x")
    assert [r.status for r in store.rows("P")] == ["failed"] and store.rows("P")[0].stage == "replica 1"
    assert not store.finished("P", plan.key)
    result = {"properties": {"density_g_cm3": 1.1, "density_g_cm3_sem": 0.01}, "summaries": {"density": {"mean": 1.1}},
              "notes": ["n"], "figures": {}}
    store.record_success(plan, tmp_path, Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]), result)
    rows = store.rows("P")
    assert len(rows) == 1 and rows[0].status == "done" and rows[0].density_g_cm3 == 1.1
    assert store.finished("P", plan.key) and not store.finished("P", "another-spec")
    row = rows[0]
    for key in ("model", "model_sha256", "mlmd_version", "engine", "seed", "spec_key", "temperature_K", "composition"):
        assert key in row.key_value_pairs, key
    assert row.data["plan"]["name"] == "P" and row.data["notes"] == ["n"] and row.natoms == 2


def test_database_targets(tmp_path):
    assert check_database("postgresql://user@host:5432/db") == "postgresql://user@host:5432/db"
    with pytest.raises(InputError, match="use a .db"):
        check_database(tmp_path / "results.txt")
    with pytest.raises(InputError, match="does not exist"):
        check_database(tmp_path / "no" / "x.db")
