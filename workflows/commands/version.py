"""``mlmd version``."""

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def version() -> None:
        """Print the mlmd version."""
        from importlib.metadata import version as _version

        typer.echo(_version("mlmd"))
