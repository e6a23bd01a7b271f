"""The speed benchmark's summary over repeated runs: per-box medians and the lowest ratio."""

import pytest

from benchmarks.speed import summarise_runs


def _run(mlmd_s: float, mace_s: float, n_atoms: int = 278) -> dict:
    def side(seconds: float, memory_MB: float) -> dict:
        return {"seconds_per_call": seconds, "calc_memory_MB": memory_MB, "atom_steps_per_s": n_atoms / seconds}

    return {"rows": [{"n_atoms": n_atoms, "mlmd": side(mlmd_s, 100.0), "mace": side(mace_s, 400.0),
                      "speed_ratio": mace_s / mlmd_s, "cpu_time_ratio": 2 * mace_s / mlmd_s}]}


def test_summary_takes_per_box_medians_and_the_lowest_ratio():
    runs = [_run(0.04, 0.20), _run(0.05, 0.22), _run(0.04, 0.24)]
    summary = summarise_runs(runs)
    assert list(summary) == ["278"]
    box = summary["278"]
    assert box["mlmd_seconds_per_call"] == pytest.approx(0.04)
    assert box["mace_seconds_per_call"] == pytest.approx(0.22)
    # the median of the per-run ratios (5.0, 4.4, 6.0), not the ratio of the median times (5.5)
    assert box["speed_ratio"] == pytest.approx(5.0)
    assert box["speed_ratio_min"] == pytest.approx(4.4)
    assert box["cpu_time_ratio"] == pytest.approx(10.0)
    assert box["mace_calc_memory_MB"] == pytest.approx(400.0)


def test_summary_keeps_boxes_apart():
    runs = [{"rows": _run(0.04, 0.2)["rows"] + _run(0.3, 1.5, n_atoms=1112)["rows"]} for _ in range(2)]
    summary = summarise_runs(runs)
    assert sorted(summary) == ["1112", "278"]
    assert summary["1112"]["speed_ratio"] == pytest.approx(5.0)
