"""captionkit: caption images, train and evaluate captioners, control their style, serve and export them.

>>> from captionkit import Captioner
>>> captioner = Captioner.from_pretrained("nlpconnect/vit-gpt2-image-captioning")  # doctest: +SKIP
>>> [result.caption for result in captioner.caption(["photo.jpg"])]  # doctest: +SKIP

:class:`Captioner` loads a model and captions images; each image gives a :class:`CaptionResult` (its n-best
``captions``, best first). Errors a user can cause are in :mod:`captionkit.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from captionkit.version import __version__

if TYPE_CHECKING:
    from captionkit.api import Captioner, CaptionResult

__all__ = ["CaptionResult", "Captioner", "__version__"]
# Lazy so that `import captionkit` (and the scoring path) does not import torch.
_LAZY = frozenset({"CaptionResult", "Captioner"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from captionkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'captionkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names too, so that tab completion and dir() show them.
    return sorted(set(globals()) | set(__all__))
