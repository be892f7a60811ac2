"""SPICE 1.0 through pycocoevalcap's jar (opt-in), as ``pycocoevalcap/spice/spice.py`` runs it.

SPICE (Anderson et al. 2016) parses captions into scene graphs with Stanford CoreNLP 3.6.0, which is not shipped
with pycocoevalcap: it is downloaded on first use (about 400 MB) into the jar's ``lib/`` folder, as pycocoevalcap's
``get_stanford_models`` does. Offline, or without write access there, SPICE is reported unavailable with the reason
and how to install CoreNLP by hand. Scores are the F-scores of the "All" category; the corpus score is their mean.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from captionkit.evaluation.external import MetricUnavailable, require_java_tool

CORENLP_URL = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"
_CORENLP_DIR = "stanford-corenlp-full-2015-12-09"
_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "captionkit" / "spice"


def ensure_corenlp(lib: Path, url: str | None = None, timeout: float = 30.0) -> None:
    """Put CoreNLP 3.6.0's two jars into ``lib`` (SPICE's class path), downloading them from ``url`` (default
    :data:`CORENLP_URL`) if needed."""
    if all((lib / name).is_file() for name in _CORENLP_JARS):
        return
    url = url or CORENLP_URL
    hint = f"download {url} and copy {' and '.join(_CORENLP_JARS)} into {lib}, or leave SPICE out of the metrics"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "corenlp.zip"
            with urllib.request.urlopen(url, timeout=timeout) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out)
            with zipfile.ZipFile(archive) as bundle:
                for name in _CORENLP_JARS:
                    partial = Path(tmp) / name
                    with bundle.open(f"{_CORENLP_DIR}/{name}") as src, partial.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
                    shutil.move(partial, lib / name)  # whole files only, so a failed run leaves nothing half-done
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise MetricUnavailable(
            f"SPICE needs Stanford CoreNLP 3.6.0, which could not be downloaded ({reason}); {hint}"
        ) from None


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot start here (no pycocoevalcap jar, no Java), or ``None`` when it can (CoreNLP may still need
    its download)."""
    try:
        require_java_tool("spice", "spice-1.0.jar", metric="SPICE")
    except MetricUnavailable as error:
        return str(error)
    return None


def spice(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    image_ids: Sequence[str],
    timeout: float = 3600.0,
    download_timeout: float = 30.0,
) -> tuple[float, list[float]]:
    """``(mean SPICE, per-image SPICE)`` of tokenized candidates against tokenized references."""
    jar = require_java_tool("spice", "spice-1.0.jar", metric="SPICE")
    ensure_corenlp(jar.parent / "lib", timeout=download_timeout)
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "input.json", Path(tmp) / "output.json"
        items = [
            {"image_id": i, "test": c, "refs": list(r)}
            for i, c, r in zip(image_ids, candidates, references, strict=True)
        ]
        source.write_text(json.dumps(items), encoding="utf-8")
        command = ["java", "-jar", "-Xmx8G", jar.name, str(source), *_cache_options(), "-out", str(target)]
        try:
            subprocess.run(
                [*command, "-subset", "-silent"], cwd=jar.parent, check=True, capture_output=True, timeout=timeout
            )
            results = json.loads(target.read_text(encoding="utf-8"))
            by_id = {str(item["image_id"]): _as_float(item["scores"]["All"]["f"]) for item in results}
        except subprocess.CalledProcessError as error:
            detail = error.stderr.decode("utf-8", "replace").strip().splitlines()
            raise MetricUnavailable(f"SPICE: the jar failed ({detail[-1] if detail else error})") from None
        except (OSError, subprocess.TimeoutExpired, ValueError) as error:
            raise MetricUnavailable(f"SPICE: the jar failed ({error})") from None
        except (KeyError, TypeError) as error:
            reason = f"{type(error).__name__}: {error}"
            raise MetricUnavailable(f"SPICE: the jar wrote unexpected results ({reason})") from None
    per_image = [by_id.get(str(i), math.nan) for i in image_ids]
    return (sum(per_image) / len(per_image) if per_image else math.nan), per_image


def _cache_options() -> list[str]:
    """SPICE's cache of parses, in the user's cache directory; none where that cannot be made (a read-only home):
    the jar then parses every caption again, slower, with the same scores."""
    cache = _cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        return []
    return ["-cache", str(cache)]


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan  # pycocoevalcap's float_convert: a missing score is NaN
