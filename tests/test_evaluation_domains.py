"""``evaluate``'s per-domain rows (nocaps: in/near/out-domain): each row is the split's metrics over that domain's
images alone, computed the same way as the whole split's, with the same METEOR engine."""

from __future__ import annotations

import pytest

from _data import real_photos
from _helpers import save_tiny_model
from captionkit.api import Captioner
from captionkit.data.records import CaptionRecord
from captionkit.decoding import DecodingConfig
from captionkit.evaluation import meteor, score_captions
from captionkit.model_evaluation import evaluate_model

PHOTOS = real_photos(4)
DOMAINS = ["in-domain", "in-domain", "out-domain", "out-domain"]


def test_each_domain_row_is_its_images_alone_scored_with_the_chosen_meteor_engine(tmp_path, monkeypatch):
    engines: list[str] = []

    def fake_meteor(candidates, references, engine="python"):  # the engine asked for, without Java here
        engines.append(engine)
        return 0.5, [0.5] * len(candidates)

    monkeypatch.setattr(meteor, "meteor", fake_meteor)
    records = [
        CaptionRecord(photo, caption, image_id=photo.stem, domain=domain)
        for photo, domain in zip(PHOTOS, DOMAINS, strict=True)
        for caption in ("a dog runs on the grass", "a cat sits on a red couch")
    ]
    captioner = Captioner.from_pretrained(save_tiny_model(tmp_path / "tiny"), device="cpu")
    found = evaluate_model(captioner, records, DecodingConfig(max_new_tokens=5), "METEOR,CIDEr", meteor="java")
    assert engines == ["java"] * 3  # the split, then each of its two domains
    captions = {r["image_id"]: r["caption"] for r in found.results}
    for domain in ("in-domain", "out-domain"):
        ids = [photo.stem for photo, d in zip(PHOTOS, DOMAINS, strict=True) if d == domain]
        refs = {i: [r.caption for r in records if r.image_id == i] for i in ids}
        alone = score_captions(refs, {i: captions[i] for i in ids}, "CIDEr", allow_empty=True).scores
        assert found.metrics["domains"][domain]["CIDEr"] == pytest.approx(alone["CIDEr"], abs=1e-12)
        assert found.metrics["domains"][domain]["images"] == 2
