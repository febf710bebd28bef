"""Atomic file output: write to a temporary file in the target folder, then rename it.

A reader therefore sees either the previous file or the complete new one, never a partial
write, and an interrupted run leaves no output behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ramen_core.errors import OutputError


def default_mode(directory: bool = False) -> int:
    """Return the permission bits a new file (or folder) gets under the process umask.

    ``tempfile`` creates files with mode 0600 and folders with 0700; outputs renamed from
    them get these bits instead, like files written with ``open``.
    """
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp", what: str = "output") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` when the block succeeds.

    The temporary file is removed if the block raises. ``what`` names the output in errors.

    Raises:
        OutputError: the folder cannot be created or the temporary file cannot be made or renamed.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=folder)
        os.close(handle)
    except OSError as error:
        raise OutputError(f"cannot write {what} {str(path)!r}: {error}") from error
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, default_mode())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OutputError):
            raise
        raise OutputError(f"cannot write {what} {str(path)!r}: {error}") from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
