"""``ramen weights``: import official checkpoints, inspect weight files, fetch hub files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ramen_cli.app import app
from ramen_cli.common import handle_errors
from ramen_core.errors import InputError
from ramen_core.weights import DEFAULT_WEIGHTS, load_weights
from ramen_core.weights import WeightsSummary, download_weights, import_weights, summarize_weights

weights_app = typer.Typer(
    help="Import official checkpoints into ramen's safetensors format, inspect weight files, "
    "and download hub files ahead of time.",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")

TRUST_HELP = (
    "Load a torch checkpoint that contains pickled Python objects (weights_only=False). "
    "This can run code stored in the file: use it only for files from a source you trust."
)
HEADS_HELP = "Encoder attention heads, for checkpoints without a stored config (default: 12 at width 768, else width/64)."
DECODER_HEADS_HELP = "MAE decoder attention heads (default: 16 at width 512, else width/32)."
CACHE_HELP = "Download cache for hf:// URIs (default: $RAMEN_CACHE_DIR, else the huggingface_hub cache)."


def _parse_metadata(entries: list[str]) -> dict[str, str]:
    metadata = {}
    for entry in entries:
        key, separator, value = entry.partition("=")
        if not separator or not key:
            raise InputError(f"invalid --metadata {entry!r}; write KEY=VALUE, for example sensors='[\"sentinel-2-l2a\"]'")
        metadata[key] = value
    return metadata


def _summary_lines(summary: WeightsSummary) -> list[str]:
    """Format a summary as ``field: value`` lines, which stay greppable at any terminal width."""
    source = "inferred from tensor shapes, head counts guessed" if summary.config_inferred else "stored in the file"
    lines = [
        f"path: {summary.path}",
        f"format: {summary.source_format}",
        f"sha256: {summary.sha256}",
        f"size: {summary.size_bytes / 1e6:.1f} MB",
        f"parts: {', '.join(summary.parts)}",
        "parameters: "
        + ", ".join(f"{part} {count:,}" for part, count in summary.parameters.items())
        + f" (total {summary.total_parameters:,})",
        f"config ({source}):",
    ]
    lines += [f"  {key}: {value}" for key, value in summary.config.to_dict().items()]
    if summary.metadata:
        lines.append("metadata:")
        lines += [f"  {key}: {value}" for key, value in summary.metadata.items()]
    return lines


def _summary_json(summary: WeightsSummary) -> str:
    return json.dumps(
        {
            "path": str(summary.path),
            "format": summary.source_format,
            "sha256": summary.sha256,
            "size_bytes": summary.size_bytes,
            "parts": summary.parts,
            "parameters": summary.parameters,
            "config": summary.config.to_dict(),
            "config_inferred": summary.config_inferred,
            "metadata": summary.metadata,
        },
        indent=2,
    )


@weights_app.command("import")
@handle_errors
def import_command(
    source: str = typer.Argument(..., help="Checkpoint (.ckpt, state dict, safetensors) or hf://OWNER/REPO/FILE."),
    output: Path = typer.Option(..., "--output", "-o", help="The .safetensors file to write."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
    num_heads: Optional[int] = typer.Option(None, "--num-heads", min=1, help=HEADS_HELP),
    decoder_num_heads: Optional[int] = typer.Option(None, "--decoder-num-heads", min=1, help=DECODER_HEADS_HELP),
    metadata: List[str] = typer.Option([], "--metadata", help="Extra header entry KEY=VALUE (repeatable)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=CACHE_HELP),
) -> None:
    """Convert a checkpoint into ramen's safetensors format, with the model config in its header."""
    written = import_weights(
        source,
        output,
        trust_checkpoint=trust_checkpoint,
        metadata=_parse_metadata(metadata),
        num_heads=num_heads,
        decoder_num_heads=decoder_num_heads,
        cache_dir=cache_dir,
    )
    typer.echo(f"wrote {written.path} ({', '.join(written.parts)}; sha256 {written.sha256})")


@weights_app.command("info")
@handle_errors
def info_command(
    file: str = typer.Argument(..., help="Weights file or hf://OWNER/REPO/FILE."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
    num_heads: Optional[int] = typer.Option(None, "--num-heads", min=1, help=HEADS_HELP),
    decoder_num_heads: Optional[int] = typer.Option(None, "--decoder-num-heads", min=1, help=DECODER_HEADS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=CACHE_HELP),
) -> None:
    """Print the config, parameter count, sha256 and parts (encoder, decoder, head) of weights."""
    loaded = load_weights(
        file,
        trust_checkpoint,
        num_heads=num_heads,
        decoder_num_heads=decoder_num_heads,
        cache_dir=cache_dir,
    )
    summary = summarize_weights(loaded)
    if as_json:
        typer.echo(_summary_json(summary))
        return
    typer.echo("\n".join(_summary_lines(summary)))


@weights_app.command("download")
@handle_errors
def download_command(
    uri: str = typer.Argument(DEFAULT_WEIGHTS, help="Hub file hf://OWNER/REPO[@REVISION]/FILE."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=CACHE_HELP),
) -> None:
    """Fetch weights from the Hugging Face Hub into the cache, for later offline use."""
    path = download_weights(uri, cache_dir)
    typer.echo(str(path))
