"""The ``ramen`` command: one Typer sub-app or command per module of ``ramen_cli``."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from ramen_core import __version__
from ramen_core.errors import RamenError

app = typer.Typer(
    name="ramen",
    help="Run the RAMEN Earth-observation encoder: search scenes, embed areas at any GSD, "
    "segment scenes and train models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

err_console = Console(stderr=True)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ramen {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only log errors."),
) -> None:
    """Set up logging for every command."""
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    from rich.logging import RichHandler

    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )


def _register_commands() -> None:
    """Import the command modules, each of which adds itself to ``app``."""
    import importlib
    import pkgutil

    import ramen_cli

    for module in pkgutil.iter_modules(ramen_cli.__path__):
        if module.name.startswith("cmd_"):
            importlib.import_module(f"ramen_cli.{module.name}")


def main() -> None:
    """Run the command line, printing ramen errors without a traceback."""
    _register_commands()
    try:
        app()
    except RamenError as error:
        from ramen_cli.common import print_error

        print_error(error)
        sys.exit(1)
