"""The bad-input catalogue against `POST /v1/captions`: every case answers 4xx JSON (or 200 where the image is
valid), never 5xx, and the server captions a good image right after each one."""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _data import real_photos
from _serve import image_bytes, load_tiny, read_response, running_server, save_tiny_model
from captionkit.serve import ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("single_thread")

MAX_UPLOAD = 1024 * 1024  # room for a body of 10k small multipart parts
PHOTO = real_photos(1)[0]


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    return load_tiny(save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", seed=0))


@pytest.fixture(scope="module")
def client(captioner):
    """One server for the whole catalogue of bad requests; when the module is done, none was answered 5xx."""
    settings = ServeSettings(max_upload_bytes=MAX_UPLOAD, max_images=4, max_wait_ms=0)
    with TestClient(create_app({"tiny": captioner}, settings), raise_server_exceptions=False) as test_client:
        yield test_client
        assert 'status="5' not in test_client.get("/metrics").text


@pytest.fixture(autouse=True)
def still_serving(client):
    """After every case, the server still captions a good image."""
    yield
    response = post(client, image_bytes(), num_beams=1, max_length=4)
    assert response.status_code == 200, response.text


KNOWN_PARAMETERS = (
    "model, num_beams, max_length, length_penalty, n_best, do_sample, temperature, top_k, top_p, seed, style, prompt,"
    " attention"
)


def post(client, data: bytes, name: str = "upload", **params):
    files = [("image", (name, data, "application/octet-stream"))]
    return client.post("/v1/captions", files=files, data={k: str(v) for k, v in params.items()})


def refused(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body["detail"], str) and "\n" not in body["detail"] and body["detail"]
    return body


# --- images --------------------------------------------------------------------------------------------------


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1x1 PNG whose header claims ``width x height`` (with a correct CRC): 900 MP from 70 bytes."""
    data = bytearray(image_bytes("PNG", size=(1, 1)))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def exif_rotated() -> bytes:
    image = Image.linear_gradient("L").resize((60, 30)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (24, 24), color) for color in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'


@pytest.mark.parametrize(
    ("case", "data", "status", "reason"),
    [
        ("zero bytes", b"", 422, "empty file"),
        ("not an image", b"hello, this is plain text and no picture at all\n" * 4, 415, "unsupported image format"),
        ("truncated JPEG", PHOTO.read_bytes()[:4000], 422, "truncated JPEG data"),
        ("PNG bomb", png_bomb(), 422, "decompression bomb"),
        ("SVG", SVG, 415, "unsupported image format (SVG)"),
        ("PDF", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", 415, "unsupported image format (PDF)"),
        ("JPEG header only", b"\xff\xd8\xff\xe0", 422, "corrupt JPEG header"),
    ],
)
def test_bad_image_is_refused_with_a_reason(client, case, data, status, reason):
    body = refused(post(client, data, name="bad.jpg", num_beams=1), status)
    assert body["detail"].startswith("bad.jpg: ")
    assert reason in body["detail"], case
    assert body["errors"] == [{"index": 0, "image": "bad.jpg", "error": body["detail"].removeprefix("bad.jpg: ")}]


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("real photo", PHOTO.read_bytes()),
        ("16-bit PNG", image_bytes("PNG", mode="I;16")),
        ("CMYK JPEG", image_bytes("JPEG", mode="CMYK")),
        ("EXIF-rotated JPEG", exif_rotated()),
        ("animated GIF (first frame)", animated_gif()),
        ("palette PNG with transparency", image_bytes("PNG", mode="P", transparency=0)),
        ("WebP", image_bytes("WEBP")),
        ("TIFF", image_bytes("TIFF")),
        ("BMP", image_bytes("BMP")),
    ],
)
def test_valid_but_unusual_images_are_captioned(client, case, data):
    response = post(client, data, name="ok.img", num_beams=2, max_length=5)
    assert response.status_code == 200, f"{case}: {response.text}"
    [result] = response.json()["results"]
    assert result["image"] == "ok.img" and isinstance(result["caption"], str)


def test_a_bad_image_among_good_ones_refuses_the_request_naming_each_bad_one(client):
    files = [
        ("image", ("good.png", image_bytes("PNG"), "image/png")),
        ("image", ("empty.jpg", b"", "image/jpeg")),
        ("image", ("vector.png", SVG, "image/png")),
    ]
    body = refused(client.post("/v1/captions", files=files), 422)  # the first bad image's status
    assert body["detail"] == "empty.jpg: empty file (and 1 more bad images)"
    assert [e["image"] for e in body["errors"]] == ["empty.jpg", "vector.png"]
    assert body["errors"][1]["error"].startswith("unsupported image format (SVG)")


def test_image_type_comes_from_the_bytes_not_the_name_or_declared_type(client):
    files = [("image", ("photo.jpg", SVG, "image/jpeg"))]
    refused(client.post("/v1/captions", files=files), 415)
    files = [("image", ("drawing.svg", image_bytes("PNG"), "image/svg+xml"))]
    assert client.post("/v1/captions", files=files).status_code == 200


# --- the request itself ---------------------------------------------------------------------------------------


def test_huge_body_is_413(client):
    body = refused(post(client, b"\xff\xd8\xff" + b"\0" * (MAX_UPLOAD + 10)), 413)
    assert body["detail"] == "request body: over the 1 MiB upload limit"


def test_huge_declared_length_is_413_before_reading(captioner):
    """Through uvicorn on a raw socket: only the head goes out (Content-Length 10**12, not one body byte) and the 413
    comes back. A server that read the body first would still be waiting for it (its read timeout is an hour here),
    and the socket's timeout would fail the test."""
    settings = ServeSettings(max_upload_bytes=MAX_UPLOAD, read_timeout_s=3600, max_wait_ms=0)
    head = b"POST /v1/captions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
    head += f"content-length: {10**12}\r\n\r\n".encode()
    with running_server(create_app({"tiny": captioner}, settings)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(head)
            status, headers, body = read_response(sock)
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"detail": "request body: over the 1 MiB upload limit"}


@pytest.mark.parametrize(
    ("headers", "content", "status", "reason"),
    [
        ({"content-type": "text/plain"}, b"hello", 415, "Content-Type: text/plain is not accepted"),
        ({"content-type": "image/jpeg"}, image_bytes(), 415, "Content-Type: image/jpeg is not accepted"),
        ({}, b"", 415, "Content-Type: none is not accepted"),
        ({"content-type": "application/x-www-form-urlencoded"}, b"image=abc", 415, "is not accepted"),
        ({"content-type": "multipart/form-data"}, b"--x\r\n", 400, "multipart data (Missing boundary in multipart.)"),
        # A multipart body with no complete part holds no image.
        ({"content-type": "multipart/form-data; boundary=zz"}, b"--zz\r\ngarbage", 422, "no image in the request"),
        ({"content-type": "application/json"}, b"{not json", 400, "invalid JSON"),
        ({"content-type": "application/json"}, b"[1, 2]", 422, "body: must be a JSON object, got an array"),
        ({"content-type": "application/json"}, b'{"images": "abc"}', 422, "must be a list of base64 strings"),
        ({"content-type": "application/json"}, b'{"images": ["@@@"]}', 422, "images[0]: invalid base64"),
        ({"content-type": "application/json"}, b'{"num_beams": 2}', 422, "images: no image in the request"),
    ],
)
def test_wrong_content_type_or_malformed_body(client, headers, content, status, reason):
    body = refused(client.post("/v1/captions", content=content, headers=headers), status)
    assert reason in body["detail"]


def test_missing_image_field(client):
    body = refused(client.post("/v1/captions", files=[("picture", ("a.png", image_bytes("PNG")))]), 422)
    assert body["detail"].startswith("picture: unexpected file field")
    body = refused(client.post("/v1/captions", files={"num_beams": (None, "2")}), 422)
    assert body["detail"].startswith("image: no image in the request")
    body = refused(client.post("/v1/captions", files={"image": (None, "not a file")}), 422)
    assert body["detail"] == "image: is a text field; send the image as a file upload"


def test_no_image_names_the_field_of_the_bodys_kind(client):
    """JSON carries images in "images", a form in "image": the refusal names the one its body uses, and says so
    when the request put them in the other one."""
    photo = base64.b64encode(image_bytes()).decode()
    body = refused(client.post("/v1/captions", json={"image": photo}), 422)
    assert body["detail"] == "images: no image in the request; send 'images': [base64, ...], not 'image'"
    body = refused(client.post("/v1/captions", json={"num_beams": 2}), 422)
    assert body["errors"] == [{"field": "images", "error": "no image in the request; send 'images': [base64, ...]"}]
    body = refused(client.post("/v1/captions", files={"images": (None, photo)}), 422)
    assert body["detail"] == "image: no image in the request; send one or more 'image' file fields, not 'images'"


def test_oversized_text_field_is_400_naming_it(client):
    files = [("image", ("a.png", image_bytes("PNG"), "image/png")), ("style", (None, "x" * 10_000))]
    body = refused(client.post("/v1/captions", files=files), 400)
    assert body["detail"] == "request body: field 'style' is over 4096 bytes, the most a parameter takes"


def test_a_photo_sent_as_a_text_field_is_told_to_go_as_a_file(client):
    """curl -F image=<photo.jpg (not @photo.jpg) sends the photo's bytes as a text field: whatever its size, the
    refusal says so, rather than calling a photo over 4 KiB a malformed body."""
    photo = PHOTO.read_bytes()
    assert len(photo) > 4096
    for data in (image_bytes(size=(8, 8)), photo):
        body = refused(client.post("/v1/captions", files={"image": (None, data)}), 422)
        assert body["errors"] == [{"field": "image", "error": "is a text field; send the image as a file upload"}]


def test_too_many_images(client):
    files = [("image", (f"{i}.png", image_bytes("PNG"), "image/png")) for i in range(5)]
    assert refused(client.post("/v1/captions", files=files), 422)["detail"] == (
        "image: 5 images, at most 4 per request"
    )


def test_too_many_json_images_are_said_before_any_is_decoded(client):
    payload = {"images": ["not base64!"] * 5}
    body = refused(client.post("/v1/captions", json=payload), 422)
    assert body["detail"] == "images: 5 images, at most 4 per request" and len(body["errors"]) == 1


def test_json_base64_of_a_bad_image(client):
    payload = {"images": [base64.b64encode(b"GIF89a broken").decode()]}
    body = refused(client.post("/v1/captions", json=payload), 422)
    assert body["errors"][0]["image"] == "images[0]"


# --- parameters -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ({"num_beams": 0}, "num_beams", "must be in [1, 64], got 0"),
        ({"num_beams": 1000}, "num_beams", "must be at most 8 on this server, got 1000"),  # the bound that holds
        ({"num_beams": 0}, "num_beams", "must be in [1, 64], got 0"),
        ({"num_beams": 9}, "num_beams", "must be at most 8 on this server, got 9"),
        ({"num_beams": "abc"}, "num_beams", "must be an integer, got 'abc'"),
        ({"num_beams": "2.5"}, "num_beams", "must be an integer"),
        ({"max_length": 10_000}, "max_length", "must be at most 64 on this server, got 10000"),
        ({"max_length": 100}, "max_length", "must be at most 64 on this server, got 100"),
        ({"n_best": 3, "num_beams": 2}, "n_best", "beam search returns at most 2 captions per image"),
        ({"do_sample": "maybe"}, "do_sample", "must be true or false, got 'maybe'"),
        ({"do_sample": "true", "temperature": 0}, "temperature", "must be >= 0.0001, got 0 (a smaller temperature is"),
        ({"length_penalty": 6}, "length_penalty", "must be in [-1, 5], got 6"),
        ({"length_penalty": -1.5}, "length_penalty", "must be in [-1, 5], got -1.5"),
        ({"do_sample": "true", "temperature": 11}, "temperature", "must be at most 10 on this server, got 11"),
        ({"do_sample": "true", "temperature": "nan"}, "temperature", "must be a finite number"),
        ({"do_sample": "true", "top_p": 1.5}, "top_p", "must be in (0, 1], got 1.5"),
        ({"do_sample": "true", "num_beams": 4}, "num_beams", "beam sampling is not supported"),
        ({"top_k": 5}, "top_k", "only used when sampling"),
        ({"seed": -1}, "seed", "must be in [0, "),
        ({"length_penalty": "inf"}, "length_penalty", "must be a finite number"),
        ({"model": "gpt-17"}, "model", "unknown model 'gpt-17' (served: tiny)"),
        ({"style": "positive"}, "style", "model 'tiny' was trained without styles: it cannot write positive captions"),
        ({"style": "happy"}, "style", "unknown style 'happy' (known: neutral, positive, negative)"),
        ({"prompt": "a photo of"}, "prompt", "model 'tiny' is a vit-gpt2 model: it takes no text prompt (blip does)"),
        ({"attention": "maybe"}, "attention", "must be true or false, got 'maybe'"),
        ({"beam": 4}, "beam", "unknown parameter"),
        ({"beams": 0}, "beams", "must be in [1, 64], got 0"),  # the options table's alias, named as given
        ({"num_beams": 2, "beams": 3}, "beams", "the same parameter as num_beams: give one of them"),
    ],
)
def test_out_of_range_parameters_are_422_naming_the_field(client, params, field, reason):
    body = refused(post(client, image_bytes(), **params), 422)
    assert body["detail"].startswith(f"{field}: ")
    assert reason in body["detail"]
    assert body["errors"][0]["field"] == field


