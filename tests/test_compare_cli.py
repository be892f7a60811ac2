"""``captionkit compare``: every decoding option reaches every model, and --refs scores are shown without --report."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from _data import real_photos
from _helpers import run_cli, save_tiny_model
from _hub_models import hub_layout
from captionkit import Captioner
from captionkit.evaluation import score_captions
from captionkit.images.preprocessing import Preprocessing

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTOS = real_photos(3)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    hub_layout("blip", root / "blip")
    hub_layout("blip", root / "blip-other", seed=1)
    return {"blip": root / "blip", "other": root / "blip-other", "vit": save_tiny_model(root / "vit", seed=1)}


def records_of(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize(
    ("flags", "options"),
    [
        (["--beams", "3", "--length-penalty", "0.5"], {"num_beams": 3, "length_penalty": 0.5}),
        (["--sample", "--seed", "3", "--top-k", "5"], {"do_sample": True, "seed": 3, "top_k": 5}),
        (
            ["--sample", "--seed", "7", "--temperature", "0.7", "--top-p", "0.9"],
            {"do_sample": True, "seed": 7, "temperature": 0.7, "top_p": 0.9},
        ),
        (["--beams", "2", "--prompt", "a picture of"], {"num_beams": 2, "prompt": "a picture of"}),
    ],
    ids=["length-penalty", "top-k", "top-p", "prompt"],
)
def test_each_model_captions_with_the_decoding_options_given(
    flags: list[str], options: dict[str, Any], models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each column is what the captioner gives the same images with the same options (seeded sampling included:
    each image gets the captions of its place in the inputs, as `Captioner.caption(images, seed=...)` gives them)."""
    args = ["compare", *PHOTOS, "--model", f"a={models['blip']}", "--model", f"b={models['other']}"]
    code, out, err = run_cli([*args, *flags, "--max-length", "5"], capsys)
    assert code == 0, err
    records = records_of(out)
    for name in ("a", "b"):
        captioner = Captioner.from_pretrained(models["blip" if name == "a" else "other"], device="cpu")
        expected = [result.caption for result in captioner.caption(PHOTOS, max_new_tokens=5, **options)]
        assert [record["captions"][name] for record in records] == expected


