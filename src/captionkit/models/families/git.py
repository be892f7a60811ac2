"""git: Microsoft's GIT captioner, CLIP ViT tokens as a prefix of a BERT-style decoder."""

from __future__ import annotations

from captionkit.models.family import Family

FAMILIES = (
    Family(
        "git",
        "captionkit.models.git",
        "GitModel",
        ("tiny", "base"),
        "bpe",
        "GIT: CLIP ViT tokens as a prefix of a BERT-style decoder",
        hub_model_type="git",
        image_prefix=True,
    ),
)
