"""Crystal-generation metrics following the community (CDVAE / DiffCSP / CrysBFN) protocol.

- CSP: StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3) match rate and mean RMS of matched pairs; best-of-k.
- Generation: structural validity (all distances >= 0.5 Å, volume >= 0.1 Å³), compositional validity (SMACT charge
  neutrality + Pauling electronegativity test), COV-R / COV-P with CrystalNN ("ops") structure fingerprints and
  Magpie composition fingerprints (cutoffs per data set), Wasserstein distances of density and number of elements.

Composition distances are in units of how much each Magpie feature varies across inorganic chemistry, as in the
reference code. Its scaler is fitted on Materials Project compositions, which are not available offline; ours is
fitted on a fixed, seeded set of random 1-5-element compositions (``broad_composition_scaler``), whose per-feature
spread is within 0.7-1.5x of the reference constants (median ratio 1.01). Standardising on the reference set itself
would not do: a data set of one structure type (perov_5: ABX3) has a narrow spread in every feature, so the fixed
cutoff of 4.0 becomes far stricter than the protocol's.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np

#: (structure-fingerprint cutoff, composition-fingerprint cutoff) used for COV
COV_CUTOFFS = {"perov_5": (0.2, 4.0), "carbon_24": (0.2, 4.0), "mp_20": (0.4, 10.0)}


def structure_matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)


def match_rms(pred, ref, matcher=None) -> float | None:
    """RMS displacement (normalised by (V/n)^(1/3), pymatgen's convention) if ``pred`` matches ``ref``, else None."""
    matcher = matcher or structure_matcher()
    if pred is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = matcher.get_rms_dist(pred, ref)
    except Exception:  # noqa: BLE001 - degenerate generated lattices
        return None
    return None if out is None else float(out[0])


def csp_metrics(preds: list, refs: list) -> dict:
    """``preds``: one structure per reference, or a list of k candidates per reference (best-of-k)."""
    matcher = structure_matcher()
    rms = []
    for cand, ref in zip(preds, refs):
        cands = cand if isinstance(cand, (list, tuple)) else [cand]
        best = None
        for c in cands:
            if c is None or not structure_validity(c):
                continue
            r = match_rms(c, ref, matcher)
            if r is not None and (best is None or r < best):
                best = r
        rms.append(best)
    matched = [r for r in rms if r is not None]
    k = max((len(c) if isinstance(c, (list, tuple)) else 1) for c in preds) if preds else 1
    return {
        "n": len(refs),
        "k": k,
        "match_rate": len(matched) / max(len(refs), 1),
        "rms": float(np.mean(matched)) if matched else None,
    }


def structure_validity(structure, cutoff: float = 0.5) -> bool:
    """All interatomic distances (periodic images included, self excluded) >= ``cutoff`` Å and volume >= 0.1 Å³."""
    try:
        vol = abs(float(structure.lattice.volume))
        if not math.isfinite(vol) or vol < 0.1:
            return False
        dm = np.array(structure.distance_matrix)
    except Exception:  # noqa: BLE001
        return False
    if not np.all(np.isfinite(dm)):
        return False
    dm = dm + np.eye(len(dm)) * (cutoff + 10.0)
    if dm.min() < cutoff:
        return False
    # an atom's own periodic images: the shortest lattice vector
    lat = np.asarray(structure.lattice.matrix)
    shortest = min(np.linalg.norm(np.asarray(v, float) @ lat) for v in itertools.product((-1, 0, 1), repeat=3) if any(v))
    return bool(shortest >= cutoff)


def smact_validity(composition, use_pauling_test: bool = True, include_alloys: bool = True) -> bool:
    """SMACT charge neutrality (+ electronegativity ordering) of a composition (dict-like element -> count)."""
    import smact
    from smact.screening import pauling_test

    from pymatgen.core import Composition

    comp = Composition(composition)
    elems = [str(e) for e in comp.elements]
    counts = np.array([comp[e] for e in comp.elements], dtype=float)
    if len(set(elems)) == 1:
        return True
    if not np.allclose(counts, np.round(counts)):
        return False
    counts = counts.astype(int)
    g = np.gcd.reduce(counts)
    counts = counts // g
    space = smact.element_dictionary(tuple(elems))
    smact_elems = [space[e] for e in elems]
    if include_alloys and all(e in smact.metals for e in elems):
        return True
    electronegs = [e.pauling_eneg for e in smact_elems]
    ox_combos = [e.oxidation_states for e in smact_elems]
    threshold = int(np.max(counts))
    stoichs = [(int(c),) for c in counts]
    for ox_states in itertools.product(*ox_combos):
        cn_e = smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=threshold)
        if cn_e:
            if not use_pauling_test:
                return True
            try:
                if pauling_test(ox_states, electronegs):
                    return True
            except TypeError:
                return True  # no electronegativity data: accepted, as in the reference code
    return False


