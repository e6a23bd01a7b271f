import json

from potentials.bundle import _summary_from_log


def test_stopped_run_is_summarised_from_the_epoch_best_pt_was_saved_at(tmp_path):
    log = tmp_path / "metrics.jsonl"
    records = [(1, 100.0, 2.0, 70.0), (2, 200.0, 1.5, 71.0), (3, 300.0, 2.5, 66.0)]  # scores 90, 86, 91
    log.write_text("".join(json.dumps({"epoch": e, "time_s": t, "valid_energy_mae_meV_per_atom": en,
                                       "valid_force_mae_meV_per_A": f}) + "\n" for e, t, en, f in records))
    summary = _summary_from_log(log)
    assert summary == {"valid": {"energy_mae_meV_per_atom": 1.5, "force_mae_meV_per_A": 71.0}, "epochs": 2,
                       "train_time_s": 300.0}
