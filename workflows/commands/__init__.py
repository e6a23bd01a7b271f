"""CLI subcommands. Each module here defines ``register(app: typer.Typer) -> None``; ``workflows.cli`` calls them all."""