@dataclass
class Fingerprints:
    struct: np.ndarray  # [n, 61] mean CrystalNN "ops" site fingerprint (NaN row if it failed)
    comp: np.ndarray  # [n, 132] Magpie ElementProperty


_FEATURIZERS = {}


def _featurizers():
    if not _FEATURIZERS:
        from matminer.featurizers.composition.composite import ElementProperty
        from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

        _FEATURIZERS["struct"] = CrystalNNFingerprint.from_preset("ops")
        _FEATURIZERS["comp"] = ElementProperty.from_preset("magpie")
    return _FEATURIZERS["struct"], _FEATURIZERS["comp"]


def fingerprints(structures: list) -> Fingerprints:
    sfp, cfp = _featurizers()
    S, C = [], []
    for s in structures:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                site = [sfp.featurize(s, i) for i in range(len(s))]
                S.append(np.mean(np.array(site, dtype=float), axis=0))
            except Exception:  # noqa: BLE001
                S.append(None)
            try:
                C.append(np.array(cfp.featurize(s.composition), dtype=float))
            except Exception:  # noqa: BLE001
                C.append(None)
    ns = next((len(x) for x in S if x is not None), 61)
    nc = next((len(x) for x in C if x is not None), 132)
    S = np.array([x if x is not None else np.full(ns, np.nan) for x in S]).reshape(len(structures), ns)
    C = np.array([x if x is not None else np.full(nc, np.nan) for x in C]).reshape(len(structures), nc)
    return Fingerprints(S, C)


#: Elements the broad scaler draws from: H-Bi without the noble gases and the radioactive Tc and Pm.
_SCALER_EXCLUDED = {2, 10, 18, 36, 54, 43, 61}
#: Probability of 1, 2, 3, 4 or 5 elements in a composition of the broad set (inorganic databases peak at ternaries).
_SCALER_N_ELEMENTS = (0.02, 0.2, 0.45, 0.25, 0.08)


