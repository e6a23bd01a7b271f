"""Shared pieces of the electrolyte validation benchmarks (data files, JSON output)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA_DIRS = [REPO / "shared" / "data", Path("/work/shared/data")]


def data_file(name: str) -> Path:
    for d in DATA_DIRS:
        if (d / name).is_file():
            return d / name
    raise SystemExit(f"error: {name} not found in {', '.join(str(d) for d in DATA_DIRS)}")


def read_csv(name: str) -> list[dict[str, str]]:
    lines = [line for line in data_file(name).read_text().splitlines() if line.strip() and not line.startswith("#")]
    return list(csv.DictReader(lines))


def write_json(path: Path, obj) -> None:
    from mlmd.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1))
