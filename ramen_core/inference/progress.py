"""Progress reports for a caller's progress bar, and progress records for ``--resume``.

A run reports :class:`ProgressUpdate` values to an optional callback after each batch; the
library never prints. A run also keeps a :class:`ProgressRecord` in its work folder:
``state.json`` names the run (a fingerprint of everything that decides the output), the
tiles that are finished, and, for the tile in progress, how many of its windows are done.
The blending sums of the rows not yet written sit next to it in ``blend.npz``. The record
is replaced atomically, and only after the rows it counts as written are on disk, so a run
killed at any moment resumes from its last record and gives the same bytes as a run that
was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ramen_core.errors import InputError
from ramen_core.inference.writer import output_errors, write_json_atomic

logger = logging.getLogger(__name__)

RECORD_VERSION = 1


@dataclass(frozen=True)
class ProgressUpdate:
    """Where a run stands, sent to the ``progress`` callback after each batch.

    Attributes:
        windows_done: windows processed so far, including those done before a resume.
        windows_total: windows of the whole run (windows that several tiles share count once
            per tile).
        tokens_done: tokens encoded in this process so far.
        elapsed_s: seconds since this process started the run.
        stage: ``statistics``, ``windows`` or ``writing``.
    """

    windows_done: int
    windows_total: int
    tokens_done: int
    elapsed_s: float
    stage: str = "windows"

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_done / self.elapsed_s if self.elapsed_s > 0 else 0.0


ProgressCallback = Callable[[ProgressUpdate], None]


def fingerprint_of(description: Any) -> str:
    """SHA-256 of a JSON description of a run (keys sorted), the identity a resume checks."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class ProgressRecord:
    """The resumable state of a run, stored in ``state.json`` of its work folder.

    Attributes:
        fingerprint: identity of the run's inputs, options, model and plan.
        tiles_done: indices of finished tiles.
        current_tile: index of the tile in progress, or None.
        windows_done_in_tile: windows of the current tile already blended.
        extras_parts: number of per-window result files written (such as pooled vectors).
    """

    fingerprint: str
    tiles_done: list[int] = field(default_factory=list)
    current_tile: int | None = None
    windows_done_in_tile: int = 0
    extras_parts: int = 0

    @staticmethod
    def path_in(work_dir: Path) -> Path:
        return work_dir / "state.json"

    def save(self, work_dir: Path, blend_state: dict[str, np.ndarray] | None = None) -> None:
        """Store the record, and the blending sums of the current tile, atomically."""
        if blend_state is not None:
            blend_path = work_dir / "blend.npz"
            temporary = work_dir / "blend.tmp.npz"
            with output_errors(blend_path):
                np.savez(temporary, **blend_state)
                temporary.replace(blend_path)
        write_json_atomic(
            self.path_in(work_dir),
            {
                "version": RECORD_VERSION,
                "fingerprint": self.fingerprint,
                "tiles_done": sorted(self.tiles_done),
                "current_tile": self.current_tile,
                "windows_done_in_tile": self.windows_done_in_tile,
                "extras_parts": self.extras_parts,
            },
        )

    @classmethod
    def load(cls, work_dir: Path, fingerprint: str) -> ProgressRecord | None:
        """Read the record of an interrupted run, or None when there is none.

        Raises:
            InputError: the record belongs to a run with other inputs or options.
        """
        path = cls.path_in(work_dir)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            logger.warning("ignoring unreadable progress record %s (%s); starting again", path, error)
            return None
        if data.get("version") != RECORD_VERSION or data.get("fingerprint") != fingerprint:
            raise InputError(
                f"the interrupted run in {str(work_dir)!r} used other inputs, options or weights, so it "
                f"cannot be resumed with these; rerun the same command, or drop --resume to start again"
            )
        return cls(
            fingerprint=fingerprint,
            tiles_done=[int(index) for index in data.get("tiles_done", [])],
            current_tile=data.get("current_tile"),
            windows_done_in_tile=int(data.get("windows_done_in_tile", 0)),
            extras_parts=int(data.get("extras_parts", 0)),
        )

    @staticmethod
    def load_blend_state(work_dir: Path) -> dict[str, np.ndarray] | None:
        path = work_dir / "blend.npz"
        if not path.exists():
            return None
        with np.load(path) as archive:
            return {key: archive[key] for key in archive.files}


class Checkpointer:
    """Decides when a progress record is due: every ``interval_s`` seconds, and at tile ends."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = float(interval_s)
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.interval_s

    def done(self) -> None:
        self._last = time.monotonic()
