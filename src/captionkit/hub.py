"""Where a model comes from: a local directory, or a Hugging Face Hub id fetched once into the local cache.

Everything a captioner needs (config, safetensors weights, tokenizer, preprocessing) is fetched as one snapshot,
then loaded from that directory like any local checkpoint. Pickled weights are never downloaded. Offline, the
answer comes in seconds with one clear line, not after the hub client's long retries.
"""

from __future__ import annotations

import re
from pathlib import Path

from captionkit.errors import ModelLoadError, first_line

# What `captionkit caption` and `Captioner.from_pretrained()` load when no model is named.
DEFAULT_MODEL = "nlpconnect/vit-gpt2-image-captioning"

# One HEAD request decides whether the hub is reachable (huggingface_hub alone retries for ~25 s when offline).
PROBE_TIMEOUT_S = 5.0
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Files a snapshot fetches: configs, safetensors weights, tokenizer files. Never *.bin / *.h5 / *.msgpack.
SNAPSHOT_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model")
# Each hub id's snapshot folder once found, by (id, cache folder, endpoint): building a captioner reads a part several
# times (config, weights, preprocessing, tokenizer), and each lookup would otherwise probe the hub again (up to
# PROBE_TIMEOUT_S apiece on a lossy network). Only the default revision is ever fetched, so the id stands for it.
# Failures are not kept: the next call tries again. A race between threads at worst probes twice.
_SNAPSHOTS: dict[tuple[str, str, str], Path] = {}


def is_hub_id(name: str) -> bool:
    return bool(HUB_ID.match(name))


def resolve_model_source(name_or_dir: str | Path) -> Path:
    """A local directory holding the model: ``name_or_dir`` itself, or the snapshot of the hub id it names.

    Never guesses between the two: an existing directory wins; ``runs/final`` whose parent exists but which does
    not is a mistyped path, not a hub id.
    """
    source = str(name_or_dir)
    if not source.strip():  # Path("") is ".": an empty --model must not load whatever the working directory holds
        raise ModelLoadError(repr(source), "an empty model name; give a model directory or a hub id")
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(source, "is a file; expected a model directory or a hub id")
    if isinstance(name_or_dir, Path) or not is_hub_id(source) or ("/" in source and path.parent.is_dir()):
        raise ModelLoadError(source, "no such directory (and not a hub id)")
    return snapshot(source)


def snapshot(repo_id: str) -> Path:
    """Download (or find in the local cache) the files of ``repo_id`` that captionkit loads: once per process."""
    key = _snapshot_key(repo_id)
    known = _SNAPSHOTS.get(key)
    if known is not None and known.is_dir():  # a cache cleaned meanwhile is fetched again
        return known
    folder = _fetch_snapshot(repo_id)
    _SNAPSHOTS[key] = folder
    return folder


def _snapshot_key(repo_id: str) -> tuple[str, str, str]:
    # The cache folder and endpoint are read when looked up (not at import): another cache or hub is another copy.
    from huggingface_hub import constants

    return repo_id, str(constants.HF_HUB_CACHE), str(constants.ENDPOINT)


def _fetch_snapshot(repo_id: str) -> Path:
    """Probe the hub once for ``repo_id``, then download its snapshot, or take the cached copy when unreachable."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    online = not constants.HF_HUB_OFFLINE
    if online:
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=PROBE_TIMEOUT_S)
        except RepositoryNotFoundError:
            raise ModelLoadError(
                repo_id, "not found on the Hugging Face Hub (private or gated: log in first)"
            ) from None
        except EntryNotFoundError:
            # The repository exists without a config.json (GGUF files, a dataset-like repo): the hub's own first
            # line says only "404 Client Error. (Request ID: ...)".
            raise ModelLoadError(
                repo_id, "has no config.json on the Hugging Face Hub: not a model captionkit loads"
            ) from None
        except HfHubHTTPError as error:
            raise ModelLoadError(repo_id, first_line(error)) from None
        except Exception:
            # Transport errors differ between huggingface_hub versions (httpx or requests); all mean unreachable,
            # and a cached copy may still serve.
            online = False
    try:
        folder = snapshot_download(repo_id, allow_patterns=list(SNAPSHOT_PATTERNS), local_files_only=not online)
    except Exception:  # LocalEntryNotFoundError, or a transport error mid-download
        if constants.HF_HUB_OFFLINE:
            raise ModelLoadError(repo_id, "not in the local Hugging Face cache and HF_HUB_OFFLINE is set") from None
        raise ModelLoadError(
            repo_id,
            "cannot download from the Hugging Face Hub (offline?); pass a local directory, "
            "or set HF_HUB_OFFLINE=1 with a cached copy",
        ) from None
    return Path(folder)
