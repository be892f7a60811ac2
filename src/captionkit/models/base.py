"""The one interface every captioning model family implements.

Two uses drive it:

* teacher forcing (training): ``model(pixel_values, input_ids, attention_mask) -> logits``;
* decoding: the step protocol ``encode`` -> ``init_state`` -> ``step`` / ``reorder_state``, which lets one
  greedy/beam/sampling engine (``captionkit.decoding``) drive every family without looking inside it.

Token conventions shared by all families:

* ``input_ids`` start with ``bos_token_id`` (the decoder start token) and usually end with ``eos_token_id``;
  ``attention_mask`` is 1 for real tokens, 0 for padding. Padding is identified by the mask, never by token id
  (GPT-2 checkpoints use one id for bos, eos and pad).
* ``logits[:, t]`` predicts ``input_ids[:, t + 1]``. The loss (with padding set to -100) is computed in
  ``captionkit.training``, never inside a model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from captionkit.errors import ConfigError
from captionkit.images import Preprocessing

_RESERVED_POSITIONS: ContextVar[int | None] = ContextVar("reserved_positions", default=None)
_GIVEN_WORDS_ONLY: ContextVar[bool] = ContextVar("given_words_only", default=False)


@contextmanager
def given_words_only() -> Iterator[None]:
    """Within this block teacher forcing feeds every given word, whatever a family's scheduled sampling (cnn-lstm's
    ``teacher_forcing_ratio``) says: for scoring captions that were sampled (SCST), where a word the sample never had
    would score its next token after the wrong words, and the gradient would not be the sampling policy's."""
    token = _GIVEN_WORDS_ONLY.set(True)
    try:
        yield
    finally:
        _GIVEN_WORDS_ONLY.reset(token)


def feeds_given_words_only() -> bool:
    """Whether the enclosing code is inside :func:`given_words_only`."""
    return _GIVEN_WORDS_ONLY.get()


@contextmanager
def reserved_positions(count: int) -> Iterator[None]:
    """Within this block a decoding call feeds at most ``count`` tokens after ``init_state``: a decoder state may
    allocate its cache for all of them once, up front (a static cache), instead of growing it as it goes."""
    token = _RESERVED_POSITIONS.set(count)
    try:
        yield
    finally:
        _RESERVED_POSITIONS.reset(token)


def positions_to_reserve() -> int | None:
    """The ``count`` of the enclosing :func:`reserved_positions`, or None outside one (grow as needed)."""
    return _RESERVED_POSITIONS.get()


@dataclass
class Encoded:
    """Image-side output of an encoder, computed once per image.

    ``tokens``: (B, N, D) features; ``mask``: (B, N) bool, True where a token is valid, or None when all are.
    """

    tokens: torch.Tensor
    mask: torch.Tensor | None = None

    def index_select(self, index: torch.Tensor) -> Encoded:
        """Rows ``index`` of the batch (used to expand images to beams or samples)."""
        mask = None if self.mask is None else self.mask.index_select(0, index)
        return Encoded(self.tokens.index_select(0, index), mask)


# A family's decoder state: KV cache (GPT-2) or (h, c) (LSTM) plus what the step needs. Opaque to the engine.
DecoderState = Any


