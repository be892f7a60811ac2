"""The page's controls and what it sends, in headless Chromium against a scripted API (``page.route``): which
parameters each model gets, how refusals read, many images split into requests the server takes, HTML in names
and captions shown as text. The page against a real server: test_serve_browser.py."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from _browser import chromium_browser
from _serve import image_bytes
from captionkit.decoding.options import BY_FIELD
from captionkit.serve.params import _DECODING_NAMES

LIMITS = {"max_images": 16, "max_upload_bytes": 20 * 1024 * 1024, "max_beams": 8, "max_n_best": 8, "max_length": 64}


def served(name: str, styles=("neutral",), attention=True, prompt=False, max_length=64) -> dict[str, Any]:
    record = {"name": name, "family": "vit-gpt2", "parameters": 1000, "device": "cpu", "dtype": "fp32"}
    return record | {"styles": list(styles), "attention": attention, "prompt": prompt, "max_length": max_length}


MODELS = [
    served("plain"),
    served("styled", styles=("neutral", "positive", "negative")),
    served("lstm", attention=False, max_length=64),
    served("blip", prompt=True, max_length=30),
]


class Inputs(HTMLParser):
    """id -> the value (or placeholder) an input starts with; a select's selected option."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input" and found.get("id"):
            self.values[found["id"] or ""] = found.get("value") or found.get("placeholder") or ""
        elif tag == "select":
            self._select = found.get("id")
        elif tag == "option" and self._select and (self._select not in self.values or "selected" in found):
            self.values[self._select] = found.get("value") or ""


def test_the_page_starts_with_the_options_tables_defaults():
    parser = Inputs()
    parser.feed(static("index.html"))
    page = parser.values
    for name, field in _DECODING_NAMES.items():
        default = BY_FIELD[field].default.split(",")[0]  # "4, or 1 when sampling": the page starts on beam search
        if name == "do_sample":
            assert (page["strategy"] == "sample") == (default == "true")
        else:
            assert page[name] == default, name
    assert page["strategy"] == "beam"


@pytest.fixture(scope="module")
def browser():
    yield from chromium_browser()


class ScriptedApi:
    """Answers the page's requests: /v1/models from ``models``, /v1/captions with ``answer(fields, images)``
    (default: one caption per image, echoing its name); keeps each captions request's text fields and images."""

    def __init__(self, models: list[dict], limits: dict | None = None, answer=None) -> None:
        self.models = models
        self.limits = limits or LIMITS
        self.answer = answer or self.captions
        self.requests: list[tuple[dict[str, str], list[str]]] = []

    def install(self, page) -> None:
        page.route(
            "**/v1/models",
            lambda route: route.fulfill(json={"default": "plain", "limits": self.limits, "models": self.models}),
        )
        page.route("**/v1/captions", self.route)

    def route(self, route) -> None:
        body = route.request.post_data_buffer
        fields = {k.decode(): v.decode() for k, v in re.findall(rb'name="([^"]+)"\r\n\r\n([^\r]*)\r\n', body)}
        images = [name.decode() for name in re.findall(rb'name="image"; filename="([^"]*)"', body)]
        self.requests.append((fields, images))
        status, answer, headers = self.answer(fields, images)
        route.fulfill(status=status, json=answer, headers=headers)

    @staticmethod
    def captions(fields: dict[str, str], images: list[str]):
        results = [
            {
                "index": i,
                "image": name,
                "caption": f"caption of {name}",
                "score": -1.5,
                "captions": [{"caption": f"caption of {name}", "score": -1.5}],
            }
            for i, name in enumerate(images)
        ]
        return (
            200,
            {"model": fields["model"], "style": "neutral", "decoding": {}, "results": results, "latency_ms": 3.0},
            {},
        )


OPENED: list = []  # the pages a test opened, closed after it (an open page left behind can take the focus)


@pytest.fixture(autouse=True)
def close_pages():
    yield
    while OPENED:
        OPENED.pop().close()


