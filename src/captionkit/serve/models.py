"""A served model: a :class:`~captionkit.api.Captioner` under a name, with what the page and API need to know.

``styles`` and ``attention`` are read from the model when it declares them (``model.styles``,
``model.has_attention``); no model family does yet, and ``Captioner`` cannot yet decode with a style or return
attention maps, so the API refuses a style other than none/neutral and ``attention=true`` with a clear 422
(naming the model when it lacks the feature) rather than pretending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from captionkit.api import Captioner


@dataclass(frozen=True)
class ServedModel:
    name: str
    captioner: Captioner = field(repr=False)

    @property
    def styles(self) -> tuple[str, ...]:
        return tuple(getattr(self.captioner.model, "styles", ()) or ())

    @property
    def attention(self) -> bool:
        return bool(getattr(self.captioner.model, "has_attention", False))

    def describe(self) -> dict[str, Any]:
        """The ``GET /v1/models`` record."""
        model = self.captioner.model
        return {
            "name": self.name,
            "family": getattr(model, "family", type(model).__name__),
            "parameters": sum(p.numel() for p in model.parameters()),
            "device": str(self.captioner.device),
            "styles": ["none", *self.styles],
            "attention": self.attention,
        }