def test_options_a_model_cannot_take_are_one_line_naming_the_flag(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["compare", *PHOTOS, "--model", f"blip={models['blip']}", "--model", f"vit={models['vit']}"]
    code, out, err = run_cli([*args, "--prompt", "a picture of"], capsys)
    assert (code, out) == (1, "")
    assert (
        err
        == f"captionkit: error: --prompt: {models['vit']} is a vit-gpt2 model: it takes no text prompt (blip does)\n"
    )
    code, out, err = run_cli([*args, "--sample", "--top-p", "0"], capsys)
    assert (code, out) == (1, "") and err.startswith("captionkit: error: --top-p: ") and err.count("\n") == 1


def test_refs_without_a_report_scores_each_caption_and_prints_the_metrics(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--refs alone used to score the captions and drop the scores: only --report showed them."""
    references = {
        PHOTOS[0].name: ["a woman in a room with a picture", "the woman sitting"],
        PHOTOS[1].name: ["a man standing on the street"],
        PHOTOS[2].name: ["a red and blue cat on the grass"],
    }
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(references))
    out_file = tmp_path / "compare.jsonl"
    args = ["compare", *PHOTOS, "--model", f"a={models['blip']}", "--model", f"b={models['other']}", "--beams", "2"]
    code, out, err = run_cli([*args, "--max-length", "6", "--refs", refs, "--output", out_file], capsys)
    assert (code, out) == (0, ""), err
    records = records_of(out_file.read_text())
    by_path = {str(photo): references[photo.name] for photo in PHOTOS}
    table = " ".join(err.split())
    for name in ("a", "b"):
        captions = {record["image"]: record["captions"][name] for record in records}
        expected = score_captions(by_path, captions, "BLEU,ROUGE_L,CIDEr", allow_empty=True)
        assert [record["CIDEr"][name] for record in records] == [
            expected.per_image[str(photo)]["CIDEr"] for photo in PHOTOS
        ]
        row = " ".join(f"{expected.scores[metric]:.4f}" for metric in ("Bleu_4", "ROUGE_L", "CIDEr"))
        assert re.search(rf"│ {name} +│ {row.replace(' ', ' +│ ')} +│", table), table
    assert any(value > 0 for record in records for value in record["CIDEr"].values())  # not a table of zeros
    code, _, err = run_cli([*args, "--max-length", "6", "--refs", refs, "--output", tmp_path / "c.csv"], capsys)
    assert code == 0, err
    with (tmp_path / "c.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["CIDEr b"]) for row in rows] == [record["CIDEr"]["b"] for record in records]


def test_a_broken_image_without_references_is_its_record_and_the_run_goes_on(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An unreadable image that --refs did not name stopped the run, exit 1 ("no references for 1 of the 4 images"),
    where without --refs it was its error record, exit 2."""
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    listing = tmp_path / "images.txt"
    listing.write_text(f"{missing}\n", encoding="utf-8")
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({photo.name: [f"photo {i}"] for i, photo in enumerate(PHOTOS)}))
    args = ["compare", *PHOTOS, broken, listing, "--model", f"a={models['blip']}", "--model", f"b={models['other']}"]
    args += ["--beams", "1", "--max-length", "4"]
    code, unscored, _ = run_cli(args, capsys)
    assert code == 2
    code, out, err = run_cli([*args, "--refs", refs], capsys)
    assert code == 2, err
    records = records_of(out)
    assert (
        records[3:]
        == records_of(unscored)[3:]
        == [
            {"image": str(broken), "error": records[3]["error"]},
            {"image": str(missing), "error": f"no such file (looked for {missing})"},
        ]
    )
    assert records[3]["error"].startswith("unsupported image format")
    assert [sorted(record["CIDEr"]) for record in records[:3]] == [["a", "b"]] * 3
    assert "against --refs" in err


def test_references_missing_for_a_readable_image_are_one_line_naming_it(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A readable image without references (a wrong or short --refs file) still stops the run before any model loads;
    the images named are those that could be scored, not the broken ones."""
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({PHOTOS[0].name: ["a photo"]}))
    args = ["compare", broken, *PHOTOS, "--model", f"a={tmp_path / 'none'}", "--model", f"b={tmp_path / 'none2'}"]
    code, out, err = run_cli([*args, "--refs", refs], capsys)
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: {refs}: no references for 2 of the 4 images: {PHOTOS[1]}, {PHOTOS[2]}\n"
    # A file for other images: it fails once four images are found readable, not after all were decoded.
    refs.write_text(json.dumps({"elsewhere.jpg": ["a photo"]}))
    photos = real_photos(6)
    args = ["compare", broken, *photos, "--model", f"a={tmp_path / 'none'}", "--model", f"b={tmp_path / 'none2'}"]
    code, out, err = run_cli([*args, "--refs", refs], capsys)
    assert (code, out) == (1, "")
    shown = ", ".join(map(str, photos[:3]))
    assert err == f"captionkit: error: {refs}: no references for 6 of the 7 images: {shown}, ...\n"


def test_output_is_written_in_the_format_its_name_says(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    args = ["compare", *PHOTOS[:2], broken, "--model", f"a={models['blip']}", "--model", f"b={models['other']}"]
    args += ["--beams", "1", "--max-length", "4"]
    code, out, _ = run_cli(args, capsys)
    assert code == 2
    records = records_of(out)
    code, _, _ = run_cli([*args, "--output", tmp_path / "c.json"], capsys)
    assert code == 2 and json.loads((tmp_path / "c.json").read_text()) == records
    code, _, _ = run_cli([*args, "--output", tmp_path / "c.csv"], capsys)
    assert code == 2
    with (tmp_path / "c.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [list(row) for row in rows[:1]] == [["image", "a", "b", "error"]]
    assert [(r["image"], r["a"], r["b"], r["error"]) for r in rows] == [
        (r["image"], *(r.get("captions", {}).get(name, "") for name in "ab"), r.get("error", "")) for r in records
    ]


def test_a_parquet_output_is_refused_before_any_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["compare", *PHOTOS, "--model", f"a={tmp_path / 'none'}", "--model", f"b={tmp_path / 'none2'}"]
    code, out, err = run_cli([*args, "--output", tmp_path / "c.parquet"], capsys)
    assert (code, out) == (1, "")
    assert (
        err
        == f"captionkit: error: --output: {tmp_path / 'c.parquet'}: compare writes .jsonl, .json or .csv, not Parquet\n"
    )


def test_a_file_name_that_is_not_utf8_is_written_as_caption_writes_it(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """It used to end in a UnicodeEncodeError traceback with --output (and invalid UTF-8 on stdout)."""
    photo = tmp_path / os.fsdecode(b"caf\xe9.jpg")
    photo.write_bytes(PHOTOS[0].read_bytes())
    args = ["compare", photo, "--model", f"a={models['blip']}", "--model", f"b={models['other']}", "--beams", "1"]
    code, out, err = run_cli([*args, "--max-length", "3"], capsys)
    assert code == 0, err
    assert json.loads(out)["image"] == str(photo) and "\\udce9" in out
    assert "caf\\udce9.jpg" in err  # the table
    for name in ("c.jsonl", "c.csv"):
        code, _, err = run_cli([*args, "--max-length", "3", "--output", tmp_path / name], capsys)
        assert code == 0, err
    assert json.loads((tmp_path / "c.jsonl").read_text()) == json.loads(out)
    assert os.fsencode(str(photo)) in (tmp_path / "c.csv").read_bytes().splitlines()[1]


def test_captions_are_the_same_whatever_the_batch_size(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Batches of readable images around an unreadable one: seeded samples stay each image's own."""
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    inputs = [PHOTOS[0], broken, PHOTOS[1], PHOTOS[2]]
    args = [
        "compare",
        *inputs,
        "--model",
        f"a={models['blip']}",
        "--model",
        f"b={models['other']}",
        "--max-length",
        "5",
    ]
    found = {}
    for flags in (["--beams", "2"], ["--sample", "--seed", "11"]):
        for size in ("1", "2", "8"):
            code, out, err = run_cli([*args, *flags, "--batch-size", size], capsys)
            assert code == 2, err
            found[flags[-1], size] = records_of(out)
        assert found[flags[-1], "1"] == found[flags[-1], "2"] == found[flags[-1], "8"]
        assert [set(record) for record in found[flags[-1], "1"]] == [{"image", "captions"}, {"image", "error"}] + [
            {"image", "captions"}
        ] * 2
    code, out, err = run_cli([*args, "--batch-size", "0"], capsys)
    assert (code, out, err) == (1, "", "captionkit: error: --batch-size: must be at least 1, got 0\n")


def test_models_that_read_images_alike_share_each_batchs_pixels(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two BLIPs preprocess alike: one batch is preprocessed once for both, and once more for the ViT-GPT2 whose
    preprocessing differs; the captions are each model's own (as every test here checks)."""
    loaded = {name: Captioner.from_pretrained(path, device="cpu").preprocessing for name, path in models.items()}
    assert loaded["blip"] == loaded["other"] != loaded["vit"]
    calls: list[Preprocessing] = []
    original = Preprocessing.__call__

    def counted(self: Preprocessing, images: Any) -> Any:
        calls.append(self)
        return original(self, images)

    monkeypatch.setattr(Preprocessing, "__call__", counted)
    args = ["compare", *PHOTOS, *(f"--model={name}={path}" for name, path in models.items()), "--max-length", "3"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert calls == [loaded["blip"], loaded["vit"]]
    assert all(set(record["captions"]) == set(models) for record in records_of(out))


def test_an_output_that_would_replace_an_input_or_the_other_output_is_refused_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--output or --report used to overwrite an input image (or --refs) after captioning, exit 0."""
    photos = [tmp_path / photo.name for photo in PHOTOS[:2]]
    for photo, source in zip(photos, PHOTOS[:2], strict=True):
        photo.write_bytes(source.read_bytes())
    refs = tmp_path / "refs.json"
    refs.write_text('{"a.jpg": ["a photo"]}', encoding="utf-8")
    kept = {path: path.read_bytes() for path in (*photos, refs)}
    args = ["compare", *photos, "--model", f"a={tmp_path / 'none'}", "--model", f"b={tmp_path / 'none2'}"]
    for flag, target in (("--output", photos[1]), ("--report", photos[0]), ("--output", refs)):
        code, out, err = run_cli([*args, "--refs", refs, flag, target], capsys)
        assert (code, out) == (1, "")
        assert err == f"captionkit: error: {flag}: {target} is also an input; write the results to a new file\n"
    page = tmp_path / "c.html"
    code, out, err = run_cli([*args, "--output", page, "--report", page], capsys)
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: --report: {page} is also written by --output; write each to its own file\n"
    assert {path: path.read_bytes() for path in kept} == kept


@pytest.mark.parametrize(
    ("name", "refs", "column"),
    [("image", False, "image"), ("error", False, "error"), ("CIDEr a", True, "CIDEr a")],
)
def test_a_model_name_that_is_another_csv_column_is_refused_before_any_model_loads(
    name: str, refs: bool, column: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table had two columns of one name (`image,image,b,error`; `CIDEr a` twice with --refs), which no reader
    of the CSV can tell apart, and exit 0."""
    references = tmp_path / "refs.json"
    references.write_text(json.dumps({photo.name: ["a photo"] for photo in PHOTOS}))
    out = tmp_path / "c.csv"
    args = ["compare", *PHOTOS, "--model", f"a={tmp_path / 'none'}", "--model", f"{name}={tmp_path / 'none2'}"]
    code, stdout, err = run_cli([*args, "--output", out, *(["--refs", references] if refs else [])], capsys)
    assert (code, stdout) == (1, "")
    assert err.startswith(f"captionkit: error: --model: the model name {column!r} is also a column of the CSV table")
    assert err.endswith("; name the model otherwise with NAME=MODEL\n") and err.count("\n") == 1
    assert not out.exists()


def test_a_model_name_that_is_a_csv_column_is_fine_in_json_lines(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["compare", PHOTOS[0], "--model", f"image={models['blip']}", "--model", f"error={models['other']}"]
    code, _, err = run_cli([*args, "--beams", "1", "--max-length", "3", "--output", tmp_path / "c.jsonl"], capsys)
    assert code == 0, err
    [record] = records_of((tmp_path / "c.jsonl").read_text())
    assert set(record) == {"image", "captions"} and set(record["captions"]) == {"image", "error"}


def test_a_style_left_empty_after_the_at_sign_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`MODEL@` used to blame a string `''` of at most 200 characters, as if a style were given."""
    args = ["compare", PHOTOS[0], "--model", f"a={tmp_path}@", "--model", f"b={tmp_path / 'none'}"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (1, "")
    expected = f"--model 'a={tmp_path}@': no style after '@' (MODEL@STYLE, e.g. {tmp_path}@positive)"
    assert err == f"captionkit: error: {expected}\n"


def test_ctrl_c_says_that_no_records_were_written(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ctrl-C used to end compare with exit 130 and not a word, the captions so far lost without notice."""
    import captionkit.cli.compare as compare_cli

    def interrupted(*args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_cli, "_caption_all", interrupted)
    out = tmp_path / "c.jsonl"
    args = ["compare", *PHOTOS, "--model", f"a={models['blip']}", "--model", f"b={models['other']}", "--output", out]
    code, stdout, err = run_cli(args, capsys)
    assert (code, stdout) == (130, "")
    assert err == (
        "captionkit: interrupted: no records written (compare writes them once every model has captioned every image)\n"
    )
    assert not out.exists()
