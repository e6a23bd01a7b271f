import json
import os
import subprocess
import sys
from pathlib import Path

from tests.potentials.test_training import TINY_MODEL, labelled_clusters


def test_torchrun_two_processes_train_in_sync(tmp_path):
    data = labelled_clusters(tmp_path / "data.xyz", n=19)
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"data": [str(data)], "output": str(tmp_path / "run"), "model": TINY_MODEL,
                                  "epochs": 2, "batch_size": 2, "warmup_steps": 1, "num_threads": 1}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "workflows.cli", "train", str(config), "--no-progress"]
    result = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 17 training structures (90 % of 19), 2 per process per step, 2 processes: 4 full steps; the 17th draw is dropped,
    # since a step in which one process had nothing to do would leave the other waiting in the all-reduce
    assert [r["step"] for r in log] == [4, 8]
    assert (tmp_path / "run" / "best.pt").exists()
