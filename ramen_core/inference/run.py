"""The window engine: read windows, run a batched model, blend, and stream rows to a sink.

The engine has no embedding-specific code. It takes a :class:`WindowTask` (read a batch of
windows, run the model on it) from a :class:`TaskFactory`, and a plan of windows and tiles
(:mod:`ramen_core.inference.tiling`). ``ramen embed`` plugs in an encoder that returns
feature maps; ``ramen segment`` plugs in an encoder with a head that returns class
probabilities. Both get the same guarantees:

- windows are processed and batched in a fixed order (tile by tile, row-major, batches of
  consecutive windows of one tile), so results are reproducible;
- overlapping outputs are blended with smooth weights (:mod:`.blending`), and rows are
  written as soon as no later window touches them, so memory grows with the tile width;
- a progress record (:mod:`.progress`) lets ``resume=True`` continue a killed run and give
  the same bytes as an uninterrupted one;
- with a Dask scheduler address, tiles run on the cluster's workers, each of which builds
  the task (loads the model) once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ramen_core.errors import InputError
from ramen_core.inference.blending import StripBlender, window_weights
from ramen_core.inference.progress import Checkpointer, ProgressCallback, ProgressRecord, ProgressUpdate
from ramen_core.inference.tiling import Tile, Window, WindowPlan
from ramen_core.inference.writer import OutputSink, output_errors

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """The model's output for a batch of windows.

    Attributes:
        values: [B, C, h, w] float32 outputs on the target grid of each window.
        valid: [B, G, h, w] bool, False where a group of channels has no valid output;
            a window with no valid pixel is not blended at all.
        extras: one dictionary of per-window results (such as a pooled vector) per window,
            or None where there is none.
        tokens: tokens the model encoded for this batch, for throughput reports.
    """

    values: np.ndarray
    valid: np.ndarray
    extras: list[dict[str, np.ndarray] | None] = field(default_factory=list)
    tokens: int = 0


class WindowTask(Protocol):
    """A reader and a model for the windows of one plan.

    Attributes:
        channels: output channels C.
        groups: validity groups G (C is a multiple of G).
    """

    channels: int
    groups: int

    def read(self, windows: Sequence[Window]) -> Any:
        """Read the inputs of a batch of windows (runs in a background thread)."""

    def run(self, windows: Sequence[Window], inputs: Any) -> BatchResult:
        """Run the model on what :meth:`read` returned."""


class TaskFactory(Protocol):
    """Builds a :class:`WindowTask`; it is pickled and sent to Dask workers.

    Attributes:
        key: identity of the task; a worker builds each key once and reuses the task.
    """

    key: str

    def __call__(self) -> WindowTask: ...


# Tasks built in this process, by factory key: a Dask worker loads each model once.
_TASKS: dict[str, WindowTask] = {}
_TASK_BUILDS: dict[str, int] = {}


def cached_task(factory: TaskFactory) -> WindowTask:
    """Build the factory's task once per process and return the cached one afterwards.

    Only the task of the latest key is kept, so a long-lived worker does not accumulate
    the models of earlier runs.
    """
    task = _TASKS.get(factory.key)
    if task is None:
        logger.info("building task %s in process %d", factory.key[:12], os.getpid())
        _TASKS.clear()
        task = factory()
        _TASKS[factory.key] = task
        _TASK_BUILDS[factory.key] = _TASK_BUILDS.get(factory.key, 0) + 1
    return task


def task_builds(key: str) -> int:
    """Return how many times this process built the task of ``key`` (1 once it is cached)."""
    return _TASK_BUILDS.get(key, 0)


def _batches(windows: Sequence[Window], start: int, batch_size: int) -> Iterator[tuple[int, list[Window]]]:
    for offset in range(start, len(windows), batch_size):
        yield offset, list(windows[offset : offset + batch_size])


@dataclass
class TileRun:
    """Counters of one tile's run, for progress and the final report."""

    windows_done: int = 0
    tokens: int = 0
    model_seconds: float = 0.0
    read_seconds: float = 0.0


