"""captionkit: caption images, train and evaluate captioners, control their style, serve and export them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from captionkit.version import __version__

if TYPE_CHECKING:
    from captionkit.api import Captioner

__all__ = ["Captioner", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import captionkit` (and the scoring path) does not import torch.
    if name == "Captioner":
        from captionkit.api import Captioner

        return Captioner
    raise AttributeError(f"module 'captionkit' has no attribute {name!r}")