def open_page(browser, api: ScriptedApi, url: str = "http://captionkit.test/"):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    OPENED.append(page)
    for path, name, kind in (
        ("", "index.html", "text/html"),
        ("static/app.js", "app.js", "text/javascript"),
        ("static/style.css", "style.css", "text/css"),
    ):
        page.route(url + path, serving(name, kind))
    api.install(page)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("#model-list input")
    return page, errors


def serving(name: str, kind: str):
    """A route handler answering with the packaged static file ``name``."""
    return lambda route: route.fulfill(body=static(name), content_type=kind)


def static(name: str) -> str:
    return resources.files("captionkit.serve").joinpath("static", name).read_text(encoding="utf-8")


def pick(page, names: list[str]) -> None:
    for box in page.locator("#model-list input").all():
        box.set_checked(box.get_attribute("value") in names)


def photo(tmp_path: Path, name: str = "photo.jpg") -> Path:
    path = tmp_path / name
    path.write_bytes(image_bytes())
    return path


def run_and_wait(page) -> str:
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')", timeout=30_000)
    return page.locator("#status").inner_text()


def test_controls_a_model_does_not_take_are_disabled_and_explained(browser):
    page, errors = open_page(browser, ScriptedApi(MODELS))
    pick(page, ["plain", "lstm"])
    assert page.locator("#style").is_disabled() and page.locator("#prompt").is_disabled()
    assert page.locator("#style-note").inner_text() == "no selected model was trained with styles"
    assert page.locator("#prompt-note").inner_text() == "no selected model takes a prompt"
    assert page.locator("#attention-note").inner_text() == "attention maps: sent to plain only"
    pick(page, ["lstm"])
    assert page.locator("#attention").is_disabled()
    assert page.locator("#attention-note").inner_text() == "no selected model takes attention maps"
    pick(page, ["plain", "styled", "blip"])
    assert page.locator("#style option").all_inner_texts() == ["neutral", "positive", "negative"]
    assert page.locator("#style-note").inner_text() == "styles apply to styled; the others caption neutral"
    assert page.locator("#prompt-note").inner_text() == "a prompt: sent to blip only"
    assert page.locator("#max_length").get_attribute("max") == "30"  # the shortest selected model's
    assert page.locator("#num_beams").get_attribute("max") == "8"  # the server's limit
    for control in ("#style", "#prompt", "#attention"):  # each control is labelled, and its note tied to it
        assert page.locator(control).get_attribute("aria-describedby") == control[1:] + "-note"
    unlabelled = "[...document.querySelectorAll('input, select')].filter((e) => !e.labels.length).map((e) => e.id)"
    assert page.evaluate(unlabelled) == []
    assert not errors, errors


def test_a_model_without_neutral_asks_for_a_style(browser, tmp_path):
    """A model trained on positive and negative alone lists no neutral: the page says it needs a style while neutral
    is chosen, and sends the style once one is."""
    models = [served("plain"), served("pn", styles=("positive", "negative"))]
    api = ScriptedApi(models)
    page, errors = open_page(browser, api)
    note = page.locator("#model-list label", has_text="pn").locator("small").inner_text()
    assert note == "vit-gpt2 · 0.00M params · cpu · styles: positive, negative · attention"
    pick(page, ["plain", "pn"])
    assert page.locator("#style option").all_inner_texts() == ["neutral", "positive", "negative"]
    assert page.locator("#style-note").inner_text() == "pn: no neutral captions (trained on styles alone); pick a style"
    page.select_option("#style", "negative")
    assert page.locator("#style-note").inner_text() == "styles apply to pn; the others caption neutral"
    page.set_input_files("#files", str(photo(tmp_path)))
    run_and_wait(page)
    sent = {fields["model"]: fields.get("style") for fields, _ in api.requests}
    assert sent == {"plain": None, "pn": "negative"}
    assert not errors, errors