def run_tile(
    task: WindowTask,
    plan: WindowPlan,
    tile: Tile,
    *,
    batch_size: int,
    write: Callable[[int, int, np.ndarray], None],
    start_window: int = 0,
    blend_state: dict[str, np.ndarray] | None = None,
    after_batch: Callable[[int, StripBlender, list[tuple[Window, dict[str, np.ndarray]]], BatchResult], None] | None = None,
    prefetch: bool = True,
) -> TileRun:
    """Blend every window that touches ``tile`` and write the tile's rows as they finish.

    Args:
        task: reader and model.
        plan: the window plan.
        tile: the tile to produce.
        batch_size: windows per model call; batches never span two tiles.
        write: called with (grid row, grid column, [C, rows, tile width] float32) for each
            band of finished rows, top to bottom; NaN marks nodata.
        start_window: windows of this tile already blended (a multiple of ``batch_size``),
            when resuming with ``blend_state``.
        blend_state: the blender state saved with the progress record.
        after_batch: called after each batch with the tile's windows done so far, the
            blender, the per-window extras that this tile owns, and the batch result.
        prefetch: read the next batch in a background thread while the model runs.
    """
    windows = plan.windows_for(tile)
    if start_window % batch_size and start_window != len(windows):
        raise InputError(f"cannot resume tile {tile.index} at window {start_window}: not a batch boundary")
    blender = StripBlender(task.channels, task.groups, tile.row, tile.col, tile.height, tile.width)
    if blend_state is not None:
        blender.load_state(blend_state)
    weights = window_weights(*plan.window_shape, plan.overlap)
    counters = TileRun(windows_done=start_window)
    batches = list(_batches(windows, start_window, batch_size))

    def timed_read(batch: list[Window]) -> tuple[Any, float]:
        started = time.perf_counter()
        inputs = task.read(batch)
        return inputs, time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ramen-read") as pool:
        pending = pool.submit(timed_read, batches[0][1]) if batches and prefetch else None
        for position, (offset, batch) in enumerate(batches):
            if prefetch:
                assert pending is not None
                inputs, read_seconds = pending.result()
                if position + 1 < len(batches):
                    pending = pool.submit(timed_read, batches[position + 1][1])
            else:
                inputs, read_seconds = timed_read(batch)
            counters.read_seconds += read_seconds

            started = time.perf_counter()
            result = task.run(batch, inputs)
            counters.model_seconds += time.perf_counter() - started
            counters.tokens += result.tokens

            owned: list[tuple[Window, dict[str, np.ndarray]]] = []
            for index, window in enumerate(batch):
                valid = result.valid[index]
                if valid.any():
                    blender.add(window.row, window.col, result.values[index], weights, valid)
                extras = result.extras[index] if index < len(result.extras) else None
                if extras is not None and plan.owner_tile(window).index == tile.index:
                    owned.append((window, extras))

            done = offset + len(batch)
            counters.windows_done = done
            next_row = windows[done].row if done < len(windows) else tile.row_end
            row, values = blender.pop(max(next_row, tile.row))
            if values.shape[1]:
                write(row, tile.col, values)
            if after_batch is not None:
                after_batch(done, blender, owned, result)
    return counters


@dataclass
class RunReport:
    """Counters and timings of a whole run.

    Attributes:
        windows: windows processed by this call (tiles done before a resume excluded).
        tokens: tokens encoded by this call.
        model_seconds: time spent in the model (local runs).
        read_seconds: time spent reading inputs, partly hidden by prefetching (local runs).
        total_seconds: wall-clock time of the run, finalisation included.
        workers: per Dask worker, how many times it built the task (expected: 1).
        resumed_tiles: tiles that were already finished when the run started.
        valid_pixels: output pixels written with at least one valid channel by this call.
        resumed: whether the run continued from a progress record.
    """

    windows: int = 0
    tokens: int = 0
    model_seconds: float = 0.0
    read_seconds: float = 0.0
    total_seconds: float = 0.0
    workers: dict[str, int] = field(default_factory=dict)
    resumed_tiles: int = 0
    valid_pixels: int = 0
    resumed: bool = False


