"""Screening report: a ranked table and figures from the results database, as HTML and Markdown.

``write_report(db, out_dir)`` writes ``report.html``, ``report.md`` and ``figures/`` (property bars with error bars
drawn here, plus each formulation's density trace, Li⁺ RDFs, MSD fits and Green–Kubo integral copied from its run
folder). The page is static (no scripts), so it renders anywhere, including a headless browser.
"""

from __future__ import annotations

import html
import math
import shutil
import time
from pathlib import Path
from typing import Any

from mlmd.errors import InputError
from mlmd.io import atomic_write_text

#: (key, header, unit) of the table columns; each key has a ``*_sem`` companion in the database.
COLUMNS = [
    ("density_g_cm3", "density", "g/cm³", "density_g_cm3_sem"),
    ("viscosity_mPa_s", "viscosity", "mPa·s", "viscosity_mPa_s_sem"),
    ("sigma_NE_mS_cm", "σ Nernst–Einstein", "mS/cm", "sigma_NE_mS_cm_sem"),
    ("sigma_Einstein_mS_cm", "σ collective", "mS/cm", "sigma_Einstein_mS_cm_sem"),
    ("t_Li_NE", "t(Li⁺) NE", "", "t_Li_NE_sem"),
    ("t_Li_Onsager", "t(Li⁺) Onsager", "", "t_Li_Onsager_sem"),
    ("D_Li", "D(Li⁺)", "10⁻⁹ m²/s", "D_Li_sem"),
    ("pair_free", "free Li⁺", "", "pair_free_sem"),
    ("pair_CIP", "CIP", "", "pair_CIP_sem"),
    ("pair_AGG", "AGG", "", "pair_AGG_sem"),
]
DEFAULT_RANK = "sigma_Einstein_mS_cm"
#: Columns that mean something only when the MSD was diffusive over its fit window (``transport_diffusive``).
MSD_COLUMNS = {"sigma_NE_mS_cm", "sigma_Einstein_mS_cm", "t_Li_NE", "t_Li_Onsager", "D_Li"}
NOT_DIFFUSIVE_MARK = " †"
_FIGURES = ("density", "rdf", "msd", "green_kubo")


