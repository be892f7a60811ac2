"""CLIPScore and RefCLIPScore (Hessel et al., EMNLP 2021), reference-free caption metrics from a CLIP model.

Per image, with unit-length CLIP embeddings: ``CLIP-S = w * max(cos(image, caption), 0)`` with ``w = 2.5``, and
``RefCLIP-S = harmonic mean(CLIP-S, max(max_r cos(caption, r), 0))`` over the image's references ``r``, 0 where both
are 0 (the paper's eq. 2; jmhessel/clipscore's code leaves the caption-reference cosine unclamped and divides 0 by 0
there, which differs only where no reference has a positive cosine with the caption). As in the paper's code, every
text (candidate and reference) is prefixed with "A photo depicts " and cut to CLIP's text length; the corpus figures
are the means over images. The paper used ``openai/clip-vit-base-patch32``; any CLIP on the hub or in a local
directory (``config.json``, weights, tokenizer, ``preprocessor_config.json``) works here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image

from captionkit.errors import ModelLoadError
from captionkit.hub import resolve_model_source
from captionkit.images import Preprocessing, load_image
from captionkit.jsontext import parse_json
from captionkit.quiet import no_transformers_progress_bars

PAPER_MODEL = "openai/clip-vit-base-patch32"
PREFIX = "A photo depicts "
WEIGHT = 2.5
#: Texts embedded in one forward pass: a split's references all at once would not fit (COCO val's 25,000, padded to
#: 60 tokens, make one 12 GB activation in ViT-B/32's text MLP).
TEXT_BATCH = 256


def load_clip_scorer(source: str | Path, device: str | torch.device | None = None) -> ClipScorer:
    """:class:`ClipScorer` for the command line: a model that cannot be loaded is an error of ``--clip-model``,
    the flag that chooses another (the default, the paper's hub model, fails offline)."""
    try:
        return ClipScorer(source, device)
    except ModelLoadError as error:
        raise ModelLoadError("--clip-model", f"{error.source}: {error.reason}") from None


class ClipScorer:
    """A CLIP model with its tokenizer and image preprocessing, embedding images and captions for the two scores."""

    def __init__(self, source: str | Path = PAPER_MODEL, device: str | torch.device | None = None) -> None:
        from transformers import AutoTokenizer, CLIPModel

        directory = resolve_model_source(source)
        _check_clip(directory, str(source))
        try:
            with no_transformers_progress_bars():
                self.model = CLIPModel.from_pretrained(directory).eval()
                self.tokenizer = AutoTokenizer.from_pretrained(directory)
        except (OSError, ValueError) as error:
            raise ModelLoadError(str(source), f"not a CLIP model ({str(error).splitlines()[0]})") from None
        self.preprocessing = Preprocessing.load(directory)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.max_length = self.model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Unit-length image embeddings, one row per image."""
        pixels = torch.from_numpy(self.preprocessing(list(images))).to(self.device)
        return _unit(self.model.get_image_features(pixel_values=pixels).pooler_output)

    def text_features(self, texts: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Unit-length embeddings of the prefixed texts, one row per text, ``batch_size`` (default
        :data:`TEXT_BATCH`) texts a forward pass."""
        size = batch_size or TEXT_BATCH
        if not texts:
            return torch.empty(0, self.model.config.projection_dim, device=self.device)
        return torch.cat([self._text_batch(texts[start : start + size]) for start in range(0, len(texts), size)])

    @torch.no_grad()
    def _text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            [PREFIX + text for text in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        output = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return _unit(output.pooler_output)

    def score(
        self,
        image_features: Mapping[str, torch.Tensor],
        candidates: Mapping[str, str],
        references: Mapping[str, Sequence[str]] | None = None,
    ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """Corpus means and per-image scores of ``candidates`` (image id -> caption) on the images of
        ``image_features`` (image id -> unit embedding); RefCLIPScore too when ``references`` are given."""
        ids = list(candidates)
        images = torch.stack([image_features[i] for i in ids])
        captions = self.text_features([candidates[i] for i in ids])
        clip_s = WEIGHT * (images * captions).sum(-1).clamp(min=0)
        per_image = {i: {"CLIPScore": float(s)} for i, s in zip(ids, clip_s, strict=True)}
        if references is not None:
            refs = self.text_features([r for i in ids for r in references[i]])
            start = 0
            for row, image_id in enumerate(ids):
                count = len(references[image_id])
                text_s = float((refs[start : start + count] @ captions[row]).max().clamp(min=0))
                start += count
                image_s = per_image[image_id]["CLIPScore"]
                both = image_s + text_s
                per_image[image_id]["RefCLIPScore"] = 2 * image_s * text_s / both if both > 0 else 0.0
        names = ["CLIPScore", *(["RefCLIPScore"] if references is not None else [])]
        corpus = {name: sum(s[name] for s in per_image.values()) / len(ids) for name in names}
        return corpus, per_image


def score_image_files(
    scorer: ClipScorer,
    files: Mapping[str, Path],
    candidates: Mapping[str, str],
    references: Mapping[str, Sequence[str]] | None = None,
    batch_size: int = 32,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """:meth:`ClipScorer.score` of the candidates' images read from ``files`` (image id -> path), in batches."""
    ids = list(candidates)
    features: dict[str, torch.Tensor] = {}
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        features.update(zip(chunk, scorer.image_features([load_image(files[i]) for i in chunk]), strict=True))
    return scorer.score(features, candidates, references)


def _check_clip(directory: Path, source: str) -> None:
    """Refuse, in one line, a directory that holds no CLIP (transformers' own errors for that run to pages)."""
    config = directory / "config.json"
    if not config.is_file():
        raise ModelLoadError(source, "not a CLIP model (no config.json)")
    data = parse_json(config.read_text(encoding="utf-8"), config, error=ModelLoadError)
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type != "clip":
        raise ModelLoadError(source, f"not a CLIP model (model_type {model_type!r}; expected 'clip')")


def _unit(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to length 1 (transformers 5 returns the projected embeddings as ``pooler_output``)."""
    return features / features.norm(dim=-1, keepdim=True)