def test_the_options_tables_other_names_are_taken_as_the_cli_and_the_api_take_them(client):
    """README: the CLI, the API and the server share names and aliases; the server refused beams, max_new_tokens,
    num_return_sequences and sample with "unknown parameter"."""
    plain = post(client, image_bytes(), num_beams=2, max_length=5, n_best=2).json()["results"]
    other = post(client, image_bytes(), beams=2, max_new_tokens=5, num_return_sequences=2).json()["results"]
    assert other == plain and len(plain[0]["captions"]) == 2
    sampled = post(client, image_bytes(), sample="true", seed=3, max_length=5).json()["results"]
    assert sampled == post(client, image_bytes(), do_sample="true", seed=3, max_length=5).json()["results"]


@pytest.mark.parametrize(
    ("given", "meant"),
    [("n-best", "n_best"), ("--top-k", "top_k"), ("Beams", "beams"), ("beam", "beams"), ("temprature", "temperature")],
)
def test_an_unknown_parameter_says_which_one_it_likely_means(client, given, meant):
    """The CLI's spellings (--n-best, --top-k) and near misses are named in the refusal; never guessed at."""
    body = refused(post(client, image_bytes(), **{given: "2"}), 422)
    assert body["errors"] == [
        {"field": given, "error": f"unknown parameter; did you mean {meant}? (known: {KNOWN_PARAMETERS})"}
    ]


