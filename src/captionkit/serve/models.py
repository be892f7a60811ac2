"""A served model: a :class:`~captionkit.api.Captioner` under a name, with what the page and API need to know.

``styles``: the styles the model writes (``Captioner.styles``: "neutral", unless its run trained styles alone, and
those it was trained to control; another style is a 422 naming the model). ``attention``: the model returns
attention maps (``model.has_attention``), which ``attention=true`` adds to each caption of a response. ``prompt``:
the model continues a text prompt (BLIP; another family refuses one with a 422). ``max_length``: the most new tokens
a request may ask of it, the server's bound or the model's positions if fewer (a prompt's tokens take positions too).
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

    @property
    def prompt(self) -> bool:
        return bool(getattr(self.captioner.model, "takes_prompt", False))

    def max_length(self, server_limit: int) -> int:
        """The most new tokens a request may ask for: ``server_limit``, or fewer where the model has fewer positions
        (the check that refuses more is :func:`captionkit.decoding.engine.check_length`)."""
        positions = self.captioner.model.max_positions
        return server_limit if positions is None else max(1, min(server_limit, positions))

    def describe(self, server_max_length: int) -> dict[str, Any]:
        """The ``GET /v1/models`` record; ``server_max_length`` is the server's bound on ``max_length``."""
        model = self.captioner.model
        return {
            "name": self.name,
            "family": getattr(model, "family", type(model).__name__),
            "parameters": self.captioner.num_parameters,
            "device": str(self.captioner.device),
            "dtype": next(name for name, dtype in DTYPES.items() if dtype == self.captioner.dtype),
            "export": self.captioner.export,
            "styles": list(self.styles),
            "attention": self.attention,
            "prompt": self.prompt,
            "max_length": self.max_length(server_max_length),
        }
