"""HTML reports: ``evaluate --report`` (with CLIPScore from a tiny hub-layout CLIP) and the report's pieces."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from _data import real_photos
from _helpers import run_cli, save_tiny_model
from _hub_parts import save_clip
from captionkit import report
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.evaluation import score_captions
from captionkit.images import load_image
from captionkit.report import (
    THUMBNAIL,
    format_number,
    grid_table,
    image_data_uri,
    metric_table,
    write_comparison_report,
    write_evaluation_report,
)

EXTERNAL = re.compile(r"""(src|href)=["']?(https?:)?//""")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 20, 4, 6, seed=1, image_size=32)


@pytest.fixture(scope="module")
def model_dir(scenes, tmp_path_factory):
    captions = tuple(json.loads(line)["caption"] for line in scenes.read_text().splitlines())
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", captions=captions)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_clip(tmp_path_factory.mktemp("clip") / "clip", tokenizer=True)


def evaluate(scenes, model_dir, out, capsys, *extra):
    args = ["evaluate", "--model", model_dir, "--data", scenes, "--beams", "1", "--max-length", "6", "--output", out]
    return run_cli([*args, *extra], capsys)


def test_evaluate_with_clipscore_and_an_html_report_worst_first(scenes, model_dir, clip_dir, tmp_path, capsys):
    page_path = tmp_path / "report.html"
    metrics_arg = ["--metrics", "CIDEr,CLIPScore", "--clip-model", clip_dir, "--report", page_path]
    code, stdout, _ = evaluate(scenes, model_dir, tmp_path / "out", capsys, *metrics_arg)
    assert code == 0
    metrics = json.loads(stdout)
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(results) == metrics["images"] == 6
    for name in ("CIDEr", "CLIPScore", "RefCLIPScore"):
        assert metrics[name] == pytest.approx(sum(r["metrics"][name] for r in results) / 6)
    assert all(0 <= r["metrics"]["CLIPScore"] <= 2.5 for r in results)
    page = page_path.read_text()
    assert not EXTERNAL.search(page) and "<script" not in page
    assert page.count('<img class="thumb" src="data:image/png;base64,') == 6
    cider = {r["image_id"]: r["metrics"]["CIDEr"] for r in results}
    order = re.findall(r'<tr data-image-id="([^"]+)">', page)
    assert sorted(order) == sorted(cider) and [cider[i] for i in order] == sorted(cider.values())
    for result in results:
        assert f"<li>{result['references'][0]}</li>" in page
    assert f'<tr><th>CLIPScore</th><td class="number">{metrics["CLIPScore"]:.4f}</td></tr>' in page


def test_clipscore_with_a_model_that_is_not_clip_exits_1(scenes, model_dir, tmp_path, capsys):
    code, _, err = evaluate(scenes, model_dir, tmp_path, capsys, "--metrics", "CLIPScore", "--clip-model", model_dir)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(f"captionkit: error: --clip-model: {model_dir}: not a CLIP model")


def test_thumbnails_are_jpeg_for_photos_and_png_for_flat_scenes(scenes):
    photo = real_photos(1)[0]
    scene = sorted((scenes.parent / "images" / "test").glob("*.png"))[0]
    as_png = io.BytesIO()
    thumbnail = load_image(photo)
    thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
    thumbnail.save(as_png, format="PNG")
    photo_uri, scene_uri = image_data_uri(photo), image_data_uri(scene)
    assert photo_uri is not None and scene_uri is not None
    assert photo_uri.startswith("data:image/jpeg;base64,")
    assert len(base64.b64decode(photo_uri.split(",", 1)[1])) < len(as_png.getvalue()) / 3  # a report of photos
    assert scene_uri.startswith("data:image/png;base64,")  # exact colours, and smaller than JPEG here
    decoded = Image.open(io.BytesIO(base64.b64decode(scene_uri.split(",", 1)[1])))
    assert max(decoded.size) == THUMBNAIL


def test_metric_and_grid_tables_show_numbers_not_dicts():
    assert format_number(5000) == "5,000" and format_number(0.123456) == "0.1235" and format_number(None) == "None"
    table = metric_table({"CIDEr": 1.5, "images": 12, "style_accuracy": {"positive": 0.5}})
    assert table == (
        '<table class="metrics"><tr><th>CIDEr</th><td class="number">1.5000</td></tr>'
        '<tr><th>images</th><td class="number">12</td></tr></table>'
    )
    styles = grid_table({"style accuracy": {"neutral": 1.0, "positive": 0.75}, "content": {"positive": 0.5}})
    assert "{" not in styles
    assert '<tr><th>positive</th><td class="number">0.7500</td><td class="number">0.5000</td></tr>' in styles
    assert '<tr><th>neutral</th><td class="number">1.0000</td><td class="number">-</td></tr>' in styles