def test_a_far_off_parameter_gets_no_suggestion(client):
    body = refused(post(client, image_bytes(), colour="red"), 422)
    assert body["detail"] == f"colour: unknown parameter (known: {KNOWN_PARAMETERS})"


def test_all_bad_parameters_are_listed(client):
    body = refused(post(client, image_bytes(), num_beams=0, max_length=0, top_p="x"), 422)
    assert {e["field"] for e in body["errors"]} == {"num_beams", "max_length", "top_p"}
    assert body["detail"].endswith("(and 2 more)")


def test_neutral_is_the_one_name_of_the_plain_style(client):
    assert post(client, image_bytes(), style="neutral", num_beams=1).json()["style"] == "neutral"
    assert post(client, image_bytes(), num_beams=1).json()["style"] == "neutral"
    body = refused(post(client, image_bytes(), style="none", num_beams=1), 422)
    assert body["detail"] == "style: unknown style 'none' (known: neutral, positive, negative)"


def test_parameter_in_query_and_body_is_refused(client):
    files = [("image", ("a.png", image_bytes("PNG"), "image/png"))]
    body = refused(client.post("/v1/captions?num_beams=2", files=files, data={"num_beams": "3"}), 422)
    assert body["detail"] == "num_beams: given both as a query parameter and in the body"