def test_each_model_gets_the_parameters_it_takes_with_the_tables_defaults(browser, tmp_path):
    api = ScriptedApi(MODELS)
    page, errors = open_page(browser, api)
    pick(page, ["plain", "styled", "lstm", "blip"])
    page.set_input_files("#files", str(photo(tmp_path)))
    page.select_option("#style", "positive")
    page.fill("#prompt", "a photo of")
    page.check("#attention")
    page.fill("#length_penalty", "")  # an emptied field is left out: the server's default applies
    assert run_and_wait(page) == "done"
    sent = {fields["model"]: fields for fields, _ in api.requests}
    defaults = {"num_beams": "4", "max_length": "20", "n_best": "1"}
    assert sent == {
        "plain": {"model": "plain", **defaults, "attention": "true"},
        "styled": {"model": "styled", **defaults, "style": "positive", "attention": "true"},
        "lstm": {"model": "lstm", **defaults},
        "blip": {"model": "blip", **defaults, "prompt": "a photo of", "attention": "true"},
    }
    notes = {
        card.get_attribute("data-model"): card.locator(".note").all_inner_texts()
        for card in page.locator("#results .card").all()
    }
    assert notes["lstm"] == ["no positive style: neutral caption; takes no prompt; no attention maps"]
    assert notes["styled"] == ["takes no prompt"]
    api.requests.clear()
    first_thumbnail = page.locator("#results img").first.get_attribute("src")
    page.select_option("#strategy", "sample")
    page.fill("#seed", "7")
    page.fill("#n_best", "3")
    run_and_wait(page)
    fields = next(fields for fields, _ in api.requests if fields["model"] == "plain")
    sampling = {"do_sample": "true", "temperature": "1", "top_k": "0", "top_p": "1", "seed": "7", "n_best": "3"}
    assert fields == {"model": "plain", "max_length": "20", "attention": "true", **sampling}  # no num_beams: 1
    # The first run's thumbnail was released when the second run's replaced it (or every run keeps its images).
    released = "(url) => fetch(url).then(() => false, () => true)"
    assert page.evaluate(released, first_thumbnail)
    page.select_option("#strategy", "greedy")
    assert page.locator("#n_best").is_hidden()  # greedy search writes one caption
    assert not errors, errors


def refusing(fields: dict[str, str], images: list[str]):
    if fields["model"] == "plain":
        errors = [
            {"field": "num_beams", "error": "must be at most 8 on this server, got 9"},
            {"field": "top_p", "error": "must be in (0, 1], got 2"},
        ]
        return 422, {"detail": "num_beams: must be at most 8 on this server, got 9 (and 1 more)", "errors": errors}, {}
    return (
        503,
        {"detail": "model 'styled': queue full (64 of 64 image places taken, 1 needed); retry later"},
        {"Retry-After": "3"},
    )


def test_refusals_read_in_full(browser, tmp_path):
    page, errors = open_page(browser, ScriptedApi(MODELS, answer=refusing))
    pick(page, ["plain", "styled"])
    page.set_input_files("#files", str(photo(tmp_path)))
    assert run_and_wait(page) == "done; 2 of 2 refused (in red)"
    plain, styled = (
        page.locator(f"#results .card[data-model='{m}'] .refusal").inner_text() for m in ("plain", "styled")
    )
    assert plain == "422: num_beams: must be at most 8 on this server, got 9; top_p: must be in (0, 1], got 2"
    assert styled == (
        "503: model 'styled': queue full (64 of 64 image places taken, 1 needed); retry later"
        " (server busy: retry in 3 s)"
    )
    assert not errors, errors


def refusing_notes(fields: dict[str, str], images: list[str]):
    """Refuses a request holding notes.jpg (415, naming it in ``errors``); captions any other."""
    bad = [
        {"index": i, "image": name, "error": "unsupported image format (text)"}
        for i, name in enumerate(images)
        if name == "notes.jpg"
    ]
    if bad:
        return 415, {"detail": f"notes.jpg: {bad[0]['error']}", "errors": bad}, {}
    return ScriptedApi.captions(fields, images)


