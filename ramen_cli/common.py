"""Options and helpers shared by the commands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape

from ramen_core.errors import RamenError

F = TypeVar("F", bound=Callable[..., Any])


def print_error(error: BaseException) -> None:
    """Print an error message on stderr, prefixed with a red ``Error:``.

    The message is escaped, because messages contain square brackets (``[[bands]]``,
    ``[B, T, C, H, W]``) that rich would otherwise read as markup and drop.
    """
    from ramen_cli.app import err_console

    err_console.print(f"[bold red]Error:[/] {escape(str(error))}", highlight=False)


def handle_errors(func: F) -> F:
    """Turn a :class:`RamenError` into a one-line message and exit code 1, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RamenError as error:
            print_error(error)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]