def test_repeated_query_parameter_is_refused(client):
    files = [("image", ("a.png", image_bytes("PNG"), "image/png"))]
    body = refused(client.post("/v1/captions?num_beams=1&num_beams=8&seed=1&seed=2", files=files), 422)
    assert body["errors"] == [
        {"field": "num_beams", "error": "given more than once"},
        {"field": "seed", "error": "given more than once"},
    ]


def test_repeated_form_field_is_refused(client):
    files = [
        ("image", ("a.png", image_bytes("PNG"), "image/png")),
        ("num_beams", (None, "2")),
        ("num_beams", (None, "3")),
    ]
    assert refused(client.post("/v1/captions", files=files), 422)["detail"] == "num_beams: given more than once"


def test_wrong_method_and_path_are_json_4xx_naming_the_request(client):
    """Not Starlette's bare "Not Found": the path asked for, and what the API has or allows instead."""
    wrong_method = client.get("/v1/captions")
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")
    assert wrong_method.json() == {"detail": "GET /v1/captions: method not allowed; use POST"}
    routes = "POST /v1/captions, GET /v1/models, /healthz, /readyz, /metrics, /docs, / (the page)"
    for path in ("/v1/caption", "/static/nothing.js"):  # a typo, and a file the page does not have
        missing = client.get(path)
        assert (missing.status_code, missing.json()) == (404, {"detail": f"{path}: not found (routes: {routes})"})
    long = client.get("/x" * 200).json()["detail"]
    assert long.startswith("/x/x") and long.index("...: not found") == 197