def test_many_images_go_in_requests_the_server_takes_and_bad_ones_do_not_sink_the_rest(browser, tmp_path):
    api = ScriptedApi(MODELS, limits=LIMITS | {"max_images": 2}, answer=refusing_notes)
    page, errors = open_page(browser, api)
    pick(page, ["plain"])
    files = [photo(tmp_path, f"{i}.jpg") for i in range(4)]
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    page.set_input_files("#files", [str(f) for f in [*files[:2], notes, *files[2:]]])
    assert run_and_wait(page) == "done; 1 of 5 refused (in red)"
    # Requests of at most 2 images; the one with the bad image is sent again without it.
    assert [images for _, images in api.requests] == [["0.jpg", "1.jpg"], ["notes.jpg", "2.jpg"], ["2.jpg"], ["3.jpg"]]
    rows = page.locator("#results .row").all()
    texts = [row.locator(".card .text, .card .refusal").first.inner_text() for row in rows]
    assert texts == [
        "caption of 0.jpg",
        "caption of 1.jpg",
        "415: unsupported image format (text)",
        "caption of 2.jpg",
        "caption of 3.jpg",
    ]
    assert not errors, errors


def test_seeded_sampling_gives_each_file_its_seed_however_the_files_are_split(browser, tmp_path):
    """The server samples image j of a request from seed + j: each request carries seed + its first file's index
    and holds consecutive files (a refused file's neighbours are resent apart), so file k always gets seed + k."""
    api = ScriptedApi(MODELS, limits=LIMITS | {"max_images": 3}, answer=refusing_notes)
    page, errors = open_page(browser, api)
    pick(page, ["plain"])
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    files = [photo(tmp_path, "a.jpg"), notes, photo(tmp_path, "b.jpg"), photo(tmp_path, "c.jpg")]
    page.set_input_files("#files", [str(f) for f in files])
    page.select_option("#strategy", "sample")
    page.fill("#seed", "7")
    assert run_and_wait(page) == "done; 1 of 4 refused (in red)"
    sent = [(images, fields["seed"]) for fields, images in api.requests]
    assert sent == [(["a.jpg", "notes.jpg", "b.jpg"], "7"), (["a.jpg"], "7"), (["b.jpg"], "9"), (["c.jpg"], "10")]
    api.requests.clear()
    page.select_option("#strategy", "beam")  # no seed: the good files of a refused request go back together
    run_and_wait(page)
    assert [images for _, images in api.requests] == [["a.jpg", "notes.jpg", "b.jpg"], ["a.jpg", "b.jpg"], ["c.jpg"]]
    assert all("seed" not in fields for fields, _ in api.requests)
    assert not errors, errors


def test_html_in_file_names_and_captions_is_shown_as_text(browser):
    markup = '<img src=x onerror="document.title=1">'

    def captions_with_markup(fields, images):
        status, body, headers = ScriptedApi.captions(fields, images)
        body["results"][0]["captions"][0]["caption"] = markup
        return status, body, headers

    page, errors = open_page(browser, ScriptedApi(MODELS, answer=captions_with_markup))
    pick(page, ["plain"])
    page.set_input_files("#files", {"name": "<b>bold</b>.jpg", "mimeType": "image/jpeg", "buffer": image_bytes()})
    run_and_wait(page)
    assert page.locator("#results .nbest .text").inner_text() == markup
    assert page.locator("#results .row > figure figcaption").inner_text() == "<b>bold</b>.jpg"
    assert page.locator("#results b, #results img:not([src^='blob:'])").count() == 0  # nothing parsed as HTML
    assert page.locator("#results img").get_attribute("alt") == "<b>bold</b>.jpg"
    assert page.title() == "captionkit"
    assert json.dumps(errors) == "[]"


def test_requests_stay_within_the_upload_limit(browser, tmp_path):
    files = [photo(tmp_path, f"{i}.jpg") for i in range(4)]
    # Room for two of these files per request: the page keeps 16 KiB for the parameters and 1 KiB per part.
    two = 16 * 1024 + 2 * (files[0].stat().st_size + 1024)
    api = ScriptedApi(MODELS, limits=LIMITS | {"max_upload_bytes": two})
    page, errors = open_page(browser, api)
    pick(page, ["plain"])
    page.set_input_files("#files", [str(f) for f in files])
    assert run_and_wait(page) == "done"
    assert [images for _, images in api.requests] == [["0.jpg", "1.jpg"], ["2.jpg", "3.jpg"]]
    assert not errors, errors


