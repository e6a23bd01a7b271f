"""``mlmd report``: HTML + Markdown report of a screening database."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        db: str = typer.Argument(..., help="Screening database (SQLite file or URL)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: <db>_report beside the database)."),
        rank_by: str = typer.Option("sigma_Einstein_mS_cm", "--rank-by", help="Property key to rank by (descending)."),
    ) -> None:
        """Write report.html and report.md with a ranked table and figures."""
        from workflows.screening.report import results_table, write_report

        paths = write_report(db, out, rank_by=rank_by)
        typer.echo(results_table(db, rank_by))
        typer.echo(f"report: {paths['html']} (and {paths['markdown'].name})")
