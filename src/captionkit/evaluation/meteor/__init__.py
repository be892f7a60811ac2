"""METEOR 1.5 as pycocoevalcap computes it.

``meteor`` (the default, :mod:`.java`) runs pycocoevalcap's jar through Java. :mod:`.native` is a Java-free port
in progress: its normalisation (:mod:`.normalize`), stemmer, data cache (:mod:`.resources`) and scoring
(:mod:`.scoring`) equal the jar's, but its matching and alignment (:mod:`.matching`, :mod:`.align`) do not yet
reproduce the jar's search, so it is not used by ``score`` or ``evaluate``.
"""

from captionkit.evaluation.meteor.java import meteor, meteor_unavailable_reason

__all__ = ["meteor", "meteor_unavailable_reason"]
