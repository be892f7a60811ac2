"""METEOR 1.5 as pycocoevalcap computes it (``java -jar meteor-1.5.jar - - -stdio -l en -norm``).

Two engines give the same scores: ``python`` (the default, :mod:`.native`: no Java; it reads the jar's data files
from the installed pycocoevalcap into a cache) and ``java`` (:mod:`.java`: pycocoevalcap's jar, kept for
comparison). Both need the ``captionkit[meteor]`` extra; only ``java`` needs Java.
"""

from __future__ import annotations

from collections.abc import Sequence

from captionkit.errors import InputError

#: The METEOR engines: ``python`` (default) and ``java``.
ENGINES = ("python", "java")


def check_engine(engine: str, source: str = "meteor") -> str:
    """``engine`` when it names one of :data:`ENGINES`, else :class:`~captionkit.errors.InputError` naming
    ``source`` (the Python argument; the CLI's ``--meteor``)."""
    if engine not in ENGINES:
        raise InputError(source, f"unknown METEOR engine {engine!r} (known: {', '.join(ENGINES)})")
    return engine


def meteor(
    candidates: Sequence[str], references: Sequence[Sequence[str]], engine: str = "python"
) -> tuple[float, list[float]]:
    """``(corpus METEOR, per-image METEOR)`` of tokenized candidates against tokenized references;
    :class:`~captionkit.evaluation.external.MetricUnavailable` when ``engine`` cannot run here."""
    if check_engine(engine) == "java":
        from captionkit.evaluation.meteor.java import meteor as meteor_java

        return meteor_java(candidates, references)
    from captionkit.evaluation.meteor.native import meteor_python

    return meteor_python(candidates, references)


def meteor_unavailable_reason(engine: str = "python") -> str | None:
    """Why METEOR's ``engine`` cannot run here, or ``None`` when it can."""
    from captionkit.evaluation.external import MetricUnavailable

    try:
        if check_engine(engine) == "java":
            from captionkit.evaluation.meteor.java import require_jar

            require_jar()
        else:
            from captionkit.evaluation.meteor.resources import source_files

            source_files()
    except MetricUnavailable as error:
        return str(error)
    return None


__all__ = ["ENGINES", "check_engine", "meteor", "meteor_unavailable_reason"]
