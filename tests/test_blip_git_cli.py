"""BLIP and GIT checkpoints in the hub layout through `caption`, `compare`, `evaluate` and `serve`, as the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from _data import SHARED_DATA, real_photos
from _helpers import run_cli
from _hub_models import hub_layout
from captionkit import Captioner
from captionkit.decoding import DecodingConfig
from captionkit.evaluation import evaluate_captions
from captionkit.images import load_image
from captionkit.serve import ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTOS = real_photos(2)
COCO = SHARED_DATA / "coco" / "captions_val2017_subset.json"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub")
    for family in ("blip", "git"):
        hub_layout(family, root / family)
    return {family: root / family for family in ("blip", "git")}


@pytest.mark.parametrize("family", ["blip", "git"])
def test_caption_cli_writes_what_the_captioner_gives(
    family: str, hub: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["caption", "--model", hub[family], *PHOTOS, "--beams", "2", "--max-length", "6"], capsys)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    captioner = Captioner.from_pretrained(hub[family], device="cpu")
    # The job's workers decode JPEGs in draft mode: the captioner gets the same images.
    drafted = [load_image(photo, draft=captioner.preprocessing.draft_size) for photo in PHOTOS]
    expected = captioner.caption(drafted, num_beams=2, max_new_tokens=6)
    assert [(r["image"], r["caption"]) for r in records] == [
        (str(photo), result.caption) for photo, result in zip(PHOTOS, expected, strict=True)
    ]


def test_git_attention_maps_are_refused_in_one_line(hub: dict[str, Path], capsys, tmp_path: Path) -> None:
    args = ["caption", "--model", hub["git"], PHOTOS[0], "--attention-maps", tmp_path / "maps"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (1, "")
    assert err.strip().splitlines()[-1] == (
        "captionkit: error: --attention-maps: the git family has no spatial attention to show "
        "(maps come from blip, cnn-lstm-attention and vit-gpt2)"
    )


def test_compare_puts_blip_and_git_side_by_side(hub: dict[str, Path], capsys, tmp_path: Path) -> None:
    output = tmp_path / "compare.jsonl"
    args = ["compare", *PHOTOS, "--model", f"blip={hub['blip']}", "--model", f"git={hub['git']}", "--beams", "2"]
    code, _, _ = run_cli([*args, "--max-length", "6", "--output", output], capsys)
    assert code == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    for family in ("blip", "git"):
        captioner = Captioner.from_pretrained(hub[family], device="cpu")
        expected = [r.caption for r in captioner.caption(PHOTOS, num_beams=2, max_new_tokens=6)]
        assert [record["captions"][family] for record in records] == expected


@pytest.mark.parametrize("family", ["blip", "git"])
def test_evaluate_scores_a_hub_checkpoint(family: str, hub: dict[str, Path], capsys, tmp_path: Path) -> None:
    args = ["evaluate", "--model", hub[family], "--data", COCO, "--split", "all", "--metrics", "BLEU,CIDEr"]
    code, out, _ = run_cli([*args, "--beams", "2", "--max-length", "6", "--output", tmp_path], capsys)
    assert code == 0
    metrics = json.loads(out)
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(results) == metrics["images"] > 0 and metrics["failed_images"] == 0
    # The checkpoint's own captions of the images, scored against the references each result lists.
    captioner = Captioner.from_pretrained(hub[family], device="cpu")
    found = captioner.caption([r["image"] for r in results], num_beams=2, max_new_tokens=6)
    assert [r["caption"] for r in results] == [f.caption for f in found]
    refs = {r["image_id"]: r["references"] for r in results}
    again = evaluate_captions(refs, {r["image_id"]: r["caption"] for r in results}, "BLEU,CIDEr", allow_empty=True)
    assert (metrics["CIDEr"], metrics["Bleu_4"]) == pytest.approx((again["CIDEr"], again["Bleu_4"]))


def test_serve_answers_with_blip_and_git(hub: dict[str, Path]) -> None:
    captioners = {family: Captioner.from_pretrained(hub[family], device="cpu") for family in ("blip", "git")}
    photo = PHOTOS[0].read_bytes()
    with TestClient(create_app(captioners, ServeSettings(max_wait_ms=0))) as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert (listed["blip"]["attention"], listed["git"]["attention"]) == (True, False)
        for family, captioner in captioners.items():
            files = [("image", ("photo.jpg", photo, "image/jpeg"))]
            data = {"model": family, "num_beams": "2", "max_length": "6"}
            response = client.post("/v1/captions", files=files, data=data)
            assert response.status_code == 200, response.text
            config = DecodingConfig(num_beams=2, max_new_tokens=6)
            expected = captioner.caption_pil([load_image(photo)], config)[0][0].caption
            assert response.json()["results"][0]["caption"] == expected
        files = [("image", ("photo.jpg", photo, "image/jpeg"))]
        refused = client.post("/v1/captions", files=files, data={"model": "git", "attention": "true"})
        assert refused.status_code == 422
        assert refused.json()["detail"] == "attention: model 'git' does not report attention maps"


@pytest.mark.parametrize("family", ["blip", "git"])
def test_int8_export_captions_and_onnx_is_refused(family: str, hub: dict[str, Path], capsys, tmp_path: Path) -> None:
    code, _, _ = run_cli(["export", "int8", "--model", hub[family], "--output", tmp_path / "int8"], capsys)
    assert code == 0
    quantized = Captioner.from_pretrained(tmp_path / "int8")
    assert quantized.model.family == family and quantized.device.type == "cpu"
    (result,) = quantized.caption(PHOTOS[:1], num_beams=2, max_new_tokens=6)
    assert result.captions[0].token_ids
    code, _, err = run_cli(["export", "onnx", "--model", hub[family], "--output", tmp_path / "onnx"], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"captionkit: error: {hub[family]}: is a {family} model; ONNX export supports vit-gpt2"
    )