class ExtrasStore:
    """Per-window results (such as pooled vectors) kept in part files of the work folder."""

    def __init__(self, work_dir: Path) -> None:
        self.folder = work_dir / "extras"
        self.pending: list[tuple[Window, dict[str, np.ndarray]]] = []

    def add(self, owned: list[tuple[Window, dict[str, np.ndarray]]]) -> None:
        self.pending.extend(owned)

    def flush(self, part: int) -> bool:
        """Write the pending results as part ``part``; returns whether a file was written."""
        if not self.pending:
            return False
        with output_errors(self.folder, "write per-window results to"):
            self.folder.mkdir(parents=True, exist_ok=True)
            keys = sorted(self.pending[0][1])
            arrays = {key: np.stack([extras[key] for _, extras in self.pending]) for key in keys}
            arrays["window"] = np.array([window.index for window, _ in self.pending], dtype=np.int64)
            temporary = self.folder / f"part-{part:06d}.tmp.npz"
            np.savez(temporary, **arrays)
            temporary.replace(self.folder / f"part-{part:06d}.npz")
        self.pending = []
        return True

    def discard_after(self, parts: int) -> None:
        """Delete part files beyond the first ``parts`` (written after the last progress record)."""
        if not self.folder.exists():
            return
        for path in self.folder.glob("part-*.npz"):
            number = path.name.split("-")[1].split(".")[0]
            if not number.isdigit() or int(number) >= parts:
                path.unlink()

    def load(self) -> dict[str, np.ndarray]:
        """Concatenate every part, sorted by window index and without repeats.

        NOTE: this holds every window's results in memory at once (for pooled vectors, D
        float32 values per window: about 3 KB at ViT-Base width), so it grows with the area.
        """
        if not self.folder.exists():
            return {}
        merged: dict[str, list[np.ndarray]] = {}
        for path in sorted(self.folder.glob("part-*.npz")):
            with np.load(path) as archive:
                for key in archive.files:
                    merged.setdefault(key, []).append(archive[key])
        if not merged:
            return {}
        arrays = {key: np.concatenate(values) for key, values in merged.items()}
        _, first = np.unique(arrays["window"], return_index=True)
        return {key: value[first] for key, value in arrays.items()}


def count_windows(plan: WindowPlan, tiles: Sequence[Tile]) -> int:
    """Windows processed for ``tiles`` (a window touching several tiles counts once per tile)."""
    return sum(len(plan.windows_for(tile)) for tile in tiles)


