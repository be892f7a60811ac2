"""The HTML reports in headless Chromium (see _browser.py): each page opens from disk with every image decoded,
no request leaves the file, and the tables read as the writers meant them (worst first, one row per style)."""

from __future__ import annotations

import pytest

from _browser import chromium_browser
from _data import real_photos
from captionkit.data.records import CaptionRecord
from captionkit.demo import write_report
from captionkit.report import THUMBNAIL, write_comparison_report, write_evaluation_report
from captionkit.training.curves import WIDTH, draw_curves

PHOTOS = real_photos(3)
IMAGES_DECODED = "[...document.images].every((i) => i.complete && i.naturalWidth > 0)"
LONGEST_THUMB = (
    "Math.max(...[...document.querySelectorAll('img.thumb')].map((i) => Math.max(i.naturalWidth, i.naturalHeight)))"
)


@pytest.fixture(scope="module")
def browser():
    yield from chromium_browser()


def open_page(browser, path):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    requests: list[str] = []
    errors: list[str] = []
    page.on(
        "request", lambda request: None if request.url.startswith(("file:", "data:")) else requests.append(request.url)
    )
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    assert page.evaluate(IMAGES_DECODED)
    return page, requests, errors


def test_evaluation_report_in_the_browser(browser, tmp_path):
    results = [
        {"image": str(photo), "image_id": photo.stem, "caption": f"caption {i}", "references": [f"ref {i}", "other"],
         "metrics": {"CIDEr": cider, "CLIPScore": 0.5}}
        for i, (photo, cider) in enumerate(zip(PHOTOS, (0.9, 0.1, 0.5), strict=True))
    ] + [{"image": "missing.jpg", "image_id": "missing", "error": "no such file"}]  # fmt: skip
    path = write_evaluation_report(tmp_path / "eval.html", results, {"CIDEr": 0.5, "images": 4})
    page, requests, errors = open_page(browser, path)
    rows = page.locator("tr[data-image-id]")
    assert [rows.nth(i).get_attribute("data-image-id") for i in range(3)] == [
        PHOTOS[1].stem,
        PHOTOS[2].stem,
        PHOTOS[0].stem,
    ]
    assert page.locator("tr.bad").first.inner_text().startswith("missing.jpg")  # unreadable images first
    assert rows.first.locator("ul.refs li").all_inner_texts() == ["ref 1", "other"]
    assert page.evaluate(LONGEST_THUMB) == THUMBNAIL
    assert page.locator("table.metrics").inner_text().split() == ["CIDEr", "0.5000", "images", "4"]
    assert not requests and not errors
    page.close()


def test_comparison_report_in_the_browser(browser, tmp_path):
    records = [{"image": str(p), "captions": {"a": f"a {i}", "b": f"b {i}"}} for i, p in enumerate(PHOTOS)]
    per_image = {str(p): {"a": a, "b": b} for p, a, b in zip(PHOTOS, (0.3, 0.9, 0.2), (0.8, 0.05, 0.7), strict=True)}
    references = {str(p): [f"ref {i}"] for i, p in enumerate(PHOTOS)}
    scores = {"CIDEr": {"a": 0.4667, "b": 0.5167}}
    path = write_comparison_report(tmp_path / "compare.html", records, ["a", "b"], references, scores, per_image)
    page, requests, errors = open_page(browser, path)
    order = [page.locator("tr[data-image]").nth(i).get_attribute("data-image") for i in range(3)]
    assert order == [str(PHOTOS[1]), str(PHOTOS[2]), str(PHOTOS[0])]  # by each image's lowest score
    assert page.locator("table.grid").inner_text().split() == ["model", "CIDEr", "a", "0.4667", "b", "0.5167"]
    assert "a 1 (CIDEr-D 0.9000)" in page.locator("tr[data-image]").first.inner_text()
    assert not requests and not errors
    page.close()


def test_demo_report_in_the_browser(browser, tmp_path):
    scenes = [CaptionRecord(p, f"scene {i}", "neutral", str(i)) for i, p in enumerate(PHOTOS)]
    generated = {"neutral": ["scene 0", "wrong", "scene 2"], "positive": ["nice 0", "nice 1", "nice 2"]}
    metrics = {"exact_match": 0.6667, "style_accuracy": {"neutral": 1.0, "positive": 0.5},
               "style_content_exact_match": {"positive": 0.25}}  # fmt: skip
    history = [{"step": s, "loss": 5.0 / s} | ({"val_loss": 4.0 / s} if s % 5 == 0 else {}) for s in range(1, 21)]
    curves = draw_curves(history, tmp_path / "curves.png")
    path = write_report(tmp_path / "report.html", scenes, generated, metrics, curves=curves)
    page, requests, errors = open_page(browser, path)
    assert page.locator("table.grid tr").all_inner_texts() == [
        "style\tstyle accuracy\tcontent exact match",
        "neutral\t1.0000\t-",
        "positive\t0.5000\t0.2500",
    ]
    assert page.locator("figure img").evaluate("(i) => i.naturalWidth") == WIDTH
    assert page.locator("tr.bad, tr.ok").first.get_attribute("class") == "bad"  # the failure first
    assert not requests and not errors
    page.close()
