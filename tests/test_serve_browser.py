"""The page end to end in headless Chromium (see _browser.py: skipped without chromium unless required)."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import pytest
from PIL import Image

from _browser import chromium_browser
from _data import real_photos
from _serve import load_tiny, running_server, save_tiny_model
from captionkit.serve import ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTO = real_photos(1)[0]


@pytest.fixture(scope="module")
def browser():
    yield from chromium_browser()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    models = {
        "baseline": load_tiny(save_tiny_model(root / "a", 0)),
        "fine-tuned": load_tiny(save_tiny_model(root / "b", 1)),
    }
    with running_server(create_app(models, ServeSettings(max_wait_ms=5))) as url:
        yield url


def caption_with_attention_maps(page, photo) -> None:
    """Caption ``photo`` (2 tokens at most) with attention maps on the open page, and wait until every map is drawn."""
    page.check("#attention")
    page.fill("#max_length", "2")
    page.set_input_files("#files", str(photo))
    page.click("#run")
    drawn = "[...document.querySelectorAll('canvas.attention-map')].every((c) => c.dataset.drawn === 'true')"
    page.wait_for_function(f"document.querySelectorAll('canvas.attention-map').length > 0 && {drawn}", timeout=30_000)


def test_page_captions_an_upload_with_two_models_side_by_side(browser, server_url, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    external: list[str] = []
    local = (server_url, "blob:" + server_url, "data:")  # blob: URLs are the page's own thumbnails
    page.on("request", lambda request: None if request.url.startswith(local) else external.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server_url + "/")
    page.wait_for_selector("#model-list input[value='fine-tuned']")
    assert page.locator("#model-list input:checked").count() == 2
    assert page.locator("#attention").is_enabled()  # both served models (vit-gpt2) report attention
    assert page.locator("#style option").all_inner_texts() == ["neutral"]  # the API's word, not "none"
    assert page.locator("#style").is_disabled() and page.locator("#prompt").is_disabled()  # no styles, no BLIP
    page.check("#attention")
    page.set_input_files("#files", str(PHOTO))
    page.select_option("#strategy", "beam")
    page.fill("#num_beams", "3")
    page.fill("#n_best", "3")
    page.fill("#max_length", "8")
    page.click("#run")
    page.wait_for_function("document.querySelectorAll('#results .card ol.nbest').length === 2", timeout=30_000)
    cards = page.locator("#results .card")
    assert [cards.nth(i).get_attribute("data-model") for i in range(2)] == ["baseline", "fine-tuned"]
    for i in range(2):
        assert cards.nth(i).locator("ol.nbest li").count() == 3  # the n-best list, with scores
        assert cards.nth(i).locator(".score").first.inner_text().startswith("-")
        assert "ms server" in cards.nth(i).locator(".latency").inner_text()
    assert page.locator("#status").inner_text() == "done"
    # The attention heatmaps of each best caption: one drawn canvas per token, labelled with the token.
    page.wait_for_function(
        "[...document.querySelectorAll('#results canvas.attention-map')].every((c) => c.dataset.drawn === 'true')"
    )
    labels = [cards.nth(i).locator(".attention figcaption").all_inner_texts() for i in range(2)]
    assert all(label.strip() for tokens in labels for label in tokens) and sum(map(len, labels)) > 0
    names = page.locator("canvas.attention-map").evaluate_all("(maps) => maps.map((c) => c.getAttribute('aria-label'))")
    assert all(name.startswith("attention of the token ") for name in names)  # a screen reader names each map
    assert page.locator("#results .row > figure figcaption").inner_text() == PHOTO.name
    screenshot = tmp_path / "page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    if os.environ.get("CAPTIONKIT_SCREENSHOT"):  # keep a copy to look at
        shutil.copy(screenshot, os.environ["CAPTIONKIT_SCREENSHOT"])
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    assert not errors, errors
    assert not external, external  # no CDN, no external asset
    page.close()


def test_a_refused_image_does_not_sink_the_others(browser, server_url, tmp_path):
    # One good photo and one text file dressed as a JPEG: the server refuses the whole request (415), naming the
    # bad image; the page sends the good photo again on its own, as the API asks of clients.
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.goto(server_url + "/")
    page.wait_for_selector("#model-list input[value='fine-tuned']")
    page.uncheck("#model-list input[value='fine-tuned']")
    page.set_input_files("#files", [str(PHOTO), str(bad)])
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')", timeout=30_000)
    rows = page.locator("#results .row")
    assert rows.nth(0).locator(".card ol.nbest li").count() == 1  # captioned
    assert rows.nth(1).locator(".card.error .refusal").inner_text().startswith("415: unsupported image format (text)")
    assert page.locator("#status").inner_text() == "done; 1 of 2 refused (in red)"
    page.close()


def test_docs_page_renders_the_api_offline(browser, server_url):
    page = browser.new_page()
    page.goto(server_url + "/docs")
    page.wait_for_selector(".route")
    text = page.locator("#routes").inner_text()
    assert "/v1/captions" in text and "num_beams" in text and "/v1/models" in text
    assert "Answer: {model, style, decoding, results, latency_ms}" in text  # the documented answer's fields
    page.close()


def test_a_photo_with_exif_rotation_shows_upright(browser, server_url, tmp_path):
    """A 60x30 JPEG whose EXIF says "rotate 90°": its thumbnail and attention maps are 30 wide, 60 high, as the
    server (which applies the rotation before captioning) sees it."""
    image = Image.linear_gradient("L").resize((60, 30)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    rotated = tmp_path / "rotated.jpg"
    image.save(rotated, "JPEG", exif=exif.tobytes())
    page = browser.new_page()
    page.goto(server_url + "/")
    page.wait_for_selector("#model-list input[value='fine-tuned']")
    page.uncheck("#model-list input[value='fine-tuned']")
    caption_with_attention_maps(page, rotated)
    thumb = page.evaluate(
        "(({naturalWidth, naturalHeight}) => [naturalWidth, naturalHeight])(document.querySelector('#results img'))"
    )
    assert thumb == [30, 60]
    maps = page.evaluate("[...document.querySelectorAll('canvas.attention-map')].map((c) => c.height / c.width)")
    assert maps and set(maps) == {2.0}
    page.close()


def test_heatmaps_of_a_cropping_model_cover_only_the_crop(browser, tmp_path):
    """A model that centre-crops (the shorter edge to 32, then 32x32) sees the middle third of a 120x40 photo: the
    page draws its grids there, and the two thirds it never saw get weight 0's tint alone, as the overlays that
    `captionkit caption --attention-maps` writes do."""
    captioner = load_tiny(save_tiny_model(tmp_path / "model", 0))
    captioner.preprocessing = replace(captioner.preprocessing, crop_from=32)
    photo = tmp_path / "grey.png"
    Image.new("RGB", (120, 40), (128, 128, 128)).save(photo)
    with running_server(create_app({"cropping": captioner}, ServeSettings(max_wait_ms=5))) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#model-list input[value='cropping']")
        caption_with_attention_maps(page, photo)
        # Each map is 96x32 px: columns 0-31 and 64-95 lie outside the crop, 32-63 inside.
        maps = page.evaluate(
            "[...document.querySelectorAll('canvas.attention-map')]"
            ".map((c) => [...c.getContext('2d').getImageData(0, 0, c.width, c.height).data])"
        )
        page.close()
    tint = [round(128 * 0.85 + channel * 0.15) for channel in (0, 0, 4)]  # COLOURS[0] at alpha 0.15 over grey
    for rgba in maps:
        assert len(rgba) == 32 * 96 * 4
        rows = [[rgba[(y * 96 + x) * 4 : (y * 96 + x) * 4 + 3] for x in range(96)] for y in range(32)]
        outside = [pixel for row in rows for x, pixel in enumerate(row) if x < 32 or x >= 64]
        inside = [pixel for row in rows for pixel in row[33:63]]
        assert all(abs(p - t) <= 2 for pixel in outside for p, t in zip(pixel, tint, strict=True)), outside[0]
        # The grid's peak is drawn inside, at alpha 0.75 of the colour map's top: far from the weight-0 tint.
        assert max(sum(abs(p - t) for p, t in zip(pixel, tint, strict=True)) for pixel in inside) > 100