def run_plan(
    factory: TaskFactory,
    plan: WindowPlan,
    sink: OutputSink,
    work_dir: Path,
    output: Path,
    *,
    fingerprint: str,
    batch_size: int = 8,
    resume: bool = False,
    checkpoint_interval_s: float = 30.0,
    progress: ProgressCallback | None = None,
    scheduler: str | None = None,
    extras: ExtrasStore | None = None,
    finalize: bool = True,
) -> RunReport:
    """Run every tile of ``plan`` and write the output through ``sink``.

    Args:
        factory: builds the reader and model (once per process).
        plan: windows and tiles.
        sink: where rows go (one COG, or a folder of tile COGs).
        work_dir: the run's work folder, holding raw files and the progress record.
        output: final output path, written by ``sink.finalize`` at the end.
        fingerprint: identity of the run; a resume with another one is rejected.
        batch_size: windows per model call.
        resume: continue from the progress record in ``work_dir`` if there is one.
        checkpoint_interval_s: seconds between progress records (0: after every batch).
        progress: callback for progress updates.
        scheduler: address of a Dask scheduler (``tcp://host:port``) to run tiles on.
        extras: store for per-window results, or None to drop them.
        finalize: call ``sink.finalize`` (False lets the caller check the raw output first).
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    started = time.perf_counter()
    with output_errors(work_dir, "create the work folder"):
        work_dir.mkdir(parents=True, exist_ok=True)
    record = ProgressRecord.load(work_dir, fingerprint) if resume else None
    blend_state = None
    if record is None:
        record = ProgressRecord(fingerprint=fingerprint)
    else:
        blend_state = ProgressRecord.load_blend_state(work_dir) if record.current_tile is not None else None
        logger.info(
            "resuming: %d of %d tiles finished, tile %s at window %d",
            len(record.tiles_done), len(plan.tiles), record.current_tile, record.windows_done_in_tile,
        )
    if extras is not None:
        extras.discard_after(record.extras_parts)
    resumed = bool(record.tiles_done or record.current_tile is not None)
    report = RunReport(resumed_tiles=len(record.tiles_done), resumed=resumed)
    sink.open(resume=resumed)

    remaining = [tile for tile in plan.tiles if tile.index not in set(record.tiles_done)]
    total = count_windows(plan, plan.tiles)
    already = total - count_windows(plan, remaining)
    if record.current_tile is not None:
        already += record.windows_done_in_tile

    def report_progress(done: int, stage: str = "windows") -> None:
        if progress is not None:
            progress(ProgressUpdate(done, total, report.tokens, time.perf_counter() - started, stage))

    report_progress(already)
    try:
        if scheduler:
            _run_on_dask(factory, plan, sink, remaining, record, work_dir, scheduler, batch_size,
                         extras, report, already, report_progress)
        else:
            _run_locally(factory, plan, sink, remaining, record, blend_state, work_dir, batch_size,
                         checkpoint_interval_s, extras, report, already, report_progress)
        sink.flush()
        if finalize:
            report_progress(total, "writing")
            sink.finalize(output, plan.tiles)
    finally:
        sink.close()
    report.total_seconds = time.perf_counter() - started
    return report


def _save_record(
    record: ProgressRecord,
    work_dir: Path,
    sink: OutputSink,
    extras: ExtrasStore | None,
    blend_state: dict[str, np.ndarray] | None,
) -> None:
    sink.flush()
    if extras is not None and extras.flush(record.extras_parts):
        record.extras_parts += 1
    record.save(work_dir, blend_state)


def _run_locally(
    factory: TaskFactory,
    plan: WindowPlan,
    sink: OutputSink,
    tiles: Sequence[Tile],
    record: ProgressRecord,
    blend_state: dict[str, np.ndarray] | None,
    work_dir: Path,
    batch_size: int,
    checkpoint_interval_s: float,
    extras: ExtrasStore | None,
    report: RunReport,
    already: int,
    report_progress: Callable[[int], None],
) -> None:
    task = factory()  # built here, not cached: a notebook that embeds twice should not keep both models
    checkpointer = Checkpointer(checkpoint_interval_s)
    done_before = already
    for tile in tiles:
        start = 0
        state = None
        if record.current_tile == tile.index:
            start, state = record.windows_done_in_tile, blend_state
            done_before -= start
        record.current_tile = tile.index
        tile_windows = len(plan.windows_for(tile))
        logger.debug("tile %d of %d (%d x %d pixels at row %d, column %d)", tile.index + 1, len(plan.tiles),
                     tile.width, tile.height, tile.row, tile.col)

        def write(row: int, col: int, values: np.ndarray, tile: Tile = tile) -> None:
            report.valid_pixels += int(np.isfinite(values).any(axis=0).sum())
            sink.write(tile, row, col, values)

        def after_batch(done: int, blender: StripBlender, owned: list, result: BatchResult, tile_windows: int = tile_windows) -> None:
            report.windows += result.values.shape[0]
            report.tokens += result.tokens
            if extras is not None:
                extras.add(owned)
            report_progress(done_before + done)
            if checkpointer.due() and done < tile_windows:
                record.windows_done_in_tile = done
                _save_record(record, work_dir, sink, extras, blender.state())
                checkpointer.done()

        counters = run_tile(task, plan, tile, batch_size=batch_size, write=write, start_window=start,
                            blend_state=state, after_batch=after_batch)
        report.model_seconds += counters.model_seconds
        report.read_seconds += counters.read_seconds
        done_before += counters.windows_done
        sink.tile_done(tile)
        record.tiles_done.append(tile.index)
        record.current_tile = None
        record.windows_done_in_tile = 0
        _save_record(record, work_dir, sink, extras, None)
        checkpointer.done()


@dataclass
class TileResult:
    """Result that a Dask worker returns for one tile."""

    tile: Tile
    values: np.ndarray
    extras: list[tuple[Window, dict[str, np.ndarray]]]
    windows: int
    tokens: int
    worker_pid: int
    builds: int


def produce_tile(factory: TaskFactory, plan: WindowPlan, tile: Tile, batch_size: int) -> TileResult:
    """Produce one whole tile in this process (the function Dask workers run)."""
    task = cached_task(factory)
    values = np.full((task.channels, tile.height, tile.width), np.nan, dtype=np.float32)
    owned_all: list[tuple[Window, dict[str, np.ndarray]]] = []
    tokens = 0

    def write(row: int, col: int, block: np.ndarray) -> None:
        values[:, row - tile.row : row - tile.row + block.shape[1], col - tile.col : col - tile.col + block.shape[2]] = block

    def after_batch(done: int, blender: StripBlender, owned: list, result: BatchResult) -> None:
        nonlocal tokens
        owned_all.extend(owned)
        tokens += result.tokens

    counters = run_tile(task, plan, tile, batch_size=batch_size, write=write, after_batch=after_batch)
    return TileResult(tile, values, owned_all, counters.windows_done, tokens, os.getpid(), task_builds(factory.key))


def _run_on_dask(
    factory: TaskFactory,
    plan: WindowPlan,
    sink: OutputSink,
    tiles: Sequence[Tile],
    record: ProgressRecord,
    work_dir: Path,
    scheduler: str,
    batch_size: int,
    extras: ExtrasStore | None,
    report: RunReport,
    already: int,
    report_progress: Callable[[int], None],
) -> None:
    from distributed import Client, as_completed

    try:
        # The connection timeout is Dask's setting distributed.comm.timeouts.connect (30 s by default).
        client = Client(scheduler)
    except (OSError, TimeoutError, ValueError) as error:
        # Dask raises ValueError for an address it cannot parse, such as one without a port.
        raise InputError(
            f"cannot connect to the Dask scheduler {scheduler!r} ({error}); check the address, such as "
            f"tcp://127.0.0.1:8786"
        ) from None
    done = already
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        logger.info("running %d tiles on %d Dask workers at %s", len(tiles), workers, scheduler)
        # Keep a few tiles per worker in flight, so results never pile up on the client.
        queue = list(tiles)
        in_flight = as_completed()
        for _ in range(min(len(queue), 2 * workers)):
            tile = queue.pop(0)
            in_flight.add(client.submit(produce_tile, factory, plan, tile, batch_size, pure=False))
        for future in in_flight:
            result: TileResult = future.result()
            future.release()
            if queue:
                tile = queue.pop(0)
                in_flight.add(client.submit(produce_tile, factory, plan, tile, batch_size, pure=False))
            report.valid_pixels += int(np.isfinite(result.values).any(axis=0).sum())
            sink.write(result.tile, result.tile.row, result.tile.col, result.values)
            sink.tile_done(result.tile)
            if extras is not None:
                extras.add(result.extras)
            record.tiles_done.append(result.tile.index)
            _save_record(record, work_dir, sink, extras, None)
            report.windows += result.windows
            report.tokens += result.tokens
            report.workers[str(result.worker_pid)] = result.builds
            done += result.windows
            report_progress(done)
    finally:
        client.close()
