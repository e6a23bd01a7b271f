"""Files of an MD run folder: thermodynamic log, trajectories, checkpoints.

Layout of a run folder::

    thermo.csv          step,time_fs,epot_eV,ekin_eV,etot_eV,conserved_eV,temperature_K,volume_A3,density_g_cm3,
                        pressure_bar,pxx_bar,pyy_bar,pzz_bar,pyz_bar,pxz_bar,pxy_bar (empty where not available)
    trajectory.extxyz   ASE-readable frames (positions, momenta, cell, energy, forces; info: step, time_fs)
    trajectory.dcd      mdtraj-readable frames (Å and cell lengths/angles in the file; mdtraj converts to nm)
    topology.pdb        topology for the DCD: ``mdtraj.load("trajectory.dcd", top="topology.pdb")``
    checkpoint.npz      restart state (written atomically; no pickles)
    config.json         the settings of the latest (re)start
    last_good.extxyz    only after a guard trip: the last state that passed the guards
    result.json         written atomically when the run completes; absent while it runs or after a failure

Positions in the trajectories are *unwrapped* (ASE integrators do not wrap), which is what diffusion analysis
needs. The DCD stores the cell as lengths and angles; for a triclinic cell not in the standard orientation
(a along x, b in the xy plane) mdtraj's box vectors are a rotated version of ASE's.
Streaming files (log, trajectories) are appended as the run goes; on restart they are cut back to the
checkpoint's step so that a restarted run has exactly the frames and rows an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from mlmd.errors import InputError
from mlmd.io import atomic_path, atomic_write_text
from mlmd.units import G_PER_CM3_PER_AMU_PER_A3

THERMO = "thermo.csv"
TRAJ_XYZ = "trajectory.extxyz"
TRAJ_DCD = "trajectory.dcd"
TOPOLOGY = "topology.pdb"
CHECKPOINT = "checkpoint.npz"
CONFIG = "config.json"
LAST_GOOD = "last_good.extxyz"
RESULT = "result.json"

THERMO_COLUMNS = (
    "step", "time_fs", "epot_eV", "ekin_eV", "etot_eV", "conserved_eV",
    "temperature_K", "volume_A3", "density_g_cm3", "pressure_bar",
    # Pressure tensor P = -stress including the kinetic (ideal-gas) part, bar, Voigt order; the off-diagonal
    # components feed Green-Kubo viscosity.
    "pxx_bar", "pyy_bar", "pzz_bar", "pyz_bar", "pxz_bar", "pxy_bar",
)
CHECKPOINT_FORMAT = "mlmd-md-checkpoint"
CHECKPOINT_VERSION = 1
_STEP_RE = re.compile(r"(?:^|\s)step=(\d+)(?:\s|$)")


def density_g_cm3(atoms: Atoms) -> float:
    """Mass density in g/cm³ (NaN for a non-periodic structure)."""
    if not atoms.pbc.all():
        return float("nan")
    return float(atoms.get_masses().sum() / atoms.get_volume() * G_PER_CM3_PER_AMU_PER_A3)


# --- thermodynamic log ------------------------------------------------------------------------------------

class ThermoLog:
    """Append-only CSV log; one row per ``log_interval`` steps."""

    def __init__(self, path: Path, append: bool):
        self.path = path
        fresh = not (append and path.exists())
        self._fh = open(path, "w" if fresh else "a")
        if fresh:
            self._fh.write(",".join(THERMO_COLUMNS) + "\n")
            self._fh.flush()

    def write(self, row: dict[str, float]) -> None:
        values = []
        for col in THERMO_COLUMNS:
            v = row.get(col, float("nan"))
            values.append(str(int(v)) if col == "step" else ("" if v is None or not np.isfinite(v) else f"{v:.10g}"))
        self._fh.write(",".join(values) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_thermo(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``thermo.csv`` into columns (empty fields become NaN)."""
    lines = Path(path).read_text().splitlines()
    header = lines[0].split(",")
    rows = [[float(x) if x else np.nan for x in line.split(",")] for line in lines[1:] if line.strip()]
    data = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    return {name: data[:, k] for k, name in enumerate(header)}


def summarize_thermo(path: str | os.PathLike, n_atoms: int) -> dict[str, float | None]:
    """Means and spreads of the log, and the drift of the conserved quantity (linear fit, meV/atom/ps)."""
    th = read_thermo(path)
    out: dict[str, float | None] = {"rows": len(th["step"])}

    def stat(col: str) -> tuple[float | None, float | None]:
        v = th[col][np.isfinite(th[col])]
        return (float(v.mean()), float(v.std())) if len(v) else (None, None)

    for col in ("temperature_K", "density_g_cm3", "pressure_bar", "volume_A3", "epot_eV"):
        out[f"{col}_mean"], out[f"{col}_std"] = stat(col)
    t, e = th["time_fs"], th["conserved_eV"]
    ok = np.isfinite(e)
    if ok.sum() >= 2 and np.ptp(t[ok]) > 0:
        slope = np.polyfit(t[ok], e[ok], 1)[0]  # eV/fs
        out["conserved_drift_meV_per_atom_per_ps"] = float(slope * 1e3 * 1e3 / n_atoms)
    else:
        out["conserved_drift_meV_per_atom_per_ps"] = None
    return out


