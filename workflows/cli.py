"""The ``mlmd`` command: a thin typer shell over typed configs and library functions.

Subcommands live in ``workflows/commands/<name>.py`` and each exposes ``register(app)``. User mistakes
(:class:`mlmd.errors.MLMDError`) become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from mlmd.errors import MLMDError

from workflows import commands as _commands


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="mlmd",
        help="Molecular and materials simulation with machine-learned potentials.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root() -> None:
        """Molecular and materials simulation with machine-learned potentials."""

    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{_commands.__name__}.{info.name}")
        module.register(app)
    return app


def main(argv: list[str] | None = None) -> int:
    app = build_app()
    try:
        app(args=argv, standalone_mode=False)
    except MLMDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
