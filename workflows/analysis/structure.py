"""Solvation structure with mdtraj: RDFs, coordination numbers, solvation-shell composition, ion pairing.

Inputs are arrays in Å (positions, cells); they are turned into an ``mdtraj.Trajectory`` (nm) with a minimal topology
built from atomic numbers and ``mol_id`` (one residue per molecule, named by its label). Distances use mdtraj's
minimum-image convention, so wrapped or unwrapped positions both work (keep r_max below half the box).

Definitions
-----------
- g(r) is :func:`mdtraj.compute_rdf` over all centre–neighbour pairs (same-molecule pairs excluded), accumulated in
  frame chunks. Coordination n(r) = ρ ∫_0^r 4π r'² g(r') dr' with ρ the pair density per centre, so n(r) is the mean
  number of neighbours within r. The first-shell cutoff is the first minimum of g after its first peak.
- Shell of a Li⁺ in a frame: every molecule with at least one coordinating atom (O/F/N by default) within that
  element's cutoff. Composition = mean count of each molecule type per Li⁺.
- Ion pairing, per Li⁺ per frame: **free** — no anion in its shell (free or solvent-separated, SSIP);
  **CIP** — exactly one anion in its shell and that anion is in no other Li⁺'s shell; **AGG** — two or more anions,
  or an anion shared with another Li⁺. Fractions are averaged over Li⁺ and frames.
- Error bars: block averaging (:func:`workflows.analysis.statistics.block_average`) of the per-frame averages;
  they need ≥ 8 frames (otherwise ``sem`` is nan).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import mdtraj as md
import numpy as np

from mlmd.errors import InputError

from . import _checks
from .statistics import block_average

#: Elements whose atoms can sit in a Li⁺ first shell (Li–O, Li–F, Li–N).
DEFAULT_COORDINATING = ("O", "F", "N")
#: Cutoffs (Å) used when an RDF shows no first minimum (typical Li–O/F/N first minima).
FALLBACK_CUTOFF_A = {"O": 2.8, "F": 2.9, "N": 3.0}
_PAIRS_PER_CHUNK = 2_000_000
PAIRING_CLASSES = ("free", "CIP", "AGG")


# --------------------------------------------------------------------------------------------- building

def build_topology(atomic_numbers, mol_id=None, residue_names=None) -> md.Topology:
    """A minimal mdtraj Topology: one chain, one residue per molecule, atoms named by element.

    atomic_numbers : (N,) ints. mol_id : (N,) molecule index per atom (None: one residue per atom).
    residue_names : (N,) per-atom label (equal within a molecule) used as residue name; default "MOL" or the
        element symbol for single atoms.
    """
    z = np.asarray(atomic_numbers)
    if z.ndim != 1 or z.shape[0] < 1:
        raise InputError(f"atomic_numbers must have shape (atoms,); got {tuple(z.shape)}")
    if not np.issubdtype(z.dtype, np.integer) or np.any(z < 1) or np.any(z > 118):
        raise InputError(f"atomic_numbers must be integers 1-118; got {z[(z < 1) | (z > 118)][:1].tolist() or z.dtype}")
    n = z.shape[0]
    mid = np.arange(n) if mol_id is None else np.asarray(mol_id)
    if mid.shape != (n,):
        raise InputError(f"mol_id must have shape ({n},), one entry per atom; got {tuple(mid.shape)}")
    names = None if residue_names is None else np.asarray([str(s) for s in np.asarray(residue_names).ravel()])
    if names is not None and names.shape != (n,):
        raise InputError(f"residue_names must have shape ({n},), one entry per atom; got {tuple(names.shape)}")
    _, inverse, counts = np.unique(mid, return_inverse=True, return_counts=True)
    single = counts[inverse] == 1
    top = md.Topology()
    chain = top.add_chain()
    residues: dict = {}
    for i in range(n):
        el = md.element.Element.getByAtomicNumber(int(z[i]))
        key = mid[i].item() if hasattr(mid[i], "item") else mid[i]
        res = residues.get(key)
        if res is None:
            if names is not None:
                rname = names[i]
            else:
                rname = el.symbol if single[i] else "MOL"
            res = residues[key] = top.add_residue(str(rname), chain)
        elif names is not None and res.name != names[i]:
            raise InputError(f"residue_names must be equal within a molecule; mol_id {key} has {res.name!r} and "
                             f"{str(names[i])!r}")
        top.add_atom(el.symbol, el, res)
    return top


def make_trajectory(positions, cells, topology: md.Topology) -> md.Trajectory:
    """An mdtraj Trajectory from positions (T, N, 3) or (N, 3) and cells (3, 3) or (T, 3, 3), all in Å.

    Cell rows are the lattice vectors (ASE convention)."""
    x = np.asarray(positions, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    x = _checks.positions(x, "positions", 1)
    if x.shape[1] != topology.n_atoms:
        raise InputError(f"positions must hold {topology.n_atoms} atoms to match the topology; got {x.shape[1]}")
    c = _checks.finite_array("cells", cells)
    if c.shape == (3, 3):
        c = np.broadcast_to(c, (x.shape[0], 3, 3))
    if c.shape != (x.shape[0], 3, 3):
        raise InputError(f"cells must have shape (3, 3) or ({x.shape[0]}, 3, 3); got {tuple(c.shape)}")
    vol = np.abs(np.linalg.det(c))
    if np.any(vol <= 0):
        raise InputError(f"cells must have volume > 0 Å³; got {float(vol.min())!r} Å³")
    traj = md.Trajectory(x / 10.0, topology)
    traj.unitcell_vectors = np.ascontiguousarray(c / 10.0, dtype=np.float32)
    return traj


def atom_residues(topology: md.Topology) -> np.ndarray:
    """(N,) residue index of every atom."""
    return np.fromiter((a.residue.index for a in topology.atoms), dtype=int, count=topology.n_atoms)


def select_element(topology: md.Topology, symbol: str) -> np.ndarray:
    """Indices of atoms of one element."""
    return np.fromiter((a.index for a in topology.atoms if a.element.symbol == symbol), dtype=int)


# --------------------------------------------------------------------------------------------- RDF

@dataclass
class RDF:
    """g(r) between centres and neighbours. Distances in Å; ``coordination`` is the running n(r)."""

    label: str
    r: np.ndarray = field(repr=False)
    g: np.ndarray = field(repr=False)
    coordination: np.ndarray = field(repr=False)
    first_peak: float = float("nan")
    first_minimum: float = float("nan")
    coordination_number: float = float("nan")


def _indices(name: str, idx, n_atoms: int) -> np.ndarray:
    a = np.asarray(idx)
    if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name} must be a non-empty 1-D array of atom indices; got {a.tolist()!r}"[:200])
    if a.min() < 0 or a.max() >= n_atoms:
        raise InputError(f"{name} must lie in 0..{n_atoms - 1}; got {int(a.min() if a.min() < 0 else a.max())}")
    return a


def _pairs(traj: md.Trajectory, centres: np.ndarray, neighbours: np.ndarray, exclude_same_molecule: bool):
    res = atom_residues(traj.topology)
    ci, nj = np.meshgrid(centres, neighbours, indexing="ij")
    keep = ci != nj
    if exclude_same_molecule:
        keep &= res[ci] != res[nj]
    return np.stack([ci[keep], nj[keep]], axis=1)


def first_minimum(r: np.ndarray, g: np.ndarray, smooth_bins: int = 3, counts=None, min_count: int = 3,
                  min_peak: float = 1.5) -> tuple[float, float]:
    """(first peak, first minimum after it) of g(r); nan where there is none.

    g is smoothed by a moving average over ``smooth_bins``. Bins holding fewer than ``min_count`` pair counts
    (when ``counts`` is given) are ignored: at small r a single close contact makes a spike. The peak is the
    highest point of the smoothed g and must reach ``min_peak`` (an ideal gas has no shell); the minimum is
    the first point after it that is the lowest within ±0.25 Å and lies at least 10 % below the peak.
    """
    gg = np.asarray(g, dtype=np.float64).copy()
    if counts is not None:
        gg[np.asarray(counts) < min_count] = 0.0
    gs = np.convolve(gg, np.ones(smooth_bins) / smooth_bins, mode="same") if smooth_bins > 1 else gg
    if not np.any(gs > 0):
        return float("nan"), float("nan")
    ip = int(np.argmax(gs))
    if gs[ip] < min_peak:
        return float("nan"), float("nan")
    dr = float(r[1] - r[0]) if r.shape[0] > 1 else 1.0
    w = max(1, int(round(0.25 / dr)))
    for i in range(ip + 1, gs.shape[0] - 1):
        lo, hi = max(ip, i - w), min(gs.shape[0], i + w + 1)
        if gs[i] <= gs[lo:hi].min() and gs[i] < 0.9 * gs[ip] and i + w < gs.shape[0]:
            return float(r[ip]), float(r[i])
    return float(r[ip]), float("nan")


def rdf(traj: md.Trajectory, centres, neighbours, r_max_A: float = 8.0, bin_width_A: float = 0.05,
        exclude_same_molecule: bool = True, label: str = "") -> RDF:
    """Radial distribution function by :func:`mdtraj.compute_rdf`, chunked over frames.

    centres, neighbours : atom indices. Returns r, g(r), running coordination n(r), first peak, first minimum
    and the coordination number n(first minimum) (nan without a minimum).
    """
    n_atoms = traj.n_atoms
    a = _indices("centres", centres, n_atoms)
    b = _indices("neighbours", neighbours, n_atoms)
    r_max = _checks.positive("r_max_A", r_max_A, "Å")
    width = _checks.positive("bin_width_A", bin_width_A, "Å")
    n_bins = int(round(r_max / width))
    if n_bins < 2:
        raise InputError(f"bin_width_A must be smaller than r_max_A / 2 = {r_max / 2:g} Å; got {bin_width_A!r}")
    pairs = _pairs(traj, a, b, exclude_same_molecule)
    if pairs.shape[0] == 0:
        raise InputError("centres and neighbours give no pairs (all in the same molecules); choose other atoms")
    chunk = max(1, _PAIRS_PER_CHUNK // pairs.shape[0])
    g_sum = np.zeros(n_bins)
    weight = 0.0
    r_nm = None
    for lo in range(0, traj.n_frames, chunk):
        part = traj[lo:lo + chunk]
        r_nm, g = md.compute_rdf(part, pairs, r_range=(0.0, r_max / 10.0), n_bins=n_bins)
        w = float(np.sum(1.0 / part.unitcell_volumes))
        g_sum += g * w
        weight += w
    g = g_sum / weight
    r = r_nm * 10.0
    edges = np.linspace(0.0, r_max, n_bins + 1)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    # Pair density per centre: (pairs / centres) × mean(1 / V), V in Å³.
    rho = pairs.shape[0] / a.shape[0] * weight / traj.n_frames / 1000.0
    per_bin = rho * g * shell                                   # mean neighbours per centre in each bin
    coordination = np.cumsum(per_bin)
    peak, minimum = first_minimum(r, g, counts=per_bin * a.shape[0] * traj.n_frames)
    cn = float(np.interp(minimum, edges[1:], coordination)) if np.isfinite(minimum) else float("nan")
    return RDF(label, r, g, coordination, peak, minimum, cn)


# --------------------------------------------------------------------------------------------- shells

def _contacts(traj: md.Trajectory, centres: np.ndarray, groups: list[tuple[np.ndarray, float]]):
    """Yield (first frame, (t, n_centres, n_atoms) contacts of centres with group atoms within each group's cutoff).

    centres must be sorted."""
    n = traj.n_atoms
    total = sum(g.shape[0] for g, _ in groups) * centres.shape[0]
    chunk = max(1, _PAIRS_PER_CHUNK // max(total, 1))
    for lo in range(0, traj.n_frames, chunk):
        part = traj[lo:lo + chunk]
        contact = np.zeros((part.n_frames, centres.shape[0], n), dtype=bool)
        for atoms, cut in groups:
            ci, nj = np.meshgrid(centres, atoms, indexing="ij")
            keep = ci != nj
            pairs = np.stack([ci[keep], nj[keep]], axis=1)
            d = md.compute_distances(part, pairs) * 10.0                    # (t, pairs) Å
            hit = d < cut
            ii = np.searchsorted(centres, pairs[:, 0])                     # centres are sorted
            kk, pp = np.nonzero(hit)
            contact[kk, ii[pp], pairs[pp, 1]] = True
        yield lo, contact


def _residue_contacts(contact: np.ndarray, res: np.ndarray, n_res: int) -> np.ndarray:
    """(t, centres, atoms) -> (t, centres, residues): any atom of the residue in contact."""
    t, c, _ = contact.shape
    out = np.zeros((t, c, n_res), dtype=bool)
    kk, cc, aa = np.nonzero(contact)
    out[kk, cc, res[aa]] = True
    return out


def _sem_series(series: np.ndarray) -> tuple[float, float]:
    if series.shape[0] >= 8:
        ba = block_average(series)
        return float(ba.mean), float(ba.sem)
    return float(series.mean()), float("nan")


@dataclass
class ShellResult:
    """Li⁺ first-shell statistics.

    composition : residue name -> (mean molecules per Li⁺, sem). coordination : element -> (mean atoms per Li⁺, sem).
    shell_size : (mean molecules per Li⁺, sem). top_compositions : [(description, fraction)], most common first.
    pairing : class -> (fraction, sem) for "free", "CIP", "AGG". classes : (T, n_Li) codes 0/1/2 in that order.
    cutoffs_A : element -> cutoff used.
    """

    composition: dict[str, tuple[float, float]]
    coordination: dict[str, tuple[float, float]]
    shell_size: tuple[float, float]
    top_compositions: list[tuple[str, float]]
    pairing: dict[str, tuple[float, float]]
    cutoffs_A: dict[str, float]
    classes: np.ndarray = field(repr=False)


def solvation_shells(traj: md.Trajectory, li_indices, cutoffs_A: dict[str, float], anion_residue_names=(),
                     n_top: int = 5) -> ShellResult:
    """First-shell composition and ion pairing of each Li⁺ in each frame.

    li_indices : Li⁺ atom indices. cutoffs_A : element symbol -> first-shell cutoff (Å) for Li–element contacts.
    anion_residue_names : residue names of anions (for the free / CIP / AGG classification).
    """
    top = traj.topology
    li = np.sort(_indices("li_indices", li_indices, traj.n_atoms))
    if not cutoffs_A:
        raise InputError("cutoffs_A must name at least one coordinating element, e.g. {'O': 2.8}; got {}")
    groups, used = [], {}
    for el, cut in cutoffs_A.items():
        cut = _checks.positive(f"cutoffs_A[{el!r}]", cut, "Å")
        atoms = select_element(top, el)
        atoms = atoms[~np.isin(atoms, li)]
        if atoms.size:
            groups.append((atoms, cut))
            used[el] = cut
    res = atom_residues(top)
    res_names = np.array([r.name for r in top.residues])
    names = sorted(set(res_names.tolist()))
    anions = np.isin(res_names, list(anion_residue_names))
    unknown = sorted(set(anion_residue_names) - set(names))
    if unknown:
        raise InputError(f"anion_residue_names {unknown} are not residue names of the topology; accepted: {names}")
    elements = np.array([a.element.symbol for a in top.atoms])
    n_res = top.n_residues
    li_res = res[li]
    frame_comp = {nm: [] for nm in names}
    frame_coord = {el: [] for el in used}
    frame_size, frame_class = [], []
    combos: Counter = Counter()
    for _, contact in _contacts(traj, li, groups) if groups else []:
        rc = _residue_contacts(contact, res, n_res)
        rc[:, np.arange(li.shape[0]), li_res] = False            # a Li⁺ is not in its own shell
        per_name = np.stack([rc[:, :, res_names == nm].sum(axis=2) for nm in names], axis=2)   # (t, n_li, names)
        for k, nm in enumerate(names):
            frame_comp[nm].append(per_name[:, :, k].mean(axis=1))
        for el in used:
            frame_coord[el].append(contact[:, :, elements == el].sum(axis=2).mean(axis=1))
        frame_size.append(rc.sum(axis=2).mean(axis=1))
        an = rc[:, :, anions]                                        # (t, n_li, n_anions)
        n_an = an.sum(axis=2)
        shared = an.sum(axis=1)                                      # Li⁺ per anion
        bridged = np.einsum("tla,ta->tl", an.astype(int), (shared > 1).astype(int)) > 0
        cls = np.where(n_an == 0, 0, np.where((n_an == 1) & ~bridged, 1, 2))
        frame_class.append(cls)
        rows, counts = np.unique(per_name.reshape(-1, len(names)), axis=0, return_counts=True)
        for row, cnt in zip(rows, counts):
            combos[tuple(int(v) for v in row)] += int(cnt)
    if not frame_size:
        raise InputError(f"cutoffs_A names no element present besides Li; got {sorted(cutoffs_A)}")
    classes = np.concatenate(frame_class, axis=0)
    total = sum(combos.values())
    return ShellResult(
        composition={nm: _sem_series(np.concatenate(frame_comp[nm])) for nm in names},
        coordination={el: _sem_series(np.concatenate(frame_coord[el])) for el in used},
        shell_size=_sem_series(np.concatenate(frame_size)),
        top_compositions=[(" + ".join(f"{v} {nm}" for nm, v in zip(names, key) if v) or "empty", c / total)
                          for key, c in combos.most_common(n_top)],
        pairing={c: _sem_series((classes == i).mean(axis=1)) for i, c in enumerate(PAIRING_CLASSES)},
        cutoffs_A=used,
        classes=classes,
    )


# --------------------------------------------------------------------------------------------- all in one

@dataclass
class SolvationResult:
    """RDFs of Li⁺ with each coordinating element, and first-shell statistics using their first minima."""

    rdfs: dict[str, RDF]
    shells: ShellResult


def solvation_analysis(positions, cells, atomic_numbers, mol_id, labels, li_label: str = "Li",
                       anion_labels=(), elements=DEFAULT_COORDINATING, r_max_A: float = 8.0,
                       bin_width_A: float = 0.05) -> SolvationResult:
    """Li⁺–O/F/N RDFs, cutoffs at their first minima (fallback: :data:`FALLBACK_CUTOFF_A`), shell composition and
    ion pairing, from arrays.

    positions : (T, N, 3) Å. cells : (3, 3) or (T, 3, 3) Å. atomic_numbers, mol_id, labels : (N,).
    li_label : label of the Li⁺ units. anion_labels : labels of anion molecules.
    """
    top = build_topology(atomic_numbers, mol_id, labels)
    traj = make_trajectory(positions, cells, top)
    lab = np.asarray([str(s) for s in np.asarray(labels).ravel()])
    li = np.nonzero(lab == li_label)[0]
    if li.size == 0:
        raise InputError(f"li_label {li_label!r} is not among the labels; accepted: {sorted(set(lab.tolist()))}")
    li = li[np.asarray(atomic_numbers)[li] == 3]
    if li.size == 0:
        raise InputError(f"li_label {li_label!r} marks no lithium atom (Z = 3)")
    rdfs, cutoffs = {}, {}
    for el in elements:
        atoms = select_element(top, el)
        atoms = atoms[~np.isin(atoms, li)]
        if atoms.size == 0:
            continue
        g = rdf(traj, li, atoms, r_max_A, bin_width_A, label=f"Li-{el}")
        rdfs[el] = g
        cutoffs[el] = g.first_minimum if np.isfinite(g.first_minimum) else FALLBACK_CUTOFF_A.get(el, 3.0)
    if not cutoffs:
        raise InputError(f"no atoms of elements {list(elements)} besides Li; nothing coordinates Li⁺")
    shells = solvation_shells(traj, li, cutoffs, anion_residue_names=tuple(anion_labels))
    return SolvationResult(rdfs, shells)