def _truncate_thermo(path: Path, step: int) -> None:
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1]
    for line in lines[1:]:
        head = line.split(",", 1)[0]
        if line.endswith("\n") and head.isdigit() and int(head) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(keep))


# --- trajectories -----------------------------------------------------------------------------------------

def _cell_lengths_angles(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    par = atoms.cell.cellpar()
    return par[:3], par[3:]


def write_topology(atoms: Atoms, path: Path) -> None:
    """PDB topology for mdtraj: one residue per molecule (``mol_id`` array) or per structure."""
    import mdtraj

    top = mdtraj.Topology()
    chain = top.add_chain()
    mol_ids = atoms.arrays.get("mol_id")
    if mol_ids is None:
        mol_ids = np.zeros(len(atoms), dtype=int)
    residues: dict[int, Any] = {}
    for k, (z, symbol) in enumerate(zip(atoms.numbers, atoms.get_chemical_symbols())):
        mid = int(mol_ids[k])
        if mid not in residues:
            residues[mid] = top.add_residue("MOL", chain)
        top.add_atom(symbol, mdtraj.element.Element.getByAtomicNumber(int(z)), residues[mid])
    xyz = atoms.positions[None].astype(np.float32) / 10.0  # nm
    traj = mdtraj.Trajectory(xyz, top)
    if atoms.pbc.all():
        lengths, angles = _cell_lengths_angles(atoms)
        traj.unitcell_lengths = lengths[None] / 10.0
        traj.unitcell_angles = angles[None]
    with atomic_path(path) as tmp:
        traj.save_pdb(str(tmp), force_overwrite=True)


@contextlib.contextmanager
def _quiet_stdout():
    """Silence C-level stdout (mdtraj's DCD plugin prints a banner when it opens a file)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _count_xyz_frames_upto(path: Path, step: int) -> tuple[int, int]:
    """(number of frames with step <= ``step``, byte offset where the next frame starts)."""
    frames, offset = 0, 0
    with open(path, "rb") as fh:
        while True:
            start = fh.tell()
            line = fh.readline()
            if not line.strip():
                break
            n = int(line)
            comment = fh.readline().decode()
            m = _STEP_RE.search(comment)
            body = [fh.readline() for _ in range(n)]
            if m is None or int(m.group(1)) > step or not body or not body[-1].endswith(b"\n"):
                return frames, start
            frames += 1
            offset = fh.tell()
    return frames, offset


class TrajectoryWriter:
    """Writes each frame to ``trajectory.extxyz`` (ASE) and ``trajectory.dcd`` (mdtraj) in lockstep."""

    def __init__(self, workdir: Path, atoms: Atoms, resume_step: int | None):
        from mdtraj.formats import DCDTrajectoryFile

        self.xyz_path = workdir / TRAJ_XYZ
        self.dcd_path = workdir / TRAJ_DCD
        self.top_path = workdir / TOPOLOGY
        self.periodic = bool(atoms.pbc.all())
        if resume_step is None or not self.top_path.exists():
            write_topology(atoms, self.top_path)
        old_xyz = old_lengths = old_angles = None
        if resume_step is not None and self.xyz_path.exists():
            n_keep, offset = _count_xyz_frames_upto(self.xyz_path, resume_step)
            with open(self.xyz_path, "rb") as fh:
                kept = fh.read(offset)
            with atomic_path(self.xyz_path) as tmp:
                tmp.write_bytes(kept)
            if self.dcd_path.exists() and n_keep > 0:
                with _quiet_stdout(), DCDTrajectoryFile(str(self.dcd_path), "r") as f:
                    old_xyz, old_lengths, old_angles = f.read(n_frames=n_keep)
            if n_keep > 0 and (old_xyz is None or len(old_xyz) != n_keep):
                # The DCD lost frames (a crash before its buffers reached the disk): rebuild it from the extxyz.
                import ase.io

                kept_frames = ase.io.read(self.xyz_path, index=f":{n_keep}", format="extxyz")
                old_xyz = np.array([f.positions for f in kept_frames], dtype=np.float32)
                par = np.array([f.cell.cellpar() for f in kept_frames], dtype=np.float32)
                old_lengths, old_angles = par[:, :3], par[:, 3:]
        self.n_frames = 0 if old_xyz is None else len(old_xyz)
        self._xyz = open(self.xyz_path, "a" if resume_step is not None else "w")
        # mdtraj cannot append to a DCD file: copy the kept frames into a new file, move it into place and keep
        # writing to it (the file is created on the first write, so without kept frames write in place).
        if old_xyz is None:
            self.dcd_path.unlink(missing_ok=True)
            self._dcd = DCDTrajectoryFile(str(self.dcd_path), "w", force_overwrite=True)
        else:
            tmp = self.dcd_path.with_name(f".{TRAJ_DCD}.tmp")
            self._dcd = DCDTrajectoryFile(str(tmp), "w", force_overwrite=True)
            if self.periodic:
                self._dcd.write(old_xyz, cell_lengths=old_lengths, cell_angles=old_angles)
            else:
                self._dcd.write(old_xyz)
            os.replace(tmp, self.dcd_path)

    def write(self, atoms: Atoms, step: int, time_fs: float) -> None:
        from ase.io.extxyz import write_extxyz

        frame = make_frame(atoms, step, time_fs, atoms.calc.results if atoms.calc is not None else {})
        write_extxyz(self._xyz, [frame], columns=None)
        self._xyz.flush()
        xyz = atoms.positions[None].astype(np.float32)
        if self.periodic:
            lengths, angles = _cell_lengths_angles(atoms)
            self._dcd.write(xyz, cell_lengths=lengths[None].astype(np.float32), cell_angles=angles[None].astype(np.float32))
        else:
            self._dcd.write(xyz)
        self.n_frames += 1

    def close(self) -> None:
        self._xyz.close()
        self._dcd.close()


_KEPT_ARRAYS = ("masses", "mol_id")  # per-atom inputs worth carrying into every frame


def make_frame(atoms: Atoms, step: int, time_fs: float, results: dict[str, Any]) -> Atoms:
    """A clean copy for output: positions, momenta, cell, masses/mol_id, and this step's energy, forces and
    charges (not stale per-atom arrays of the input file such as REF_forces)."""
    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    frame.set_momenta(atoms.get_momenta(), apply_constraint=False)
    for name in _KEPT_ARRAYS:
        if name in atoms.arrays:
            frame.set_array(name, np.array(atoms.arrays[name]))
    frame.info = {"step": int(step), "time_fs": float(time_fs)}
    if "energy" in results:
        frame.info["energy"] = float(results["energy"])
    for name in ("forces", "charges"):
        if name in results and np.shape(results[name])[:1] == (len(atoms),):
            frame.set_array(name, np.array(results[name], dtype=np.float64))
    return frame


def write_frame(frame: Atoms, path: Path) -> None:
    """Write one frame (see :func:`make_frame`) to extxyz atomically."""
    from ase.io.extxyz import write_extxyz

    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        write_extxyz(fh, [frame])


# --- checkpoints ------------------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    step: int
    time_fs: float
    integrator: str
    positions: np.ndarray
    momenta: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    numbers: np.ndarray
    rng_state: dict[str, Any] | None
    integrator_state: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write the checkpoint atomically as npz (arrays + a JSON metadata string; no pickles)."""
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": int(ckpt.step),
        "time_fs": float(ckpt.time_fs),
        "integrator": ckpt.integrator,
        "rng_state": ckpt.rng_state,
        "config": ckpt.config,
    }
    arrays = {
        "positions": np.asarray(ckpt.positions, dtype=np.float64),
        "momenta": np.asarray(ckpt.momenta, dtype=np.float64),
        "cell": np.asarray(ckpt.cell, dtype=np.float64),
        "pbc": np.asarray(ckpt.pbc, dtype=bool),
        "numbers": np.asarray(ckpt.numbers, dtype=np.int64),
        "meta": np.array(json.dumps(meta)),
    }
    for key, value in ckpt.integrator_state.items():
        arrays[f"state__{key}"] = np.asarray(value, dtype=np.float64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; InputError if missing, corrupt or foreign."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint {str(p)!r} not found; restart needs the checkpoint.npz of an earlier run")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("meta")))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("foreign format")
        if meta.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"version {meta.get('version')}")
        n = len(arrays["numbers"])
        ckpt = Checkpoint(
            step=int(meta["step"]),
            time_fs=float(meta["time_fs"]),
            integrator=str(meta["integrator"]),
            positions=arrays["positions"].reshape(n, 3),
            momenta=arrays["momenta"].reshape(n, 3),
            cell=arrays["cell"].reshape(3, 3),
            pbc=arrays["pbc"].reshape(3),
            numbers=arrays["numbers"],
            rng_state=meta.get("rng_state"),
            integrator_state={k.removeprefix("state__"): v for k, v in arrays.items() if k.startswith("state__")},
            config=meta.get("config") or {},
        )
    except InputError:
        raise
    except Exception as exc:  # zip/npz/JSON/shape errors all mean the same thing to the user
        raise InputError(
            f"checkpoint {str(p)!r} is corrupt or not an mlmd MD checkpoint ({type(exc).__name__}: {exc}); "
            "restart from a checkpoint.npz written by `mlmd md`"
        ) from None
    return ckpt


def prepare_restart(workdir: Path, step: int) -> None:
    """Cut the streaming outputs back to ``step`` (the trajectory is handled by TrajectoryWriter)."""
    _truncate_thermo(workdir / THERMO, step)
    for name in (RESULT, LAST_GOOD):
        (workdir / name).unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