class CaptionModel(nn.Module, ABC):
    """Base class of every captioning model family."""

    family: ClassVar[str]

    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    vocab_size: int
    # Most tokens (bos included) the decoder can take, e.g. GPT-2's position count; None: no limit (LSTM).
    max_positions: int | None = None
    # True when :meth:`attention_maps` returns maps (the decoder attends over image positions).
    has_attention: ClassVar[bool] = False
    # Config fields that shape training alone, read as the model trains (no layer is built from them): a fine-tune
    # (model.pretrained) may change them with model.overrides, where any other field must keep the checkpoint's.
    training_settings: ClassVar[frozenset[str]] = frozenset()
    # A model built from pretrained parts: its encoder part's own image preprocessing (an ONNX export: its own, as
    # read on load); None: the family default.
    preprocessing: Preprocessing | None = None

    @abstractmethod
    def encode(self, pixel_values: torch.Tensor) -> Encoded:
        """(B, 3, H, W) preprocessed pixels -> encoder tokens."""

    def encoded_or_encode(self, pixel_values: torch.Tensor | None, encoded: Encoded | None) -> Encoded:
        """``encoded`` when given (cached features), else the encoder's output for ``pixel_values``: how every
        family's :meth:`forward` gets its image side."""
        if encoded is not None:
            return encoded
        if pixel_values is None:
            raise ValueError("forward needs pixel_values or encoded")
        return self.encode(pixel_values)

    @abstractmethod
    def forward(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoded: Encoded | None = None,
    ) -> torch.Tensor:
        """Teacher forcing: (B, T) ids -> (B, T, V) logits; ``encoded`` replaces ``pixel_values`` if given."""

    @abstractmethod
    def init_state(self, encoded: Encoded) -> DecoderState:
        """Decoder state before the first step, one row per row of ``encoded``.

        The decoding engine passes one row per image and, after the first step, expands rows to beams or
        samples with :meth:`reorder_state`: the first step (where image-side work such as cross-attention
        keys/values happens) runs once per image.
        """

    @abstractmethod
    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Feed one token per row: (R,) ids -> ((R, V) float32 next-token log-probabilities, new state).

        May update ``state`` in place: callers use the returned state and drop the old one.
        """

    @abstractmethod
    def reorder_state(self, state: DecoderState, index: torch.Tensor, row_image: tuple[int, ...]) -> DecoderState:
        """Row ``i`` of the result is row ``index[i]`` of ``state``.

        ``index`` (long, on the state's device) may repeat rows (expanding images to beams), permute them
        (beam reordering) or leave some out (dropping finished rows). ``row_image`` (on the host, one entry per
        result row) is the image row ``i`` decodes, as a row of the ``encoded`` given to :meth:`init_state`: the
        engine knows it without reading the device, so a state tells from it which images still have rows and
        whether rows changed image, with no host synchronisation. May update ``state`` in place.
        """

    def attention_maps(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Teacher forcing: where the decoder looks, as a (B, T, h, w) grid over the image per position, or None.

        ``[:, t]`` is the attention while predicting ``input_ids[:, t + 1]`` (so a caption's k-th token gets map
        ``k - 1`` when ``input_ids`` start with the start token); each map sums to 1 over the grid. None for
        families without spatial attention (``has_attention`` False).
        """
        return None

    def parameter_groups(self) -> dict[str, list[str]]:
        """Named groups of parameter names, for staged unfreezing (``train.stages``). Families override this.

        Groups should not overlap. The trainer adds ``all`` itself. While no parameter of
        :meth:`encode_parameter_names` trains, the trainer caches ``encode`` outputs.
        """
        return {}

    def encode_parameter_names(self) -> list[str]:
        """Names of every parameter :meth:`encode` uses: by default the ``encoder`` group (none without one: then
        ``encode`` outputs are never cached). A family whose ``encode`` also runs a parameter of another group
        (vit-gpt2's new projection to the decoder width) overrides this."""
        return self.parameter_groups().get("encoder", [])

    def resize_vocabulary(self, size: int) -> None:
        """Grow the token embedding and output layer to ``size`` tokens (new rows random), e.g. for style tokens
        added to a pretrained checkpoint's tokenizer. Families that support fine-tuning with new tokens override it."""
        raise ConfigError("data.styles", f"the {self.family} family cannot add tokens to a pretrained vocabulary")

    # Whether captions may continue a text prompt at decoding time (DecodingConfig.prompt_ids; BLIP's conditional
    # captioning). Other families were never trained to read one.
    takes_prompt: ClassVar[bool] = False

    def set_prompt(self, prompt_ids: tuple[int, ...]) -> None:
        """Fine-tune with a conditional prompt (BLIP's "a picture of"): fed after the start token of every caption,
        in training and decoding, and kept out of the loss. Families that support it override it."""
        raise ConfigError("model.prompt", f"the {self.family} family takes no training prompt (blip does)")

    def auxiliary_loss(self) -> torch.Tensor | None:
        """A training term the last ``forward`` computed besides the logits (e.g. an attention penalty), or None.

        The trainer adds it to the caption loss; a model returns each term once.
        """
        return None

    @abstractmethod
    def save_pretrained(self, directory: str | Path) -> None:
        """Write weights (safetensors) and the model's config into ``directory``."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, name_or_dir: str | Path, *, dtype: torch.dtype | None = None) -> CaptionModel:
        """Load what :meth:`save_pretrained` wrote (or, for HF families, a hub id / hub-layout directory).

        ``dtype`` (None: fp32, or for HF families the dtype stored): the floating-point weights are built and read in
        it, each stored tensor cast as it loads, so that a half-precision load never holds the fp32 weights; the
        result equals the fp32 model cast afterwards (:mod:`captionkit.precision`)."""

    @classmethod
    @abstractmethod
    def from_saved_config(cls, directory: Path) -> CaptionModel:
        """The architecture ``directory``'s config.json describes, its weights new (random), in eval mode: for an
        export that stores the weights its own way (int8) and fills them in itself."""