@functools.lru_cache(maxsize=2)
def broad_composition_scaler(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation ``[132]`` of the Magpie fingerprint over ``n`` random compositions.

    Each composition has 1-5 distinct elements (H-Bi) with integer amounts 1-8. Deterministic for a given seed.
    """
    from pymatgen.core import Composition, Element

    _, cfp = _featurizers()
    symbols = [Element.from_Z(z).symbol for z in range(1, 84) if z not in _SCALER_EXCLUDED]
    rng = np.random.default_rng(seed)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            k = int(rng.choice(len(_SCALER_N_ELEMENTS), p=_SCALER_N_ELEMENTS)) + 1
            elements = rng.choice(symbols, size=k, replace=False)
            amounts = rng.integers(1, 9, size=k)
            rows.append(cfp.featurize(Composition(dict(zip(elements.tolist(), amounts.tolist())))))
    features = np.array(rows, dtype=float)
    sd = np.nanstd(features, axis=0)
    return np.nanmean(features, axis=0), np.where(sd > 1e-12, sd, 1.0)


#: what ``coverage`` reports when either side has no usable fingerprint
_NO_COVERAGE = {"cov_recall": 0.0, "cov_precision": 0.0, "cov_recall_joint": 0.0, "cov_precision_joint": 0.0}


def coverage(gen_fp: Fingerprints, ref_fp: Fingerprints, struct_cutoff: float, comp_cutoff: float) -> dict:
    """COV-R / COV-P as the community protocol defines them, plus the stricter joint variants.

    COV-R: the fraction of reference crystals whose nearest generated structure fingerprint is within
    ``struct_cutoff`` and whose nearest generated composition fingerprint is within ``comp_cutoff``. The two nearest
    neighbours are taken separately, as in the CDVAE reference code that DiffCSP and CrysBFN report with, so they may
    be different crystals. COV-P is the converse over generated crystals.

    ``cov_recall_joint`` / ``cov_precision_joint`` ask for one crystal within both cutoffs. That is stricter and not
    comparable with published numbers. Composition fingerprints are standardised with ``broad_composition_scaler``
    (not with either set). Denominators are all reference (recall) and all given generated (precision) crystals,
    including any without a fingerprint.
    """
    from scipy.spatial.distance import cdist

    mu, sd = broad_composition_scaler()
    gc, rc = (gen_fp.comp - mu) / sd, (ref_fp.comp - mu) / sd
    gs, rs = gen_fp.struct, ref_fp.struct
    gok = np.all(np.isfinite(gs), 1) & np.all(np.isfinite(gc), 1)
    rok = np.all(np.isfinite(rs), 1) & np.all(np.isfinite(rc), 1)
    if not gok.any() or not rok.any():
        return dict(_NO_COVERAGE)
    ds = cdist(rs[rok], gs[gok])  # [n_ref, n_gen]
    dc = cdist(rc[rok], gc[gok])
    s_ok, c_ok = ds <= struct_cutoff, dc <= comp_cutoff
    joint = s_ok & c_ok
    return {
        "cov_recall": float((s_ok.any(axis=1) & c_ok.any(axis=1)).sum() / len(rs)),
        "cov_precision": float((s_ok.any(axis=0) & c_ok.any(axis=0)).sum() / len(gs)),
        "cov_recall_joint": float(joint.any(axis=1).sum() / len(rs)),
        "cov_precision_joint": float(joint.any(axis=0).sum() / len(gs)),
        "amsd_recall": float(ds.min(axis=1).mean()),
        "amcd_recall": float(dc.min(axis=1).mean()),
        "amsd_precision": float(ds.min(axis=0).mean()),
        "amcd_precision": float(dc.min(axis=0).mean()),
    }


def wasserstein_metrics(gen: list, ref: list) -> dict:
    from scipy.stats import wasserstein_distance

    def dens(xs):
        return [float(s.density) for s in xs]

    def nel(xs):
        return [len(s.composition.elements) for s in xs]

    if not gen or not ref:
        return {"wdist_density": None, "wdist_num_elems": None}
    return {"wdist_density": float(wasserstein_distance(dens(gen), dens(ref))),
            "wdist_num_elems": float(wasserstein_distance(nel(gen), nel(ref)))}


def generation_metrics(gen: list, ref: list, dataset: str = "perov_5", n_cov: int | None = None,
                       cutoffs: tuple[float, float] | None = None) -> dict:
    """Validity, coverage and property distances of generated ``gen`` against reference (test) ``ref`` structures.

    ``None`` entries in ``gen`` count as invalid. Coverage uses at most ``n_cov`` generated and reference crystals
    (the first ones; all if None). Property distances use the valid crystals, as in the reference code.
    """
    if cutoffs is None:
        if dataset not in COV_CUTOFFS:
            from mlmd.errors import InputError

            raise InputError(f"no coverage cutoffs for data set {dataset!r}; use one of {sorted(COV_CUTOFFS)} or give cutoffs")
        cutoffs = COV_CUTOFFS[dataset]
    sv = [s is not None and structure_validity(s) for s in gen]
    cv = [s is not None and smact_validity(s.composition) for s in gen]
    valid = [s for s, a, b in zip(gen, sv, cv) if a and b]
    n = max(len(gen), 1)
    out = {
        "n": len(gen),
        "struct_validity": sum(sv) / n,
        "comp_validity": sum(cv) / n,
        "validity": len(valid) / n,
    }
    out.update(wasserstein_metrics(valid, ref))
    g_cov = [s for s, a, b in zip(gen, sv, cv) if a and b][:n_cov] if n_cov else valid
    r_cov = ref[:n_cov] if n_cov else ref
    # as in the reference code, invalid generated crystals cannot cover anything; count them in COV-P's denominator
    n_gen_cov = min(len(gen), n_cov) if n_cov else len(gen)
    if g_cov:
        cov = coverage(fingerprints(g_cov), fingerprints(r_cov), *cutoffs)
        for key in ("cov_precision", "cov_precision_joint"):
            cov[key] = cov[key] * len(g_cov) / max(n_gen_cov, 1)
    else:
        cov = dict(_NO_COVERAGE)
    out.update(cov)
    out["cov_cutoffs"] = list(cutoffs)
    return out