def _fmt(value: Any, sem: Any = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if sem is None or not isinstance(sem, (int, float)) or not math.isfinite(sem) or sem <= 0:
        return f"{value:.4g}"
    digits = max(0, 1 - int(math.floor(math.log10(abs(sem))))) if sem > 0 else 3
    digits = min(digits, 6)
    return f"{value:.{digits}f} ± {sem:.{digits}f}"


def load_rows(database: str) -> list[dict[str, Any]]:
    """All formulation rows as dicts (key-value pairs + data + id)."""
    import ase.db

    if "://" not in str(database) and not Path(database).is_file():
        raise InputError(f"database {str(database)!r} not found; give the --db file of a screen")
    db = ase.db.connect(str(database))
    rows = []
    for row in db.select():
        d = dict(row.key_value_pairs)
        d["_id"] = row.id
        d["_data"] = dict(row.data) if row.get("data") else {}
        rows.append(d)
    return rows


def not_diffusive(row: dict[str, Any]) -> bool:
    """The row's transport replicas never reached the diffusive regime (their MSD-based numbers are not estimates)."""
    return row.get("transport_diffusive") is not None and not row.get("transport_diffusive")


def _cell(row: dict[str, Any], key: str, sem: str) -> str:
    text = _fmt(row.get(key), row.get(sem))
    return text + NOT_DIFFUSIVE_MARK if key in MSD_COLUMNS and text != "–" and not_diffusive(row) else text


def ranked(rows: list[dict[str, Any]], rank_by: str = DEFAULT_RANK) -> list[dict[str, Any]]:
    """Finished rows by ``rank_by`` descending (missing values last, and so are MSD-based values of rows that were
    not diffusive), then failed rows."""
    done = [r for r in rows if r.get("status") == "done"]
    failed = [r for r in rows if r.get("status") != "done"]

    def value(r):
        return None if rank_by in MSD_COLUMNS and not_diffusive(r) else r.get(rank_by)

    done.sort(key=lambda r: (value(r) is None, -(value(r) or 0.0)))
    return done + sorted(failed, key=lambda r: r.get("formulation", ""))


def results_table(database: str, rank_by: str = DEFAULT_RANK) -> str:
    """A plain-text ranked table (what ``mlmd screen`` and the demo print)."""
    rows = ranked(load_rows(database), rank_by)
    cols = [("formulation", lambda r: r.get("formulation", "?"))]
    for key, head, unit, sem in COLUMNS[:6]:
        cols.append((f"{head} ({unit})" if unit else head, lambda r, k=key, s=sem: _cell(r, k, s)))
    cols.append(("status", lambda r: r.get("status", "?") if r.get("status") == "done"
                 else f"failed at {r.get('stage', '?')}: {r.get('error', '')[:60]}"))
    table = [[c[0] for c in cols]] + [[str(fn(r)) for _, fn in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(not_diffusive(r) for r in rows):
        lines.append(_DEFINITIONS[-1])
    return "\n".join(lines)


def _bars(rows: list[dict[str, Any]], path: Path) -> Path | None:
    from matplotlib.figure import Figure

    from workflows.analysis.plots import save_figure

    done = [r for r in rows if r.get("status") == "done"]
    if not done:
        return None
    panels = [c for c in COLUMNS[:6] if any(r.get(c[0]) is not None for r in done)]
    if not panels:
        return None
    fig = Figure(figsize=(3.2 * len(panels), 3.6), layout="constrained")
    names = [r.get("formulation", "?") for r in done]
    for k, (key, head, unit, sem) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        vals = [r.get(key) if r.get(key) is not None else math.nan for r in done]
        errs = [r.get(sem) if r.get(sem) is not None else 0.0 for r in done]
        ax.bar(range(len(done)), vals, yerr=errs, capsize=3, color=[f"C{i % 10}" for i in range(len(done))])
        ax.set_xticks(range(len(done)), names, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{head}" + (f" ({unit})" if unit else ""), fontsize=9)
    return save_figure(fig, path)


def write_report(database: str, out_dir: str | Path | None = None, rank_by: str = DEFAULT_RANK,
                 title: str = "Electrolyte screening report") -> dict[str, Path]:
    """Write report.html + report.md (+ figures/) for the database; returns their paths."""
    rows = load_rows(database)
    if out_dir is None:
        base = Path(str(database)) if "://" not in str(database) else Path("screen")
        out_dir = base.with_name(base.stem + "_report")
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    order = ranked(rows, rank_by)
    bars = _bars(order, fig_dir / "properties.png")
    per: dict[str, dict[str, str]] = {}
    for r in order:
        figs = (r["_data"].get("figures") or {}) if isinstance(r.get("_data"), dict) else {}
        for name in _FIGURES:
            src = figs.get(name)
            if src and Path(src).is_file():
                dst = fig_dir / f"{_slug(r.get('formulation', 'row'))}-{name}.png"
                shutil.copyfile(src, dst)
                per.setdefault(r["formulation"], {})[name] = f"figures/{dst.name}"
    md = _markdown(order, rank_by, title, bars is not None, per, database)
    page = _html(order, rank_by, title, bars is not None, per, database)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", page)
    return {"html": out / "report.html", "markdown": out / "report.md", "figures": fig_dir}


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))


def _epistemic_line(r: dict[str, Any]) -> str:
    if r.get("epistemic_forces_eV_A") is None:
        return ""
    parts = [f"force spread {_fmt(r.get('epistemic_forces_eV_A'))} eV/Å"]
    if r.get("epistemic_pressure_bar") is not None:
        parts.append(f"pressure spread {_fmt(r.get('epistemic_pressure_bar'))} bar")
    if r.get("epistemic_density_g_cm3") is not None:
        parts.append(f"density ± {_fmt(r.get('epistemic_density_g_cm3'))} g/cm³ (first-order)")
    return "Model epistemic spread (posterior/ensemble): " + ", ".join(parts)


def _provenance_line(r: dict[str, Any]) -> str:
    sha = str(r.get("model_sha256", ""))[:12]
    return (f"model {r.get('model', '?')} (sha256 {sha}…), mlmd {r.get('mlmd_version', '?')}, engine "
            f"{r.get('engine', '?')}, seed {r.get('seed', '?')}, {r.get('n_replicas', '?')} replicas × "
            f"{r.get('replica_steps', '?')} steps of {r.get('timestep_fs', '?')} fs, {r.get('n_atoms_box', '?')} atoms"
            + (f", calculator {r['calculator_factory']}" if r.get("calculator_factory") else ""))


_DEFINITIONS = [
    "Uncertainties are one standard error: block averaging (density, solvation), replica scatter or per-molecule "
    "scatter (diffusion), bootstrap over replicas (viscosity).",
    "σ Nernst–Einstein from self-diffusion (no ion correlations); σ collective from the MSD of the total charge "
    "displacement (Einstein).",
    "t(Li⁺) NE = N q² D_Li / Σ N q² D (uncorrelated ions); t(Li⁺) Onsager = (σ_Li,Li + σ_Li,anion)/σ in the "
    "barycentric frame. Neither is the concentrated-solution t+ of electrochemical measurements.",
    "D are Yeh–Hummer corrected with the computed viscosity. Ion pairing: free = no anion in the Li⁺ first shell, "
    "CIP = one anion not shared, AGG = otherwise.",
    "The model's epistemic spread is reported only for models that carry posterior samples.",
    f"{NOT_DIFFUSIVE_MARK.strip()} The mean squared displacement was not diffusive over its fit window (log-log slope "
    "more than 0.2 from 1): the transport replicas are too short, so σ, t(Li⁺) and D are not estimates and do not rank.",
]


def _markdown(rows, rank_by, title, bars, per, database) -> str:
    lines = [f"# {title}", "", f"Database `{database}`, {len(rows)} formulation(s), generated "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}. Ranked by `{rank_by}` (descending).", ""]
    head = ["#", "formulation"] + [f"{h} ({u})" if u else h for _, h, u, _ in COLUMNS] + ["status"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for k, r in enumerate(rows, 1):
        cells = [str(k), str(r.get("formulation", "?"))] + [_cell(r, key, sem) for key, _, _, sem in COLUMNS]
        cells.append(r.get("status", "?") if r.get("status") == "done" else
                     f"failed at {r.get('stage', '?')}: {str(r.get('error', '')).replace('|', '/')}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *[f"- {d}" for d in _DEFINITIONS], ""]
    if bars:
        lines += ["![properties](figures/properties.png)", ""]
    for r in rows:
        name = r.get("formulation", "?")
        lines += [f"## {name}", "", f"{r.get('composition', '')}; T = {r.get('temperature_K', '?')} K; "
                  f"molarity reached {_fmt(r.get('molarity_M'))} mol/L", "", _provenance_line(r), ""]
        if _epistemic_line(r):
            lines += [_epistemic_line(r), ""]
        for note in (r["_data"].get("notes") or []):
            lines.append(f"- note: {note}")
        for fig, rel in per.get(name, {}).items():
            lines.append(f"![{name} {fig}]({rel})")
        lines.append("")
    return "\n".join(lines)


def _html(rows, rank_by, title, bars, per, database) -> str:
    e = html.escape
    head = ["#", "formulation"] + [f"{h} ({u})" if u else h for _, h, u, _ in COLUMNS] + ["status"]
    trs = []
    for k, r in enumerate(rows, 1):
        ok = r.get("status") == "done"
        cells = [str(k), str(r.get("formulation", "?"))] + [_cell(r, key, sem) for key, _, _, sem in COLUMNS]
        cells.append("done" if ok else f"failed at {r.get('stage', '?')}: {r.get('error', '')}")
        cls = "" if ok else ' class="failed"'
        trs.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    sections = []
    for r in rows:
        name = str(r.get("formulation", "?"))
        notes = "".join(f"<li>{e(str(n))}</li>" for n in (r["_data"].get("notes") or []))
        imgs = "".join(f'<figure><img src="{e(rel)}" alt="{e(name)} {e(fig)}"><figcaption>{e(fig)}</figcaption></figure>'
                       for fig, rel in per.get(name, {}).items())
        sections.append(
            f"<section><h2>{e(name)}</h2><p>{e(str(r.get('composition', '')))}; T = {e(str(r.get('temperature_K')))} K; "
            f"molarity reached {e(_fmt(r.get('molarity_M')))} mol/L</p><p class=\"prov\">{e(_provenance_line(r))}</p>"
            + (f"<p>{e(_epistemic_line(r))}</p>" if _epistemic_line(r) else "")
            + (f"<ul>{notes}</ul>" if notes else "") + f"<div class=\"figs\">{imgs}</div></section>")
    defs = "".join(f"<li>{e(d)}</li>" for d in _DEFINITIONS)
    bars_html = '<img class="bars" src="figures/properties.png" alt="properties with error bars">' if bars else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: right; }}
td:nth-child(2), td:last-child, th {{ text-align: left; }}
tr.failed td {{ background: #fde8e8; }}
.prov {{ font-size: 0.8em; color: #555; }}
.figs {{ display: flex; flex-wrap: wrap; gap: 0.5em; }}
figure {{ margin: 0; }} figure img {{ width: 420px; }} img.bars {{ max-width: 100%; }}
</style></head><body>
<h1>{e(title)}</h1>
<p>Database <code>{e(str(database))}</code>, {len(rows)} formulation(s), generated {e(time.strftime('%Y-%m-%d %H:%M:%S'))}.
Ranked by <code>{e(rank_by)}</code> (descending).</p>
<table><thead><tr>{''.join(f'<th>{e(h)}</th>' for h in head)}</tr></thead><tbody>
{''.join(trs)}
</tbody></table>
<ul>{defs}</ul>
{bars_html}
{''.join(sections)}
</body></html>
"""
