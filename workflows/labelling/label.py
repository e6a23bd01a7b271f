"""``mlmd label``: build electrolyte clusters, sample configurations, label them, write extxyz shards.

Cluster ``i`` is a deterministic function of (config, seed, i): its kind, composition, packing, MD and
perturbations all draw from ``cluster_seed(seed, i)``. Output folder layout::

    OUT/shard_000.extxyz.gz    completed shards (clusters [0, shard_size), ...), frames sorted by cluster
    OUT/MANIFEST.json          counts, element counts, generator config, sha256 per completed shard
    OUT/.progress/             config.json, per-shard cluster logs (*.jsonl), shards being filled (*.extxyz)

Reruns with the same settings skip finished clusters (resume); a larger ``n_clusters`` appends clusters.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase import Atoms
from ase.io import read, write

from mlmd import keys
from mlmd.errors import ConfigError
from mlmd.io import atomic_path, atomic_write_text, file_sha256

from .calculators import load_factory, make_calculator
from .clusters import KINDS, build_cluster, sample_spec
from .config import LabelConfig
from .sampling import MDSettings, Reference, SamplePlan, sample_cluster
from .species import molecule_atoms, resolve_salt, resolve_species

SAMPLING_KEY = "sampling"  # info: initial | md | compressed | expanded | rattled


def cluster_seed(seed: int, cluster_id: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(cluster_id)]).generate_state(1, dtype=np.uint32)[0])


@dataclass
class ClusterResult:
    cluster_id: int
    frames: list[Atoms] = field(default_factory=list)
    record: dict = field(default_factory=dict)


@dataclass
class _Resolved:
    solvents: list
    salts: list
    reference: Callable
    sampler: Callable | None


def resolve(cfg: LabelConfig) -> _Resolved:
    """Resolve species, salts and calculator factories; raises MLMDError for bad names/SMILES/elements."""
    solvents = [resolve_species(s) for s in cfg.solvents]
    for s in solvents:
        if s.charge != 0:
            raise ConfigError(f"solvent '{s.name}' has charge {s.charge:+d}; solvents must be neutral molecules")
        n = len(molecule_atoms(s))
        if n > cfg.max_atoms:
            raise ConfigError(f"solvent '{s.name}' has {n} atoms, more than max_atoms ({cfg.max_atoms}); "
                              "raise --max-atoms or drop the solvent")
    salts = [resolve_salt(s) for s in cfg.salts]
    return _Resolved(solvents, salts, load_factory(cfg.calculator),
                     load_factory(cfg.sampler) if cfg.sampler else None)


def _split(seed: int) -> str:
    u = np.random.default_rng([seed, 7]).random()
    return "test" if u < 0.05 else "val" if u < 0.10 else "train"


def label_cluster(cfg: LabelConfig, cluster_id: int, resolved: _Resolved | None = None) -> ClusterResult:
    """Build, sample and label cluster ``cluster_id``. Failures are recorded, never raised (except user errors)."""
    r = resolved or resolve(cfg)
    t0 = time.perf_counter()
    seed = cluster_seed(cfg.seed, cluster_id)
    rng = np.random.default_rng(seed)
    kinds = [k for k in KINDS if cfg.kinds.get(k, 0) > 0]
    weights = np.array([cfg.kinds[k] for k in kinds], float)
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    spec = sample_spec(kind, rng, r.solvents, r.salts, cfg.min_atoms, cfg.max_atoms)
    s = cfg.sampling
    temperature = float(rng.uniform(*s.temperature_k))
    timestep = float(rng.uniform(*s.timestep_fs))
    record: dict[str, Any] = {"cluster": cluster_id, "seed": seed, "kind": kind, "composition": spec.composition,
                              "charge": spec.charge, "n_atoms": spec.n_atoms, "temperature_k": round(temperature, 3),
                              "timestep_fs": round(timestep, 4), "frames": 0, "error": None}
    frames: list[Atoms] = []
    try:
        atoms = build_cluster(spec, seed, density=cfg.density_g_cm3, tolerance=cfg.packmol_tolerance)
        reference = Reference(r.reference, spec.charge, cfg.calculator_kwargs, cfg.retry, s.max_force)
        sampler = make_calculator(r.sampler, spec.charge, cfg.sampler_kwargs) if r.sampler else None
        plan = SamplePlan(
            md=MDSettings(temperature, timestep, s.friction_per_fs, s.md_steps, s.keep_every, s.keep_initial),
            n_compressed=s.n_compressed, n_expanded=s.n_expanded, scale_range=tuple(s.scale_range),
            n_rattled=s.n_rattled, rattle_std=tuple(s.rattle_std))
        sampled, stats = sample_cluster(atoms, reference, plan, rng, sampler=sampler)
        record["stats"] = stats.as_dict()
        split = _split(seed)
        for i, fr in enumerate(sampled):
            a = Atoms(numbers=atoms.numbers, positions=fr.positions, pbc=False)
            a.info[keys.REF_ENERGY] = float(fr.labels["energy"])
            if "dipole" in fr.labels:
                a.info[keys.REF_DIPOLE] = np.asarray(fr.labels["dipole"], float)
            a.info[keys.TOTAL_CHARGE] = int(spec.charge)
            a.info[keys.CONFIG_TYPE] = kind
            a.info[SAMPLING_KEY] = fr.sampling
            a.info["cluster_id"] = int(cluster_id)
            a.info["frame"] = i
            a.info["composition"] = spec.composition
            a.info["temperature_k"] = round(temperature, 3)
            a.info["split"] = split
            a.arrays[keys.REF_FORCES] = np.asarray(fr.labels["forces"], float)
            if "charges" in fr.labels:
                a.arrays[keys.REF_CHARGES] = np.asarray(fr.labels["charges"], float)
            a.arrays[keys.MOL_ID] = np.asarray(atoms.arrays[keys.MOL_ID], int)
            frames.append(a)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # a failed cluster is skipped and counted, never fatal
        record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        record["traceback"] = traceback.format_exc(limit=3)[-1000:]
    record["frames"] = len(frames)
    record["by_sampling"] = dict(Counter(a.info[SAMPLING_KEY] for a in frames))
    record["elements"] = dict(Counter(sym for a in frames for sym in a.get_chemical_symbols()))
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return ClusterResult(cluster_id, frames, record)


# ----------------------------------------------------------------------------------------------- worker pool
_WORKER: dict = {}


def _init_worker(cfg_json: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    cfg = LabelConfig.model_validate_json(cfg_json)
    _WORKER["cfg"] = cfg
    _WORKER["resolved"] = resolve(cfg)


def _work(cluster_id: int) -> ClusterResult:
    return label_cluster(_WORKER["cfg"], cluster_id, _WORKER["resolved"])


# ----------------------------------------------------------------------------------------------- shard store
def _frames_to_text(frames: list[Atoms]) -> str:
    buf = io.StringIO()
    if frames:
        write(buf, frames, format="extxyz")
    return buf.getvalue()


def _read_frames(path: Path) -> list[Atoms]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    return read(str(path), index=":", format="extxyz")


class ShardStore:
    """Shards of ``shard_size`` clusters; frames appended as clusters finish, gzipped when a shard completes."""

    def __init__(self, cfg: LabelConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.progress = self.out / ".progress"
        self.progress.mkdir(parents=True, exist_ok=True)
        self.records: dict[int, dict] = {}  # cluster id -> log record (done clusters)
        self._check_config()
        self._load()

    # paths
    def final(self, k: int) -> Path:
        return self.out / f"shard_{k:03d}.extxyz.gz"

    def partial(self, k: int) -> Path:
        return self.progress / f"shard_{k:03d}.extxyz"

    def log(self, k: int) -> Path:
        return self.progress / f"shard_{k:03d}.jsonl"

    def expected(self, k: int) -> range:
        s = self.cfg.shard_size
        return range(k * s, min((k + 1) * s, self.cfg.n_clusters))

    @property
    def n_shards(self) -> int:
        return -(-self.cfg.n_clusters // self.cfg.shard_size)

    def _check_config(self) -> None:
        path = self.progress / "config.json"
        fp = self.cfg.fingerprint_dict()
        if path.exists():
            old = json.loads(path.read_text())
            if old != fp:
                diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
                raise ConfigError(f"output folder '{self.out}' was made with different settings ({', '.join(diff)}); "
                                  "use the same settings to resume or another --out")
        else:
            atomic_write_text(path, json.dumps(fp, indent=2, sort_keys=True) + "\n")

    def _load(self) -> None:
        for logfile in sorted(self.progress.glob("shard_*.jsonl")):
            k = int(logfile.stem.split("_")[1])
            for rec in self._log_lines(k):
                self.records[int(rec["cluster"])] = rec
            done = {c for c in self.records if c // self.cfg.shard_size == k}
            part = self.partial(k)
            final = self.final(k)
            if not final.exists():
                # a cluster counts as done only when all its logged frames are in the partial shard
                frames = _read_frames(part)
                have = Counter(int(a.info["cluster_id"]) for a in frames)
                for c in list(done):
                    if have.get(c, 0) != self.records[c]["frames"]:
                        done.discard(c)
                        del self.records[c]
                keep = [a for a in frames if int(a.info["cluster_id"]) in done]
                if len(keep) != len(frames):
                    with atomic_path(part) as tmp:
                        tmp.write_text(_frames_to_text(keep))
                if self.log(k).exists():  # rewritten: drops torn lines and undone clusters
                    with atomic_path(self.log(k)) as tmp:
                        tmp.write_text("".join(json.dumps(self.records[c], sort_keys=True) + "\n" for c in sorted(done)))
            if final.exists() and not set(self.expected(k)) <= done:
                # more clusters now belong to this shard: reopen it
                if not part.exists():
                    with atomic_path(part) as tmp:
                        tmp.write_text(_frames_to_text(_read_frames(final)))
                final.unlink()
        # a finished shard whose gz was never written (interrupted between the last log line and the gzip)
        for k in range(self.n_shards):
            if not self.final(k).exists() and self.log(k).exists() and self._complete(k):
                self._finalize(k)

    def _log_lines(self, k: int):
        if not self.log(k).exists():
            return
        for line in self.log(k).read_text().splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # a torn last line from an interruption
                continue

    def todo(self) -> list[int]:
        return [c for c in range(self.cfg.n_clusters) if c not in self.records]

    def _complete(self, k: int) -> bool:
        return all(c in self.records for c in self.expected(k))

    def add(self, result: ClusterResult) -> bool:
        """Append one cluster's frames and its log record; returns True when this completed a shard."""
        k = result.cluster_id // self.cfg.shard_size
        text = _frames_to_text(result.frames)
        if text:
            with open(self.partial(k), "a") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        rec = {k2: v for k2, v in result.record.items() if k2 != "traceback"}
        with open(self.log(k), "a") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.records[result.cluster_id] = rec
        if self._complete(k):
            self._finalize(k)
            return True
        return False

    def _finalize(self, k: int) -> None:
        frames = _read_frames(self.partial(k))
        frames.sort(key=lambda a: (int(a.info["cluster_id"]), int(a.info["frame"])))
        data = _frames_to_text(frames).encode()
        with atomic_path(self.final(k)) as tmp:
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                gz.write(data)
        if self.partial(k).exists():
            self.partial(k).unlink()
        self.write_manifest()

    def write_manifest(self) -> dict:
        shards, totals = [], Counter()
        by_type, by_sampling, elements, stats, errors = Counter(), Counter(), Counter(), Counter(), Counter()
        pending = Counter()
        for k in range(self.n_shards):
            recs = [self.records[c] for c in self.expected(k) if c in self.records]
            if not self.final(k).exists():
                pending["clusters"] += len(recs)
                pending["frames"] += sum(r["frames"] for r in recs)
                continue
            n_frames = sum(r["frames"] for r in recs)
            shards.append({"file": self.final(k).name, "sha256": file_sha256(self.final(k)), "clusters": len(recs),
                           "first_cluster": self.expected(k).start, "last_cluster": self.expected(k).stop - 1,
                           "frames": n_frames})
            for r in recs:
                totals["clusters"] += 1
                totals["frames"] += r["frames"]
                by_type[r["kind"]] += r["frames"]
                by_sampling.update(r.get("by_sampling", {}))
                elements.update(r.get("elements", {}))
                stats.update(r.get("stats", {}))
                if r.get("error"):
                    errors[r["error"].split(":")[0]] += 1
        manifest = {
            "description": "Electrolyte clusters labelled with the reference calculator; mlmd label",
            "format": "extended XYZ, gzip; non-periodic clusters (pbc F F F, no cell)",
            "units": {"energy": "eV", "forces": "eV/Å", "charges": "e", "dipole": "e·Å", "positions": "Å"},
            "keys": {"info": [keys.REF_ENERGY, keys.REF_DIPOLE, keys.TOTAL_CHARGE, keys.CONFIG_TYPE, SAMPLING_KEY,
                              "cluster_id", "frame", "composition", "temperature_k", "split"],
                     "arrays": [keys.REF_FORCES, keys.REF_CHARGES, keys.MOL_ID]},
            "complete": len(shards) == self.n_shards,
            "n_clusters_planned": self.cfg.n_clusters,
            "totals": dict(totals),
            "frames_by_config_type": dict(sorted(by_type.items())),
            "frames_by_sampling": dict(sorted(by_sampling.items())),
            "atoms_by_element": dict(sorted(elements.items())),
            "reference_stats": dict(sorted(stats.items())),
            "cluster_errors": dict(errors),
            "in_progress": dict(pending),
            "shards": shards,
            "generator": {"command": "mlmd label", "seed": self.cfg.seed, "n_clusters": self.cfg.n_clusters,
                          "config": self.cfg.fingerprint_dict(), "versions": _versions()},
        }
        atomic_write_text(self.out / "MANIFEST.json", json.dumps(manifest, indent=2) + "\n")
        return manifest


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("mlmd", "tblite", "ase", "rdkit", "packmol"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------------------------- driver
@dataclass
class Summary:
    clusters_done: int = 0
    frames: int = 0
    scf_failures: int = 0
    recovered: int = 0
    rejected: int = 0
    cluster_errors: int = 0
    reference_calls: int = 0
    seconds: float = 0.0
    skipped_existing: int = 0
    manifest: dict = field(default_factory=dict)


def run_label(cfg: LabelConfig, progress: bool = True, console=None) -> Summary:
    """Label ``cfg.n_clusters`` clusters into ``cfg.out`` (resuming), with a rich progress bar and summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    # One OpenMP thread per process unless the user chose otherwise: xTB on an oversubscribed machine spins.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    resolved = resolve(cfg)  # user errors surface here, before any work
    store = ShardStore(cfg)
    todo = store.todo()
    summary = Summary(skipped_existing=cfg.n_clusters - len(todo))
    t0 = time.perf_counter()
    if todo:
        console.log(f"labelling {len(todo)} clusters ({summary.skipped_existing} already done) into {cfg.out} "
                    f"with {cfg.workers} worker(s)")
    columns = [TextColumn("[bold]label"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task("label", total=len(todo), info="")

        def consume(res: ClusterResult) -> None:
            rec = res.record
            st = rec.get("stats", {})
            summary.clusters_done += 1
            summary.frames += rec["frames"]
            summary.scf_failures += st.get("scf_failures", 0)
            summary.recovered += st.get("recovered", 0)
            summary.rejected += st.get("rejected", 0)
            summary.reference_calls += st.get("calls", 0)
            summary.cluster_errors += bool(rec.get("error"))
            if store.add(res):
                k = res.cluster_id // cfg.shard_size
                m = json.loads((Path(cfg.out) / "MANIFEST.json").read_text())
                console.log(f"shard {k:03d} complete: {store.final(k).name}; {m['totals'].get('frames', 0)} frames "
                            f"in {len(m['shards'])} completed shards")
            bar.update(task, advance=1, info=f"frames {summary.frames} scf-skipped {summary.scf_failures}")

        if cfg.workers <= 1 or len(todo) <= 1:
            for cid in todo:
                consume(label_cluster(cfg, cid, resolved))
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg.model_dump_json(),)) as pool:
                for res in pool.imap_unordered(_work, todo, chunksize=1):
                    consume(res)
    summary.seconds = time.perf_counter() - t0
    summary.manifest = store.write_manifest()
    _print_summary(console, cfg, summary)
    return summary


def _print_summary(console, cfg: LabelConfig, s: Summary) -> None:
    from rich.table import Table

    m = s.manifest
    table = Table(title=f"mlmd label: {cfg.out}", show_header=False)
    table.add_row("clusters labelled this run", str(s.clusters_done))
    table.add_row("clusters already done", str(s.skipped_existing))
    table.add_row("frames kept this run", str(s.frames))
    table.add_row("SCF failures skipped", str(s.scf_failures))
    table.add_row("SCF recovered by retry", str(s.recovered))
    table.add_row("frames over force cap", str(s.rejected))
    table.add_row("clusters failed (build/other)", str(s.cluster_errors))
    if s.frames:
        table.add_row("reference calls per frame", f"{s.reference_calls / s.frames:.2f}")
        table.add_row("wall time per frame", f"{s.seconds / s.frames:.3f} s")
    table.add_row("frames in completed shards", str(m.get("totals", {}).get("frames", 0)))
    table.add_row("frames by config_type", ", ".join(f"{k} {v}" for k, v in m.get("frames_by_config_type", {}).items()))
    console.print(table)