def test_head_is_answered_as_get_without_the_body(client):
    # Load balancers and `curl -I` probe with HEAD: a GET route answers it, headers and all, never 405.
    for path in ("/", "/docs", "/healthz", "/readyz", "/v1/models", "/openapi.json", "/metrics", "/static/app.js"):
        head, get = client.head(path), client.get(path)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == get.headers["content-type"]
    assert client.head("/").headers["content-length"] == str(len(client.get("/").content))
    refused = client.head("/v1/captions")  # no GET there: still 405, saying what is allowed
    assert (refused.status_code, refused.headers["allow"]) == (405, "POST")
    assert client.head("/v1/nothing").status_code == 404


def test_max_length_beyond_the_models_positions_is_422(tmp_path):
    # A model with 16 decoder positions cannot write 20 tokens: refused up front, not a 500 from the model thread.
    import torch

    from captionkit.images import Preprocessing
    from captionkit.models.registry import create_model
    from captionkit.text import train_bpe_tokenizer
    from captionkit.training.checkpoint import save_checkpoint

    tokenizer = train_bpe_tokenizer(["a dog runs on the grass"] * 5, 300, True, 1)
    torch.manual_seed(0)
    model = create_model("vit-gpt2", "tiny", tokenizer, decoder_positions=16)
    short = load_tiny(save_checkpoint(tmp_path / "short", model, tokenizer, Preprocessing.for_size(32, 32)))
    with TestClient(create_app({"short": short}, ServeSettings(max_wait_ms=0))) as short_client:
        body = refused(post(short_client, image_bytes(), num_beams=1, max_length=20), 422)
        assert body["detail"] == "max_length: must be at most 16 for this model, got 20"
        assert post(short_client, image_bytes(), num_beams=1, max_length=16).status_code == 200