def test_compare_report_scores_each_models_captions_against_the_references(scenes, model_dir, tmp_path, capsys):
    other = save_tiny_model(
        tmp_path / "other", seed=1, captions=(json.loads(scenes.read_text().splitlines()[0])["caption"],)
    )
    records = [json.loads(line) for line in scenes.read_text().splitlines()]
    tests = {r["image"]: r["caption"] for r in records if r["split"] == "test" and r["style"] == "neutral"}
    images = sorted(str(scenes.parent / image) for image in tests)[:4]
    references = {Path(image).name: [tests[str(Path(image).relative_to(scenes.parent))]] for image in images}
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(references))
    page_path = tmp_path / "compare.html"
    args = ["compare", *images, "--model", f"a={model_dir}", "--model", f"b={other}", "--beams", "1"]
    code, stdout, err = run_cli([*args, "--max-length", "6", "--refs", refs, "--report", page_path], capsys)
    assert code == 0, err
    captions = {Path(r["image"]).name: r["captions"] for r in map(json.loads, stdout.splitlines())}
    page = page_path.read_text()
    assert not EXTERNAL.search(page) and page.count('<img class="thumb" src="data:image/png;base64,') == 4
    cider: dict[str, list[float]] = {name: [] for name in references}
    for model in ("a", "b"):
        candidates = {name: captions[name][model] for name in references}
        expected = score_captions(references, candidates, "BLEU,ROUGE_L,CIDEr", allow_empty=True)
        for name in references:
            cider[name].append(expected.per_image[name]["CIDEr"])
            caption = captions[name][model]
            assert f'{caption} <span class="number">(CIDEr-D {expected.per_image[name]["CIDEr"]:.4f})</span>' in page
        row = "".join(f'<td class="number">{expected.scores[k]:.4f}</td>' for k in ("Bleu_4", "ROUGE_L", "CIDEr"))
        assert f"<tr><th>{model}</th>{row}</tr>" in page
    order = [Path(image).name for image in re.findall(r'<tr data-image="([^"]+)">', page)]
    assert sorted(order) == sorted(references)
    assert [min(cider[name]) for name in order] == sorted(min(values) for values in cider.values())
    for (reference,) in references.values():
        assert f"<li>{reference}</li>" in page


def test_report_with_styles_is_a_usage_error(scenes, model_dir, tmp_path, capsys):
    code, _, err = evaluate(scenes, model_dir, tmp_path, capsys, "--styles", "--report", tmp_path / "r.html")
    assert code == 1 and not (tmp_path / "r.html").exists()
    assert err.strip() == (
        "captionkit: error: --report: not with --styles (the style table goes to stderr, and to styles.json with "
        "--output)"
    )


def test_lexicon_without_styles_is_a_usage_error(scenes, model_dir, tmp_path, capsys):
    lexicon = tmp_path / "words.txt"
    lexicon.write_text("good 1\n")
    code, out, err = evaluate(scenes, model_dir, tmp_path, capsys, "--lexicon", lexicon)
    assert code == 1 and out == ""
    assert err == "captionkit: error: --lexicon: only with --styles (its words train the style classifier)\n"


def test_compare_reads_the_references_before_any_model_loads(scenes, model_dir, tmp_path, capsys):
    images = sorted((scenes.parent / "images" / "test").iterdir())[:3]
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({images[0].name: ["a red circle"]}))
    out = tmp_path / "out.jsonl"
    # The second model cannot load: an error about it would mean the references were read after the models.
    models = ["--model", f"a={model_dir}", "--model", f"b={tmp_path / 'no-model'}", "--output", out]
    code, stdout, err = run_cli(["compare", *images, *models, "--refs", tmp_path / "missing.json"], capsys)
    assert (code, stdout) == (1, "")
    assert err == f"captionkit: error: {tmp_path / 'missing.json'}: no such file\n"
    code, stdout, err = run_cli(["compare", *images, *models, "--refs", refs], capsys)
    assert (code, stdout) == (1, "")
    assert err == f"captionkit: error: {refs}: no references for 2 of the 3 images: {images[1]}, {images[2]}\n"
    assert not out.exists()


