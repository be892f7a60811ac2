"""blip: Salesforce's BLIP captioner, a ViT and a BERT-style decoder with cross-attention."""

from __future__ import annotations

from captionkit.models.family import Family

FAMILIES = (
    Family(
        "blip",
        "captionkit.models.blip",
        "BlipModel",
        ("tiny", "base"),
        "bpe",
        "BLIP: ViT + BERT-style decoder with cross-attention (Salesforce)",
        hub_model_type="blip",
        attention_maps=True,
    ),
)
