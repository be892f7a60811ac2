"""METEOR 1.5 through pycocoevalcap's jar, as ``pycocoevalcap/meteor/meteor.py`` runs it.

The jar (Denkowski & Lavie 2014) runs as ``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm``. For each
image it reads ``SCORE ||| ref 1 ||| ... ||| ref m ||| candidate`` and answers a line of statistics; then
``EVAL ||| stats 1 ||| ... ||| stats N`` yields one score per image and the corpus score, which is what
pycocoevalcap reports as "METEOR" (it is not the mean of the per-image scores). As in pycocoevalcap, ``|||`` is
removed from candidates and double spaces collapsed once. Needs Java and the ``captionkit[meteor]`` extra.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from captionkit.evaluation.external import MetricUnavailable, require_java_tool


def require_jar() -> Path:
    """The jar's path, or :class:`MetricUnavailable` saying what is missing (Java or the extra)."""
    return require_java_tool("meteor", "meteor-1.5.jar", metric="METEOR")


def meteor(
    candidates: Sequence[str], references: Sequence[Sequence[str]], timeout: float = 600.0
) -> tuple[float, list[float]]:
    """``(corpus METEOR, per-image METEOR)`` of tokenized candidates against tokenized references."""
    jar = require_jar()
    command = ["java", "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
    lines = [
        " ||| ".join(("SCORE", " ||| ".join(refs), candidate.replace("|||", "").replace("  ", " "))) + "\n"
        for candidate, refs in zip(candidates, references, strict=True)
    ]
    process = subprocess.Popen(
        command, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    errors: list[bytes] = []
    drain = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    timer = threading.Timer(timeout, process.kill)
    timer.start()

    def write_scores() -> None:
        try:
            for line in lines:
                process.stdin.write(line.encode("utf-8"))  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            pass  # the reader below reports the failure

    try:
        # Write from a thread while reading here: Java answers each line, and full pipes would deadlock.
        writer = threading.Thread(target=write_scores, daemon=True)
        writer.start()
        stats = [_read_line(process) for _ in lines]
        writer.join()
        process.stdin.write((" ||| ".join(["EVAL", *stats]) + "\n").encode("utf-8"))
        process.stdin.flush()
        per_image = [float(_read_line(process)) for _ in lines]
        corpus = float(_read_line(process))
    except (OSError, ValueError) as error:
        process.kill()
        drain.join(timeout=5)
        detail = b"".join(errors).decode("utf-8", "replace").strip().splitlines()
        raise MetricUnavailable(f"METEOR: the jar failed ({error}; {detail[-1] if detail else 'no message'})") from None
    finally:
        timer.cancel()
        if process.stdin and not process.stdin.closed:
            process.stdin.close()
        process.wait(timeout=30)
    return corpus, per_image


def _read_line(process: subprocess.Popen[bytes]) -> str:
    line = process.stdout.readline()  # type: ignore[union-attr]
    if not line:
        raise OSError("the METEOR process stopped answering")
    return line.decode("utf-8").strip()