def test_compare_scores_the_same_photo_in_two_folders_as_two_images(scenes, model_dir, tmp_path, capsys):
    other = save_tiny_model(tmp_path / "other", seed=1)
    photo, second = sorted((scenes.parent / "images" / "test").iterdir())[:2]
    copies = []
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        copies.append(tmp_path / folder / photo.name)
        copies[-1].write_bytes(photo.read_bytes())
    references = {photo.name: ["a small red circle", "a red circle"], second.name: ["a large blue square"]}
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(references))
    page_path = tmp_path / "compare.html"
    args = ["compare", *copies, second, "--model", f"a={model_dir}", "--model", f"b={other}", "--beams", "1"]
    code, stdout, err = run_cli([*args, "--max-length", "6", "--refs", refs, "--report", page_path], capsys)
    assert code == 0, err
    captions = {r["image"]: r["captions"] for r in map(json.loads, stdout.splitlines())}
    assert len(captions) == 3
    page = page_path.read_text()
    by_path = {str(path): references[path.name] for path in (*copies, second)}
    for model in ("a", "b"):
        expected = score_captions(by_path, {path: captions[path][model] for path in by_path}, "CIDEr", allow_empty=True)
        row = re.search(rf"<tr><th>{model}</th>(?:<td[^>]*>[^<]*</td>){{2}}<td[^>]*>([^<]*)</td></tr>", page)
        assert row is not None and row.group(1) == f"{expected.scores['CIDEr']:.4f}"
    assert len(re.findall(r'<tr data-image="[^"]+">', page)) == 3


def test_compare_of_unreadable_images_against_references_keeps_their_errors_exit_2(scenes, model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"broken.png": ["a red circle"]}))
    page_path = tmp_path / "compare.html"
    args = ["compare", broken, "--model", f"a={model_dir}", "--model", f"b={model_dir}", "--refs", refs]
    code, stdout, err = run_cli([*args, "--report", page_path], capsys)
    assert code == 2
    assert [set(json.loads(line)) for line in stdout.splitlines()] == [{"image", "error"}]
    assert "captionkit: note: no image could be read: nothing to score against --refs" in err
    assert "captionkit: error" not in err
    page = page_path.read_text()
    assert '<tr class="bad"><td>' + str(broken) in page and "<h2>Metrics</h2>" not in page


def test_an_evaluation_report_without_cider_keeps_the_input_order_and_says_so(scenes, model_dir, tmp_path, capsys):
    page_path = tmp_path / "report.html"
    code, _, err = evaluate(scenes, model_dir, tmp_path / "out", capsys, "--metrics", "BLEU", "--report", page_path)
    assert code == 0, err
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    page = page_path.read_text()
    assert "6 images, in input order (no CIDEr-D to sort by)." in page and "worst CIDEr-D" not in page
    assert re.findall(r'<tr data-image-id="([^"]+)">', page) == [r["image_id"] for r in results]


def test_a_file_name_that_is_not_utf8_is_shown_escaped_and_its_image_inlined(tmp_path):
    # Linux hands such a name to Python with a lone surrogate ("caf\udce9.jpg"), which UTF-8 cannot encode.
    photo = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.jpg"))
    shutil.copy(real_photos(1)[0], photo)
    result = {"image": str(photo), "image_id": photo.stem, "caption": "a dog <b>", "references": ["a dog"]}
    failed = {"image": str(tmp_path / "gone\udcff.png"), "error": "no such file"}
    page = write_evaluation_report(
        tmp_path / "e.html", [result | {"metrics": {"CIDEr": 1.0}}, failed], {"CIDEr": 1.0}
    ).read_text(encoding="utf-8")
    assert 'data-image-id="caf\\udce9"' in page and "gone\\udcff.png" in page and "a dog &lt;b&gt;" in page
    assert page.count('<img class="thumb" src="data:image/jpeg;base64,') == 1
    records = [{"image": str(photo), "captions": {"m\udce9": "a dog"}}]
    page = write_comparison_report(tmp_path / "c.html", records, ["m\udce9"]).read_text(encoding="utf-8")
    assert "<th>m\\udce9</th>" in page and f'data-image="{tmp_path}/caf\\udce9.jpg"' in page


def test_an_evaluation_report_keeps_what_its_metric_table_leaves_out(tmp_path):
    # A page shared alone must still say what the figures are over, the notes on them, and nocaps' domains.
    photo = real_photos(1)[0]
    result = {"image": str(photo), "image_id": "1", "caption": "a dog", "references": ["a dog"]}
    metrics = {
        "CIDEr": 0.5,
        "notes": ["the caption 'a <dog>' was given to 2 of 2 images (100%)"],
        "computed_over": {"captions": "one neutral caption per image & more", "references": "2 references"},
        "domains": {"in-domain": {"CIDEr": 0.25, "images": 1}, "out-domain": {"CIDEr": 0.75, "images": 3}},
        "logged_validation": {"val_cider": 0.125},
    }
    page = write_evaluation_report(tmp_path / "e.html", [result | {"metrics": {"CIDEr": 0.5}}], metrics).read_text()
    note = "<li>the caption &#x27;a &lt;dog&gt;&#x27; was given to 2 of 2 images (100%)</li>"
    assert f"<h2>Notes</h2>\n<ul>{note}</ul>" in page
    assert "<tr><th>captions</th><td>one neutral caption per image &amp; more</td></tr>" in page
    assert "<tr><th>references</th><td>2 references</td></tr>" in page
    domains = page.split("<h2>Per domain</h2>", 1)[1]
    assert domains.startswith('\n<table class="grid"><tr><th>domain</th><th>CIDEr</th><th>images</th></tr>')
    assert '<tr><th>out-domain</th><td class="number">0.7500</td><td class="number">3</td></tr>' in domains
    assert '<h2>logged_validation</h2>\n<table class="metrics"><tr><th>val_cider</th><td class="number">0.1250' in page
    assert "{" not in page.split("<body>")[1]


