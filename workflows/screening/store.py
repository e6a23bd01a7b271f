"""The results database: one ASE database row per formulation.

``ase.db.connect`` takes a file path (SQLite by default; ``.json`` also works) or any URL it accepts
(``postgresql://user:pw@host:5432/db``). A row holds

- key-value pairs: ``formulation`` (name), ``spec_key`` (sha256 of the spec), ``status`` (done | failed),
  every property and its ``*_sem`` (see :mod:`workflows.screening.properties`), the conditions (temperature,
  salt, concentration) and provenance: ``model``, ``model_sha256``, ``mlmd_version``, ``engine``, ``seed``;
- ``data``: the full plan (composition, protocol, densities used), estimator summaries, notes, figure paths, the
  formulation folder, and for a failure the stage and one-line error;
- the atoms: the final structure (last frame of the last run), or the packed box / nothing for a failure.

Only the client process writes (tasks write ``result.json`` in their folder first), and a formulation's old row
is deleted in the same transaction that writes the new one, so every formulation has exactly one row.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ase import Atoms

from mlmd.errors import InputError

#: Key-value names ASE reserves for itself.
_RESERVED = {"id", "unique_id", "ctime", "mtime", "user", "calculator", "energy", "natoms", "charge", "mass",
             "fmax", "smax", "volume", "pbc", "formula", "age", "magmom", "calculator_parameters"}


def _is_url(text: str) -> bool:
    return "://" in text


def check_database(target: str | os.PathLike) -> str:
    """Reject a database path in a missing or read-only folder (before any MD); returns the normalised target."""
    text = str(target)
    if _is_url(text):
        return text
    path = Path(text).expanduser()
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"database folder {str(folder)!r} does not exist; create it or choose another --db path")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"database {str(path)!r} is read-only; choose another --db path")
    probe = folder / f".mlmd-db-probe-{os.getpid()}"
    try:
        with open(probe, "w") as fh:
            fh.write("")
        probe.unlink()
    except OSError:
        raise InputError(f"database folder {str(folder)!r} is not writable; choose another --db path") from None
    if path.suffix not in (".db", ".json", ".sqlite", ".sqlite3", ".aselmdb", ".lmdb"):
        raise InputError(f"database {str(path)!r}: use a .db (SQLite) or .json file, or a postgresql:// URL")
    return str(path.resolve())


class ResultStore:
    """Thin wrapper over an ASE database keyed by formulation name."""

    def __init__(self, target: str | os.PathLike):
        import ase.db

        self.target = str(target)
        self.db = ase.db.connect(self.target, append=True)

    def rows(self, name: str) -> list:
        return list(self.db.select(formulation=name))

    def finished(self, name: str, key: str) -> bool:
        """True if the formulation has a successful row for exactly this spec."""
        return any(r.get("status") == "done" and r.get("spec_key") == key for r in self.rows(name))

    def _replace(self, name: str, atoms: Atoms | None, kvp: dict[str, Any], data: dict[str, Any]) -> int:
        kvp = {k: v for k, v in kvp.items() if v is not None and k not in _RESERVED}
        with self.db:  # one transaction: old rows out, new row in
            old = [r.id for r in self.db.select(formulation=name)]
            if old:
                self.db.delete(old)
            return self.db.write(atoms if atoms is not None else Atoms(), key_value_pairs={"formulation": name, **kvp},
                                 data=data)

    def record_success(self, plan, folder: Path, atoms: Atoms | None, result: dict[str, Any]) -> int:
        kvp = {**provenance(plan), "status": "done", "finished": time.time(), **result["properties"]}
        data = {"plan": plan.to_dict(), "summaries": result.get("summaries", {}), "notes": result.get("notes", []),
                "figures": result.get("figures", {}), "folder": str(Path(folder).resolve())}
        return self._replace(plan.name, atoms, kvp, data)

    def record_failure(self, plan, folder: Path, stage: str, error: str, atoms: Atoms | None = None) -> int:
        kvp = {**provenance(plan), "status": "failed", "stage": stage, "error": error[:500], "finished": time.time()}
        data = {"plan": plan.to_dict(), "folder": str(Path(folder).resolve()), "error": error, "stage": stage}
        return self._replace(plan.name, atoms, kvp, data)


def provenance(plan) -> dict[str, Any]:
    """Key-value provenance of a row: conditions, model and its checksum, code version, engine, seeds."""
    from mlmd.checkpoint import mlmd_version

    f = plan.formulation
    p = f.protocol
    comp = " ".join(f"{c.label}:{c.count}" for c in plan.components)
    return {
        "spec_key": plan.key,
        "composition": comp,
        "solvents": ":".join(c.label for c in plan.components if c.role == "solvent"),
        "ratio_basis": f.ratio_basis,
        "salt": f.salt or "none",
        "concentration": f.concentration or 0.0,
        "concentration_unit": f.concentration_unit,
        "temperature_K": f.temperature_K,
        "pressure_bar": f.pressure_bar,
        "n_atoms_box": plan.n_atoms,
        "model": plan.model.name,
        "model_sha256": plan.model.sha256,
        "model_mlmd_version": plan.model.mlmd_version or "unknown",
        "calculator_factory": f.calculator or "",
        "mlmd_version": mlmd_version(),
        "engine": f.engine,
        "seed": f.seed,
        "n_replicas": p.n_replicas,
        "replica_steps": p.replica_steps,
        "timestep_fs": p.timestep_fs,
    }
