"""A served model: a :class:`~captionkit.api.Captioner` under a name, with what the page and API need to know.

``styles``: "neutral" and the styles the model was trained to control (``Captioner.styles``; another style is a
422 naming the model). ``attention``: the model returns attention maps (``model.has_attention``), which
``attention=true`` adds to each caption of a response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from captionkit.api import Captioner
from captionkit.precision import DTYPES


@dataclass(frozen=True)
class ServedModel:
    name: str
    captioner: Captioner = field(repr=False)

    @property
    def styles(self) -> tuple[str, ...]:
        return tuple(self.captioner.styles)

    @property
    def attention(self) -> bool:
        return bool(self.captioner.model.has_attention)

    def describe(self) -> dict[str, Any]:
        """The ``GET /v1/models`` record."""
        model = self.captioner.model
        return {
            "name": self.name,
            "family": getattr(model, "family", type(model).__name__),
            "parameters": self.captioner.num_parameters,
            "device": str(self.captioner.device),
            "dtype": next(name for name, dtype in DTYPES.items() if dtype == self.captioner.dtype),
            "styles": list(self.styles),
            "attention": self.attention,
        }