def test_a_comparison_report_has_as_many_header_cells_as_row_cells(tmp_path):
    photo = real_photos(1)[0]
    records = [{"image": str(photo), "captions": {"a": "a dog", "b": "a cat"}}, {"image": "gone.png", "error": "no"}]
    for references in (None, {}, {str(photo): ["a dog"]}):
        page = write_comparison_report(tmp_path / "c.html", records, ["a", "b"], references).read_text()
        table = page.split("<table>", 1)[1]
        header, captioned, failed = (
            re.findall(r"<tr[^>]*>(.*?)</tr>", table)[:1]
            + re.findall(r"<tr data-image=[^>]*>(.*?)</tr>", table)
            + re.findall(r'<tr class="bad">(.*?)</tr>', table)
        )
        width = header.count("<th>")
        assert width == 3 + (references is not None), references
        assert len(re.findall(r"<td[ >]", re.sub(r"<ul.*?</ul>", "", captioned))) == width
        span = re.search(r'colspan="(\d+)"', failed)
        assert span is not None and 1 + int(span.group(1)) == width


def test_an_evaluation_report_of_captions_in_several_styles_counts_images_not_captions(tmp_path):
    # evaluate --as-validation of a style model gives one result per image and style.
    photo = real_photos(1)[0]
    results: list[dict[str, Any]] = [
        {"image": str(photo), "image_id": image_id, "caption": f"a {style} dog", "references": ["a dog"]}
        | {"style": style, "metrics": {"CIDEr": cider}}
        for image_id, cider in (("1", 0.5), ("2", 0.25))
        for style in ("neutral", "positive")
    ]
    failed = {"image": "gone.png", "error": "no such file"}
    styles = {"neutral": {"CIDEr": 0.5, "notes": ["x"]}, "positive": {"CIDEr": 0.25}}
    page = write_evaluation_report(tmp_path / "e.html", [*results, failed], {"CIDEr": 0.375, "styles": styles})
    text = page.read_text()
    assert "<p>4 captions of 2 images (one per style), worst CIDEr-D first; 1 could not be read" in text
    assert "<th>references</th><th>style</th><th>CIDEr</th></tr>" in text
    assert '<td colspan="4">no such file</td>' in text  # caption, references, style, CIDEr
    assert len(re.findall(r"</ul></td><td>positive</td><td class=\"number\">", text)) == 2
    grid = text.split("<h2>Per style</h2>", 1)[1]
    assert grid.startswith('\n<table class="grid"><tr><th>style</th><th>CIDEr</th></tr>')
    assert '<tr><th>positive</th><td class="number">0.2500</td></tr>' in grid


def test_rows_past_the_thumbnail_cap_show_their_image_by_name(tmp_path, monkeypatch):
    """A report of thousands of images inlines thumbnails for the first rows (the worst) and names the rest: a page
    of 5,000 COCO images would otherwise weigh tens of MB."""
    monkeypatch.setattr(report, "MAX_THUMBNAILS", 2)
    photos = real_photos(3)
    results = [
        {"image": str(p), "image_id": p.stem, "caption": "a dog", "references": ["a dog"], "metrics": {"CIDEr": c}}
        for p, c in zip(photos, (0.9, 0.1, 0.5), strict=True)
    ]
    page = write_evaluation_report(tmp_path / "e.html", results, {"CIDEr": 0.5}).read_text()
    assert page.count('<img class="thumb"') == 2
    assert f'<td class="name" title="{photos[0]}">{photos[0].name}</td>' in page  # the best: last, named
    assert "worst CIDEr-D first; thumbnails of the first 2, the others by name." in page
    records = [{"image": str(p), "captions": {"a": "a dog"}} for p in photos]
    page = write_comparison_report(tmp_path / "c.html", records, ["a"]).read_text()
    assert page.count('<img class="thumb"') == 2 and page.count('<td class="name"') == 1
    assert "<p>3 images, in input order; thumbnails of the first 2, the others by name.</p>" in page
    monkeypatch.setattr(report, "MAX_THUMBNAILS", 3)
    page = write_comparison_report(tmp_path / "c.html", records, ["a"]).read_text()
    assert page.count('<img class="thumb"') == 3 and "thumbnails of the first" not in page