# --- request parsing --------------------------------------------------------------------------------------------

GOOD_IMAGE = base64.b64encode(image_bytes()).decode()
DEEP = "[" * 1500 + "]" * 1500


def with_image(fields: str) -> bytes:
    """A JSON body with one good image and ``fields`` (raw JSON text of more members)."""
    return f'{{"images": ["{GOOD_IMAGE}"], {fields}}}'.encode()


@pytest.mark.parametrize(
    ("content", "status", "reason"),
    [
        # nesting
        (DEEP.encode(), 400, "request body: invalid JSON: nested more than 64 levels deep"),
        (with_image(f'"num_beams": {DEEP}'), 400, "request body: invalid JSON: nested more than 64 levels deep"),
        (with_image('"x": ' + "[" * 65 + "]" * 65), 400, "request body: invalid JSON: nested more than 64 levels"),
        # huge numbers
        (with_image('"seed": ' + "9" * 5000), 400, "request body: invalid JSON: a number longer than 4300 digits"),
        (("[" + "1" * 5000 + "]").encode(), 400, "request body: invalid JSON: a number longer than 4300 digits"),
        (with_image('"seed": ' + "9" * 4000), 422, f"seed: must be in [0, {2**63 - 1}], got {'9' * 37}..."),
        (with_image('"temperature": ' + "9" * 4000), 422, "temperature: must be a finite number, got 9999"),
        (with_image('"length_penalty": 1e999'), 400, "request body: invalid JSON: the number 1e999 is out of range"),
        # NaN and Infinity literals
        (with_image('"temperature": NaN'), 400, "request body: invalid JSON: NaN is not a JSON number"),
        (with_image('"top_p": Infinity'), 400, "request body: invalid JSON: Infinity is not a JSON number"),
        (with_image('"length_penalty": -Infinity'), 400, "request body: invalid JSON: -Infinity is not a JSON"),
        # duplicate keys, at the top and deeper
        (with_image('"num_beams": 1, "num_beams": 2'), 400, "request body: invalid JSON: duplicate key 'num_beams'"),
        (with_image('"x": {"a": 1, "a": 1}'), 400, "request body: invalid JSON: duplicate key 'a'"),
        # wrong types at every level: the body, the images list, its items, each parameter
        (b"[]", 422, "body: must be a JSON object, got an array"),
        (b'"images"', 422, "body: must be a JSON object, got a string"),
        (b"3", 422, "body: must be a JSON object, got a number"),
        (b"null", 422, "body: must be a JSON object, got null"),
        (b'{"images": {"a": "b"}}', 422, "images: must be a list of base64 strings"),
        (b'{"images": 3}', 422, "images: must be a list of base64 strings"),
        (b'{"images": [null]}', 422, "images: must be a list of base64 strings"),
        (b'{"images": [["x"]]}', 422, "images: must be a list of base64 strings"),
        (b'{"images": []}', 422, "images: no image in the request"),
        (with_image('"num_beams": [1]'), 422, "num_beams: must be an integer, got [1]"),
        (with_image('"num_beams": {"a": 1}'), 422, 'num_beams: must be an integer, got {"a": 1}'),
        (with_image('"num_beams": true'), 422, "num_beams: must be an integer, got true"),
        (with_image('"num_beams": 2.5'), 422, "num_beams: must be an integer, got 2.5"),
        (with_image('"do_sample": 1'), 422, "do_sample: must be true or false, got 1"),
        (with_image('"style": 5'), 422, "style: must be a non-empty string of at most 200 characters, got 5"),
        (with_image('"model": null'), 422, "model: must be a non-empty string of at most 200 characters, got null"),
        (with_image('"attention": []'), 422, "attention: must be true or false, got []"),
        (with_image('"seed": null'), 422, "seed: must be an integer, got null"),  # JSON's words, not Python's
        (with_image('"do_sample": null'), 422, "do_sample: must be true or false, got null"),
        (with_image('"top_p": "0.5"'), 422, "top_p: only used when sampling"),
        # invalid UTF-8, bare or inside a string
        (b'{"images": ["\xff"]}', 400, "request body: not UTF-8 (byte 0xff at offset 13)"),
        (with_image('"style": "?"').replace(b"?", b"\xc3\x28"), 400, "request body: not UTF-8 (byte 0xc3 at offset"),
        # a \u escape of a lone surrogate, in a key (an unknown parameter's name is quoted back) or a value
        (with_image('"\\ud800": 1'), 400, "request body: invalid JSON: a \\u escape of a lone surrogate"),
        (with_image('"x": {"a": ["\\udfff"]}'), 400, "request body: invalid JSON: a \\u escape of a lone surrogate"),
        (with_image('"style": "\\ud83d"'), 400, "request body: invalid JSON: a \\u escape of a lone surrogate"),
        (with_image('"style": "\\ud83d\\ude00"'), 422, "style: unknown style '\U0001f600'"),  # a pair is one character
    ],
)
def test_hostile_json_bodies_are_4xx_json(client, content, status, reason):
    body = refused(client.post("/v1/captions", content=content, headers={"content-type": "application/json"}), status)
    assert body["detail"].startswith(reason)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    """A multipart/form-data body of ``(name, filename or None, data)`` parts, written by hand so that any byte
    can go anywhere (a lone surrogate such as "\\udcff" in a name is written as the raw byte 0xff)."""
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode("utf-8", "surrogateescape")
        chunks.append(head + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


IMAGE_PART = ("image", "a.jpg", image_bytes())


@pytest.mark.parametrize(
    ("content_type", "content", "status", "reason"),
    [
        ("multipart/form-data", multipart([IMAGE_PART]), 400, "request body: malformed or over-limit multipart data"),
        ("multipart/form-data; boundary=", multipart([IMAGE_PART]), 400, "request body: malformed or over-limit"),
        (
            "multipart/form-data; boundary=b",
            multipart([IMAGE_PART, *[("f", None, b"1")] * 10_000], boundary="b"),
            400,
            "request body: malformed or over-limit multipart data (Too many fields. Maximum number of fields is 64.)",
        ),
        (
            "multipart/form-data; boundary=b",
            multipart([("image", "a", b"1")] * 10_000, boundary="b"),
            422,  # too many images, as for 5 (the parser stops after 5 files, so the count is only "more than")
            "image: more than 4 images, at most 4 per request",
        ),
        ("multipart/form-data; boundary=b0undary", multipart([IMAGE_PART, ("num_beams", None, b"\xff")]), 422, ""),
        ("multipart/form-data; boundary=b0undary", multipart([("image", "\udcff.jpg", image_bytes())]), 200, ""),
    ],
)
def test_hostile_multipart_bodies_are_4xx_json(client, content_type, content, status, reason):
    response = client.post("/v1/captions", content=content, headers={"content-type": content_type})
    if status == 200:
        assert response.status_code == 200, response.text
        return
    assert refused(response, status)["detail"].startswith(reason)


def test_refusals_are_counted_by_status(client):
    line = 'captionkit_http_errors_total{path="/v1/captions",status="422"} '

    def refused_so_far() -> float:
        found = [row for row in client.get("/metrics").text.splitlines() if row.startswith(line)]
        return float(found[0].removeprefix(line)) if found else 0.0

    before = refused_so_far()
    assert post(client, image_bytes(), num_beams=0).status_code == 422
    assert refused_so_far() == before + 1
