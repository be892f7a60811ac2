"""The server behind a reverse proxy that serves it under a path (``https://host/captions/``): the page, its files,
the docs and the API all work there, whether the prefix comes from ``--root-path`` (the proxy stripping it or not),
uvicorn's own ``--root-path``, or the ``X-Forwarded-Prefix`` header of a proxy that strips it."""

from __future__ import annotations

import re
from importlib import resources

import httpx
import pytest
from fastapi.testclient import TestClient

from _browser import chromium_browser
from _serve import image_bytes, load_tiny, prefix_proxy, running_server, save_tiny_model
from captionkit.errors import ConfigError
from captionkit.serve import ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("single_thread")

# A URL that starts at the server's root ("/static/app.js", fetch("/v1/models")), which a page under a prefix misses.
ROOTED = re.compile(r"""((src|href|action)=|url\(|@import|fetch\()\s*["'`]/""")
BASE = re.compile(r'<base href="([^"]*)">')


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    return load_tiny(save_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0))


def static(name: str) -> str:
    return resources.files("captionkit.serve").joinpath("static", name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["index.html", "docs.html", "app.js", "docs.js", "style.css"])
def test_static_files_use_no_url_rooted_at_the_server(name):
    assert not ROOTED.search(static(name)), ROOTED.search(static(name))


def test_root_path_serves_everything_whether_the_proxy_strips_it_or_not(captioner):
    app = create_app({"tiny": captioner}, ServeSettings(max_wait_ms=0, root_path="/captions"))
    with TestClient(app) as client:
        for prefix in ("", "/captions"):  # a proxy that strips the prefix, and one that passes it on
            page = client.get(prefix + "/")
            assert BASE.findall(page.text) == ["/captions/"], prefix
            assert page.text.index("<base") < page.text.index("static/style.css")  # before the first URL
            assert BASE.findall(client.get(prefix + "/docs").text) == ["/captions/"]
            for path in ("/static/app.js", "/static/docs.js", "/static/style.css", "/v1/models", "/readyz"):
                assert client.get(prefix + path).status_code == 200, prefix + path
            files = {"image": ("photo.jpg", image_bytes())}
            answer = client.post(prefix + "/v1/captions?max_length=2&num_beams=1", files=files)
            assert answer.status_code == 200, answer.text
        assert client.get("/openapi.json").json()["servers"] == [{"url": "/captions"}]
        # Requests are counted under their route, not as "other".
        metrics = client.get("/metrics").text
        assert 'captionkit_http_requests_total{path="/v1/captions",status="200"} 2.0' in metrics
        # The page at the prefix without its slash goes to it with the slash, for a proxy passing paths on as they are.
        moved = client.get("/captions", follow_redirects=False)
        assert moved.status_code == 307 and moved.headers["location"].endswith("/captions/")


def test_a_page_with_no_prefix_known_has_no_base(captioner):
    """Its relative URLs then work under any prefix the page is opened at with its trailing slash."""
    with TestClient(create_app({"tiny": captioner}, ServeSettings(max_wait_ms=0))) as client:
        assert not BASE.findall(client.get("/").text)
        assert not BASE.findall(client.get("/docs").text)


@pytest.mark.parametrize(
    ("header", "base"),
    [
        ("/captions", ["/captions/"]),
        ("/captions/", ["/captions/"]),
        ("/a/b-c_d.e~f", ["/a/b-c_d.e~f/"]),
        ("//evil.example", []),  # another host: never taken
        ("https://evil.example", []),
        ("/a/../b", []),
        ('/a"><script>', []),
        ("/", []),
    ],
)
def test_forwarded_prefix_is_taken_when_it_is_a_plain_path(captioner, header, base):
    with TestClient(create_app({"tiny": captioner}, ServeSettings(max_wait_ms=0))) as client:
        page = client.get("/", headers={"X-Forwarded-Prefix": header})
    assert BASE.findall(page.text) == base
    assert page.headers["vary"] == "X-Forwarded-Prefix"  # a cache keeps one page per prefix


def test_root_path_wins_over_a_forwarded_prefix(captioner):
    app = create_app({"tiny": captioner}, ServeSettings(max_wait_ms=0, root_path="/captions"))
    with TestClient(app) as client:
        assert BASE.findall(client.get("/", headers={"X-Forwarded-Prefix": "/other"}).text) == ["/captions/"]


@pytest.mark.parametrize("root_path", ["captions", "/captions/", "//host", "/a/../b", "/a b", '/"'])
def test_settings_refuse_a_root_path_that_is_not_a_plain_path(root_path):
    with pytest.raises(ConfigError, match=r"serve\.root_path: must be a path such as /captions"):
        ServeSettings(root_path=root_path)


def test_uvicorns_own_root_path_is_followed(captioner):
    """uvicorn --root-path (the app run by uvicorn, not by `captionkit serve`): the page's base and the metrics."""
    app = create_app({"tiny": captioner}, ServeSettings(max_wait_ms=0))
    with running_server(app, root_path="/captions") as url:
        page = httpx.get(url + "/")
        assert BASE.findall(page.text) == ["/captions/"]
        assert httpx.get(url + "/static/app.js").status_code == 200
        assert httpx.get(url + "/v1/models").status_code == 200
        metrics = httpx.get(url + "/metrics").text
    assert 'captionkit_http_requests_total{path="/v1/models",status="200"} 1.0' in metrics


# The page in Chromium behind a reverse proxy that serves the server under /captions/, stripping the prefix.


@pytest.fixture(scope="module")
def browser():
    yield from chromium_browser()


@pytest.fixture(scope="module")
def servers(captioner):
    """A server started with --root-path /captions, and one that knows no prefix."""
    knows = create_app({"tiny": captioner}, ServeSettings(max_wait_ms=0, root_path="/captions"))
    plain = create_app({"tiny": captioner}, ServeSettings(max_wait_ms=0))
    with running_server(knows) as knows_url, running_server(plain) as plain_url:
        yield {"root_path": knows_url, "plain": plain_url}


@pytest.mark.parametrize(
    ("backend", "forwarded_prefix", "opened_at"),
    [
        ("root_path", False, "/captions"),  # --root-path: the page works even without the trailing slash
        ("plain", True, "/captions"),  # a proxy that says X-Forwarded-Prefix
        ("plain", False, "/captions/"),  # no prefix known: relative URLs under the trailing slash
    ],
)
def test_the_page_captions_behind_a_proxy_under_a_prefix(
    browser, servers, tmp_path, backend, forwarded_prefix, opened_at
):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes())
    with prefix_proxy(servers[backend], "/captions", forwarded_prefix) as (proxy, asked):
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(proxy + opened_at)
            page.wait_for_selector("#model-list input[value='tiny']")
            page.fill("#max_length", "2")
            page.set_input_files("#files", str(photo))
            page.click("#run")
            done = "document.querySelector('#status').textContent.startsWith('done')"
            page.wait_for_function(done, timeout=30_000)
            assert page.locator("#status").inner_text() == "done", page.locator("#results").inner_text()
            assert page.locator("#results .card ol.nbest li").count() == 1
            page.click("header a[href='docs']")
            page.wait_for_selector(".route")
            assert page.url == proxy + "/captions/docs"
            assert "POST/captions/v1/captions" in page.locator("#routes").inner_text().replace(" ", "")
            assert page.locator("#example-url").inner_text() == proxy + "/captions/v1/captions"
        finally:
            page.close()
    assert not errors, errors
    assert "/captions/v1/captions" in asked
    assert all(path.startswith("/captions") for path in asked), asked  # nothing asked for outside the prefix