def test_a_body_too_large_for_a_proxy_is_sent_again_in_halves(browser, tmp_path):
    """A proxy in front takes less than the server says (nginx: 1 MiB by default) and answers 413 in HTML: the page
    sends the files again in halves, down to one; a file too large on its own is refused, naming the status."""

    def proxy_taking_one_file(fields, images):
        if len(images) > 1 or images == ["huge.jpg"]:
            return 413, {"detail": "HTTP 413 Request Entity Too Large"}, {}
        return ScriptedApi.captions(fields, images)

    api = ScriptedApi(MODELS, answer=proxy_taking_one_file)
    page, errors = open_page(browser, api)
    pick(page, ["plain"])
    names = ["0.jpg", "1.jpg", "huge.jpg", "3.jpg", "4.jpg"]
    page.set_input_files("#files", [str(photo(tmp_path, name)) for name in names])
    page.select_option("#strategy", "sample")
    page.fill("#seed", "7")
    assert run_and_wait(page) == "done; 1 of 5 refused (in red)"
    sent = [(images, fields["seed"]) for fields, images in api.requests]
    assert sent == [
        (names, "7"),
        (names[:3], "7"),
        (names[:2], "7"),
        (["0.jpg"], "7"),
        (["1.jpg"], "8"),
        (["huge.jpg"], "9"),
        (names[3:], "10"),
        (["3.jpg"], "10"),
        (["4.jpg"], "11"),  # file k samples from seed + k however often the files were split
    ]
    rows = page.locator("#results .row").all()
    texts = [row.locator(".card .text, .card .refusal").first.inner_text() for row in rows]
    assert texts == [
        "caption of 0.jpg",
        "caption of 1.jpg",
        "413: HTTP 413 Request Entity Too Large",
        "caption of 3.jpg",
        "caption of 4.jpg",
    ]
    assert not errors, errors


def test_a_number_the_browser_cannot_read_is_said_not_sent(browser, tmp_path):
    api = ScriptedApi(MODELS)
    page, errors = open_page(browser, api)
    pick(page, ["plain"])
    page.set_input_files("#files", str(photo(tmp_path)))
    page.fill("#max_length", "")
    page.locator("#max_length").press_sequentially("1e")  # not a number: the input's value reads ""
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').textContent !== ''")
    assert page.locator("#status").inner_text() == "Max length: not a number"
    assert api.requests == []  # rather than captioning with the default length
    assert not errors, errors


def test_the_drop_zone_works_from_the_keyboard(browser):
    page, errors = open_page(browser, ScriptedApi(MODELS))
    # Count the file input's clicks (what opens the file chooser) rather than wait for a chooser to open.
    page.evaluate(
        "(() => { const files = document.getElementById('files'); files.opened = 0;"
        " files.click = () => { files.opened += 1; }; })()"
    )
    for key in ("Enter", "Space"):
        page.focus("#drop")
        page.keyboard.press(key)
    assert page.evaluate("document.getElementById('files').opened") == 2
    # Space opens the chooser and nothing else: its default (scrolling the page) is prevented.
    pressed = "(() => { const e = new KeyboardEvent('keydown', {key: ' ', cancelable: true});"
    pressed += " document.getElementById('drop').dispatchEvent(e); return e.defaultPrevented; })()"
    assert page.evaluate(pressed)
    assert not errors, errors


def test_a_server_with_tighter_bounds_lowers_the_starting_values(browser, tmp_path):
    # `captionkit serve --max-beams 2 --max-new-tokens 6`: the page's 4 beams and 20 tokens would be refused (422).
    api = ScriptedApi([served("plain", max_length=6)], limits=LIMITS | {"max_beams": 2, "max_n_best": 2})
    page, errors = open_page(browser, api)
    assert [page.locator(f"#{name}").input_value() for name in ("num_beams", "max_length", "n_best")] == ["2", "6", "1"]
    page.set_input_files("#files", str(photo(tmp_path)))
    assert run_and_wait(page) == "done"
    ((fields, _),) = api.requests
    assert (fields["num_beams"], fields["max_length"]) == ("2", "6")
    assert not errors, errors
