"""What the API says about itself: `/v1/models` (what each model takes, the server's limits) and `/openapi.json`'s
answer schemas, checked against real answers; and requests that the page sends in bulk (many images, one name
twice)."""

from __future__ import annotations

import base64

import jsonschema
import pytest
from fastapi.testclient import TestClient

from _helpers import save_tiny_model as save_family_model
from _serve import CAPTIONS, image_bytes, load_tiny, save_tiny_model
from captionkit.serve import ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("single_thread")

SETTINGS = ServeSettings(max_wait_ms=0, max_images=4, max_new_tokens=40)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    models = {
        "base": load_tiny(save_tiny_model(root / "base", seed=0)),
        "short": load_tiny(save_family_model(root / "short", seed=0, captions=CAPTIONS, decoder_positions=16)),
        "lstm": load_tiny(save_family_model(root / "lstm", "cnn-lstm", captions=CAPTIONS)),
        "blip": load_tiny(save_family_model(root / "blip", "blip", captions=CAPTIONS)),
    }
    with TestClient(create_app(models, SETTINGS)) as test_client:
        yield test_client


def answer_schema(client, method: str, path: str, status: int) -> dict:
    operation = client.get("/openapi.json").json()["paths"][path][method]
    return operation["responses"][str(status)]["content"]["application/json"]["schema"]


def check_documented(client, response, method: str = "post", path: str = "/v1/captions") -> dict:
    """The answer's JSON, after checking it against the schema /openapi.json gives for its status."""
    body = response.json()
    schema = answer_schema(client, method, path, response.status_code)
    assert set(body) <= set(schema.get("properties", {})), "a key the docs do not name"  # not just "an object"
    jsonschema.validate(body, schema)
    return body


def test_models_say_what_each_takes_and_the_limits(client):
    body = check_documented(client, client.get("/v1/models"), "get", "/v1/models")
    listed = {model["name"]: model for model in body["models"]}
    assert {name: (m["prompt"], m["attention"], m["max_length"]) for name, m in listed.items()} == {
        "base": (False, True, 40),  # the server's bound: the model has more positions
        "short": (False, True, 16),  # the model's 16 positions
        "lstm": (False, False, 40),  # an LSTM has no position limit
        "blip": (True, True, 40),
    }
    assert body["limits"] == {
        "max_images": 4,
        "max_upload_bytes": SETTINGS.max_upload_bytes,
        "max_beams": 8,
        "max_n_best": 8,
        "max_length": 40,
    }


def test_an_int8_export_is_listed_as_one(tmp_path):
    """/v1/models listed an int8 export as a plain fp32 vit-gpt2: nothing said its layers are int8 (CPU only)."""
    from captionkit.export.int8 import export_int8

    source = save_tiny_model(tmp_path / "base", seed=0)
    export_int8(source, tmp_path / "int8")
    models = {"base": load_tiny(source), "int8": load_tiny(tmp_path / "int8")}
    with TestClient(create_app(models, SETTINGS)) as test_client:
        body = check_documented(test_client, test_client.get("/v1/models"), "get", "/v1/models")
    assert {model["name"]: (model["export"], model["dtype"]) for model in body["models"]} == {
        "base": (None, "fp32"),
        "int8": ("int8", "fp32"),
    }


def test_a_model_takes_the_max_length_it_lists(client):
    for model in client.get("/v1/models").json()["models"]:
        fields = {"model": model["name"], "num_beams": "1"}
        files = [("image", ("a.png", image_bytes("PNG"), "image/png"))]
        at_most = client.post("/v1/captions", files=files, data=fields | {"max_length": str(model["max_length"])})
        assert at_most.status_code == 200, (model["name"], at_most.text)
        over = client.post("/v1/captions", files=files, data=fields | {"max_length": str(model["max_length"] + 1)})
        assert over.status_code == 422, model["name"]


def test_caption_answers_match_their_schema(client):
    files = [("image", (f"{i}.png", image_bytes("PNG"), "image/png")) for i in range(2)]
    fields = {"num_beams": "3", "n_best": "2", "max_length": "5", "attention": "true"}
    body = check_documented(client, client.post("/v1/captions", files=files, data=fields))
    assert [len(result["captions"]) for result in body["results"]] == [2, 2]
    assert all("attention" in caption for result in body["results"] for caption in result["captions"])
    seeded = {"images": [base64.b64encode(image_bytes()).decode()], "do_sample": True, "seed": 3, "model": "blip"}
    assert check_documented(client, client.post("/v1/captions", json=seeded | {"prompt": "a dog"}))["model"] == "blip"


def test_refusals_match_their_schema(client):
    bad_fields = client.post("/v1/captions", files=[("image", ("a.png", image_bytes("PNG")))], data={"top_p": "2"})
    assert check_documented(client, bad_fields)["errors"][0]["field"] == "top_p"
    bad_image = client.post("/v1/captions", files=[("image", ("a.txt", b"hello"))])
    [record] = check_documented(client, bad_image)["errors"]
    assert (bad_image.status_code, record["index"], record["image"]) == (415, 0, "a.txt")


def test_bad_images_are_named_by_position_too(client):
    # Two uploads named photo.jpg (from two folders): the record's index says which one is bad.
    files = [("image", ("photo.jpg", data, "image/jpeg")) for data in (image_bytes(), b"not an image")]
    response = client.post("/v1/captions", files=files)
    assert response.status_code == 415
    assert [(error["index"], error["image"]) for error in response.json()["errors"]] == [(1, "photo.jpg")]


@pytest.mark.parametrize(("count", "said"), [(5, "5 images"), (20, "more than 4 images")])
def test_many_more_images_than_allowed_is_422_not_a_malformed_body(client, count, said):
    # The form parser stops reading at max_images + 1 files: 20 images must not read as a malformed body (400).
    files = [("image", (f"{i}.png", image_bytes("PNG"), "image/png")) for i in range(count)]
    response = client.post("/v1/captions", files=files)
    assert response.status_code == 422, response.text
    assert check_documented(client, response)["detail"] == f"image: {said}, at most 4 per request"


def test_a_parameter_given_twice_is_refused_as_documented(client):
    operation = client.get("/openapi.json").json()["paths"]["/v1/captions"]["post"]
    assert "not both" in operation["description"] and "given twice" in operation["description"]
    files = [("image", ("a.png", image_bytes("PNG"), "image/png"))]
    both = client.post("/v1/captions?num_beams=2", files=files, data={"num_beams": "3"})
    twice = client.post("/v1/captions?num_beams=2&num_beams=3", files=files)
    assert [check_documented(client, r)["errors"][0]["field"] for r in (both, twice)] == ["num_beams", "num_beams"]


def test_json_and_multipart_give_the_same_answer(client):
    data = image_bytes()
    form = {"model": "base", "do_sample": "true", "seed": "5", "n_best": "3", "max_length": "6", "top_k": "20"}
    typed = {"model": "base", "do_sample": True, "seed": 5, "n_best": 3, "max_length": 6, "top_k": 20}
    multipart = client.post("/v1/captions", files=[("image", ("images[0]", data, "image/jpeg"))], data=form).json()
    as_json = client.post("/v1/captions", json={"images": [base64.b64encode(data).decode()], **typed}).json()
    for body in (multipart, as_json):
        del body["latency_ms"]
    assert multipart == as_json
