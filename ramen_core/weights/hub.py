"""Resolve a weights argument to a local file, fetching ``hf://`` URIs from the Hugging Face Hub."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ramen_core.errors import WeightsError

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "hf://nicolashoudre/RAMEN/ramen_base_99.ckpt"
"""The authors' pre-trained ViT-Base encoder on the Hugging Face Hub."""

HF_SCHEME = "hf://"
CACHE_ENV = "RAMEN_CACHE_DIR"


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face Hub model repository.

    Attributes:
        repo_id: ``owner/name`` of the repository.
        filename: path of the file inside the repository.
        revision: branch, tag or commit; None means the default branch.
    """

    repo_id: str
    filename: str
    revision: str | None = None

    @property
    def uri(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        return f"{HF_SCHEME}{self.repo_id}{revision}/{self.filename}"


def is_hub_uri(value: str | os.PathLike[str]) -> bool:
    """Return whether a weights argument names a Hugging Face Hub file."""
    return isinstance(value, str) and value.startswith(HF_SCHEME)


def parse_hub_uri(uri: str) -> HubFile:
    """Parse ``hf://owner/repo[@revision]/path/to/file``.

    Raises:
        WeightsError: the URI lacks the owner, the repository or the file path.
    """
    rest = uri[len(HF_SCHEME):] if uri.startswith(HF_SCHEME) else uri
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise WeightsError(
            f"invalid hub URI {uri!r}; expected hf://OWNER/REPO/PATH/TO/FILE, for example {DEFAULT_WEIGHTS}"
        )
    owner, repo, filename = parts[0], parts[1], "/".join(parts[2:])
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not repo or not revision:
            raise WeightsError(f"invalid hub URI {uri!r}; write a revision as hf://OWNER/REPO@REVISION/FILE")
    return HubFile(f"{owner}/{repo}", filename, revision)


def cache_dir_from_env(cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Pick the download cache: the argument, else ``RAMEN_CACHE_DIR``, else None.

    None lets huggingface_hub use its own cache (``HF_HUB_CACHE``, by default
    ``~/.cache/huggingface/hub``), which other tools share.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else None


def hub_offline() -> bool:
    """Return whether ``HF_HUB_OFFLINE`` is set to a true value now.

    huggingface_hub reads the variable once at import, so ramen reads it again at each call
    and passes ``local_files_only`` itself.
    """
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def download_hub_file(uri: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Fetch a hub file into the cache, or find it there when offline, and return its path.

    Raises:
        WeightsError: the file is not cached and cannot be downloaded (offline, no network,
            unknown repository or file, gated repository).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub_file = parse_hub_uri(uri)
    cache = cache_dir_from_env(cache_dir)
    offline = hub_offline()
    logger.info("resolving %s (cache %s%s)", uri, cache or "huggingface_hub default", ", offline" if offline else "")
    use_local = (
        "pass the path of a local copy instead (for example --weights ./ramen_base_99.ckpt), "
        "or fetch it first with `ramen weights download` on a machine with network access"
    )
    try:
        path = hf_hub_download(
            repo_id=hub_file.repo_id,
            filename=hub_file.filename,
            revision=hub_file.revision,
            cache_dir=cache,
            local_files_only=offline,
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        where = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise WeightsError(
            f"weights {uri} are not in the cache {cache or '(huggingface_hub default)'} and {where}; {use_local}"
        ) from error
    except GatedRepoError as error:
        raise WeightsError(
            f"weights {uri}: the repository {hub_file.repo_id} is gated; accept its terms on "
            f"huggingface.co and log in with `hf auth login`, or {use_local}"
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise WeightsError(f"weights {uri} not found on the hub ({error.__class__.__name__}); check the URI") from error
    except (HfHubHTTPError, OSError) as error:
        raise WeightsError(f"failed to download weights {uri}: {error}; {use_local}") from error
    except Exception as error:
        # Transport errors in the middle of a download come from the HTTP client that
        # huggingface_hub bundles (httpx or httpx2, depending on its version).
        logger.debug("download of %s failed", uri, exc_info=True)
        raise WeightsError(
            f"failed to download weights {uri} ({error.__class__.__name__}: {error}); {use_local}"
        ) from error
    logger.info("weights %s at %s", uri, path)
    return Path(path)


def resolve_weights(uri_or_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Turn a weights argument into the path of a local file.

    Args:
        uri_or_path: a local path, or ``hf://owner/repo[@revision]/path/file`` on the
            Hugging Face Hub (see :data:`DEFAULT_WEIGHTS`).
        cache_dir: download cache for hub files; defaults to ``RAMEN_CACHE_DIR``, then to
            huggingface_hub's cache. ``HF_HUB_OFFLINE=1`` restricts hub files to the cache.

    Raises:
        WeightsError: a local file does not exist, or a hub file cannot be fetched.
    """
    if is_hub_uri(uri_or_path):
        return download_hub_file(str(uri_or_path), cache_dir)
    path = Path(uri_or_path).expanduser()
    if not path.is_file():
        hint = " (it is a folder)" if path.is_dir() else ""
        raise WeightsError(
            f"weights file not found: {str(path)!r}{hint}; pass a .safetensors or .ckpt file, "
            f"or a hub URI such as {DEFAULT_WEIGHTS}"
        )
    return path
