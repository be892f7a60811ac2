"""Caption styles as decoder start tokens.

A model trained with styles starts each caption with a style token instead of bos: ``<positive>`` or ``<negative>``
(neutral captions keep bos, so a style-trained model still captions plainly, and a pretrained checkpoint's neutral
behaviour is where fine-tuning starts). The style is given, never predicted: the token sits at position 0, where
the loss does not look. Decoding feeds the requested style's token first.

The tokenizer is the record of which styles a model knows: the style tokens are added to it for training with
styles, and a checkpoint whose tokenizer lacks them (any hub checkpoint, including SentiCap fine-tunes that learnt one
sentiment without control) refuses a style request with a clear error.
"""

from __future__ import annotations

from collections.abc import Iterable

from captionkit.errors import InputError
from captionkit.text.tokenizer import CaptionTokenizer

NEUTRAL = "neutral"
STYLE_TOKENS = {"positive": "<positive>", "negative": "<negative>"}
# Every style a caption can have; the same names as the dataset records' (captionkit.data.records.STYLES).
STYLES = (NEUTRAL, *STYLE_TOKENS)


def style_name(style: str) -> str:
    """``style`` as captionkit names it: case and surrounding spaces ignored ("Positive", " NEGATIVE "), as the
    data readers read a style column, so a name that trains a style also asks for it."""
    return style.strip().lower()


def add_style_tokens(tokenizer: CaptionTokenizer, styles: Iterable[str] = tuple(STYLE_TOKENS)) -> dict[str, int]:
    """Add the tokens of ``styles`` (neutral needs none) to ``tokenizer``; returns style -> token id."""
    wanted = [s for s in dict.fromkeys(styles) if s != NEUTRAL]
    unknown = [s for s in wanted if s not in STYLE_TOKENS]
    if unknown:
        raise InputError("style", f"unknown style {unknown[0]!r} (known: {', '.join(STYLES)})")
    missing = [STYLE_TOKENS[s] for s in wanted if STYLE_TOKENS[s] not in tokenizer.hf.get_vocab()]
    if missing:
        tokenizer.hf.add_special_tokens({"additional_special_tokens": missing})
    return style_token_ids(tokenizer)


def style_token_ids(tokenizer: CaptionTokenizer) -> dict[str, int]:
    """The styles ``tokenizer`` has tokens for (style -> id); empty for a model trained without styles."""
    # One lookup a style: get_vocab() copies the whole vocabulary (50,257 entries for GPT-2's) on every call.
    found = {style: tokenizer.hf.backend_tokenizer.token_to_id(token) for style, token in STYLE_TOKENS.items()}
    return {style: token_id for style, token_id in found.items() if token_id is not None}


def start_token_id(tokenizer: CaptionTokenizer, style: str | None, model_name: str = "this model") -> int:
    """The decoder start token for ``style`` (None or "neutral", in any case: bos); a clear error for a style the
    model lacks."""
    if style is None:
        return tokenizer.bos_token_id
    name = style_name(style)
    if name == NEUTRAL:
        return tokenizer.bos_token_id
    if name not in STYLE_TOKENS:
        raise InputError("style", f"unknown style {style!r} (known: {', '.join(STYLES)})")
    known = style_token_ids(tokenizer)
    if name not in known:
        if not known:
            raise InputError("style", f"{model_name} was trained without styles: it cannot write {name} captions")
        raise InputError("style", f"{model_name} knows the styles {', '.join([NEUTRAL, *known])}, not {name!r}")
    return known[name]
