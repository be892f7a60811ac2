"""Captioner.caption() with what Python users pass: numpy arrays, mixed lists, bad items, bad batch sizes; errors are
one line naming the item (its path, else its position in the list); help() lists the decoding options."""

from __future__ import annotations

import doctest
import importlib
import pydoc
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _data import COCO_PHOTOS
from _helpers import save_tiny_model
from captionkit.api import Captioner
from captionkit.decoding.options import OPTIONS
from captionkit.errors import ImageError, InputError
from captionkit.evaluation import evaluate_captions

pytestmark = pytest.mark.usefixtures("single_thread")
GREEDY = {"num_beams": 1, "max_new_tokens": 4}


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory) -> Captioner:
    return Captioner.from_pretrained(save_tiny_model(tmp_path_factory.mktemp("m") / "tiny"), device="cpu")


@pytest.fixture(scope="module")
def photo() -> Path:
    return sorted(COCO_PHOTOS.glob("*.jpg"))[0]


def token_ids(results: list) -> list[list[list[int]]]:
    return [[caption.token_ids for caption in result.captions] for result in results]


def test_numpy_arrays_are_images_of_their_own(captioner: Captioner, photo: Path) -> None:
    """An array was iterated row by row (each row then refused as "cannot load an image from a ndarray")."""
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    grey = np.asarray(Image.open(photo).convert("L"))
    expected = token_ids(captioner.caption([Image.fromarray(rgb), Image.fromarray(grey)], **GREEDY))
    assert token_ids(captioner.caption(rgb, **GREEDY)) == expected[:1]  # one array: one image, not its rows
    assert token_ids(captioner.caption([rgb, grey], **GREEDY)) == expected
    assert token_ids(captioner.caption(rgb / 255.0, **GREEDY)) == expected[:1]  # floats in [0, 1]
    assert token_ids(captioner.caption([rgb[..., None, 0], rgb], **GREEDY))[1] == expected[0]


def test_results_follow_the_input_order_whatever_the_source(captioner: Captioner, photo: Path) -> None:
    other = np.zeros((40, 30, 3), np.uint8)
    sources = [str(photo), other, photo.read_bytes(), Image.fromarray(other), photo]
    results = captioner.caption(sources, batch_size=2, **GREEDY)
    assert [r.image for r in results] == [str(photo), "<image>", "<image>", "<image>", str(photo)]
    assert token_ids(results)[0] == token_ids(results)[2] == token_ids(results)[4]
    assert token_ids(results)[1] == token_ids(results)[3]
    assert captioner.caption([], **GREEDY) == []


def test_an_unreadable_item_of_a_list_is_named_by_its_position(captioner: Captioner, photo: Path) -> None:
    """Bytes, arrays and PIL images of a list were all "<bytes>", "<array>", "<image>": which one failed?"""
    with pytest.raises(ImageError, match=r"^images\[2\]: unsupported image format \(text\); allowed: JPEG"):
        captioner.caption([photo, photo, b"not an image"], batch_size=2, **GREEDY)  # positions span batches
    with pytest.raises(ImageError, match=r"^images\[1\]: an array of shape \(3, 8, 8\) is not an image"):
        captioner.caption([photo, np.zeros((3, 8, 8), np.uint8)], **GREEDY)
    missing = photo.parent / "missing.jpg"
    with pytest.raises(ImageError, match=rf"^{missing} \(images\[1\]\): no such file$"):  # its path, and where
        captioner.caption([photo, missing], **GREEDY)
    with pytest.raises(ImageError, match=rf"^{missing}: no such file$"):  # one image: no list to count in
        captioner.caption(missing, **GREEDY)
    with pytest.raises(ImageError, match=r"^<bytes>: unsupported image format"):  # one image: no list to count in
        captioner.caption(b"not an image", **GREEDY)


def test_an_open_file_or_pil_image_of_a_list_keeps_its_file_name(captioner: Captioner, photo: Path, tmp_path) -> None:
    """An open file or a PIL image opened from a path keeps the name load_image gives it (it was replaced by
    images[i]), and its position follows it, as a path's does (a file may be in a list twice)."""
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"not an image")
    with bad.open("rb") as stream, pytest.raises(ImageError, match=rf"^{bad} \(images\[1\]\): unsupported image"):
        captioner.caption([photo, stream], **GREEDY)
    strip = tmp_path / "strip.png"
    Image.new("RGB", (100, 1)).save(strip)
    with Image.open(strip) as opened, pytest.raises(ImageError, match=rf"^{strip} \(images\[1\]\): aspect ratio"):
        captioner.caption([photo, opened], **GREEDY)


def test_an_item_of_the_wrong_type_is_refused_by_position_before_any_decoding(
    captioner: Captioner, photo: Path
) -> None:
    """The type of every item is checked first: a missing file before it does not hide it, nor cost a decode."""
    with pytest.raises(TypeError, match=r"^images\[1\]: cannot caption a NoneType: give a path, bytes, "):
        captioner.caption([photo.parent / "missing.jpg", None], **GREEDY)


def test_a_column_of_paths_is_a_list_of_images(captioner: Captioner, photo: Path) -> None:
    """A pandas Series (it has a shape) was refused as a tensor, and an array of path strings read as one image."""
    pandas = pytest.importorskip("pandas")
    expected = token_ids(captioner.caption([photo, photo], **GREEDY))
    assert token_ids(captioner.caption(np.array([str(photo), str(photo)]), **GREEDY)) == expected
    assert token_ids(captioner.caption(pandas.Series([str(photo), str(photo)]), **GREEDY)) == expected
    with pytest.raises(TypeError, match=r"^cannot caption a DataFrame: give a path, "):
        captioner.caption(pandas.DataFrame({"image": [str(photo)]}), **GREEDY)


@pytest.mark.parametrize("source", [5, None, b"/models/tiny"], ids=repr)
def test_a_model_that_is_no_path_or_hub_id_is_a_type_error(source: object) -> None:
    """5 and None were looked up on the hub: "5: cannot download from the Hugging Face Hub (offline?)"."""
    name = type(source).__name__
    with pytest.raises(TypeError, match=rf"^name_or_dir: expected a model directory or hub id, got {name}$"):
        Captioner.from_pretrained(source)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rf"^directory: expected a model directory or hub id, got {name}$"):
        Captioner.from_onnx(source)  # type: ignore[arg-type]


def test_a_url_says_it_is_a_url(captioner: Captioner) -> None:
    with pytest.raises(ImageError, match=r"^https://example\.com/cat\.jpg: a URL: captionkit opens local files only"):
        captioner.caption("https://example.com/cat.jpg", **GREEDY)


@pytest.mark.parametrize("batch_size", [0, -1, True, 2.5, "2"], ids=repr)
def test_a_bad_batch_size_is_one_input_error_before_the_images_are_read(
    captioner: Captioner, photo: Path, batch_size: object
) -> None:
    """2.5 and "2" failed deep in range() with "'float' object cannot be interpreted as an integer"; True passed as
    1; 0 was a ValueError, where every other bad option is an InputError."""
    images = iter([photo])
    with pytest.raises(InputError, match=rf"^batch_size: must be an integer >= 1, got {batch_size!r}$"):
        captioner.caption(images, batch_size=batch_size, **GREEDY)  # type: ignore[arg-type]
    assert next(images) == photo  # nothing consumed


def test_help_on_caption_names_every_decoding_option() -> None:
    """help(Captioner.caption) said only "DecodingConfig fields or their aliases": name them, and their defaults."""
    text = pydoc.render_doc(Captioner.caption, renderer=pydoc.plaintext)
    names = {option.field for option in OPTIONS} | {o.alias for o in OPTIONS if o.alias} | {"early_stopping"}
    assert sorted(name for name in names | {"min_new_tokens"} if f"``{name}``" not in text) == []
    assert "default 4 (1 when sampling)" in text and "default 20" in text and "numpy array" in text


def test_the_package_names_its_public_api() -> None:
    captionkit = importlib.import_module("captionkit")
    assert captionkit.__all__ == ["CaptionResult", "Captioner", "__version__"]
    assert set(captionkit.__all__) <= set(dir(captionkit))  # the lazy names too, for tab completion
    assert captionkit.CaptionResult is importlib.import_module("captionkit.api").CaptionResult


@pytest.mark.parametrize("module", ["captionkit", "captionkit.api", "captionkit.decoding", "captionkit.evaluation.api"])
def test_usage_examples_in_docstrings_run_offline(module: str) -> None:
    """captionkit.api's example loaded the hub model unskipped: doctest failed offline (and downloaded online)."""
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert (result.failed, result.attempted > 0) == (0, True)


@pytest.mark.parametrize(
    ("refs", "cands", "message"),
    [
        ([["a cat"]], {"1": "a cat"}, "references: must map each image id to a list of captions (a dict), got a list"),
        ({"1": ["a cat"]}, ["a cat"], "candidates: must map each image id to its caption (a dict), got a list"),
    ],
)
def test_evaluate_captions_refuses_lists_in_one_line(refs: object, cands: object, message: str) -> None:
    """A list where a dict belongs was an AttributeError: "'list' object has no attribute 'values'"."""
    with pytest.raises(InputError) as error:
        evaluate_captions(refs, cands, metrics="BLEU")  # type: ignore[arg-type]
    assert str(error.value) == message


def test_a_text_mode_file_is_one_line_naming_the_mode(captioner: Captioner, photo: Path) -> None:
    """open("photo.jpg") (no "b") failed in read() with a bare UnicodeDecodeError ("'utf-8' codec can't decode byte
    0xff in position 0"), which said nothing of the file or the way out; recorded, it read the same."""
    with photo.open() as text, pytest.raises(ImageError) as raised:
        captioner.caption(text, **GREEDY)
    assert str(raised.value) == f"{photo}: a text-mode stream; open it in binary mode ('rb')"
    with photo.open() as text:
        results = captioner.caption([photo, text], errors="record", **GREEDY)
    assert [r.ok for r in results] == [True, False]
    assert results[1].error == f"{photo} (images[1]): a text-mode stream; open it in binary mode ('rb')"


def test_a_closed_pil_image_or_stream_says_it_was_closed(captioner: Captioner, photo: Path) -> None:
    """``with Image.open(p) as image: ...`` then caption(image) blamed the file ("corrupt or truncated JPEG data
    (ValueError: Operation on closed image)"); a closed file was a bare "ValueError: read of closed file"."""
    with Image.open(photo) as image:
        pass
    with pytest.raises(ImageError) as raised:
        captioner.caption(image, **GREEDY)
    assert str(raised.value) == (
        f"{photo}: the PIL image was closed before it was captioned (caption it inside its with block)"
    )
    with photo.open("rb") as stream:
        pass
    [result] = captioner.caption([stream], errors="record", **GREEDY)
    assert result.error == (
        f"{photo} (images[0]): the stream was closed before it was captioned (caption it inside its with block)"
    )
    with Image.open(photo) as lazy:  # opened, not decoded yet: captioned as the path is
        assert token_ids(captioner.caption(lazy, **GREEDY)) == token_ids(captioner.caption(photo, **GREEDY))


def test_load_images_opens_one_path_as_one_image(captioner: Captioner, photo: Path) -> None:
    """A str is a sequence: load_images("photo.jpg") opened it character by character ("/: is a directory")."""
    [one] = captioner.load_images(str(photo))
    assert one.tobytes() == captioner.load_images([photo])[0].tobytes()
    with pytest.raises(TypeError, match=r"^images\[3\]: cannot caption a NoneType: give a path, "):
        captioner.load_images([photo, None], first=2)


@pytest.mark.parametrize("attention", ["false", 1, None], ids=repr)
def test_attention_is_true_or_false(captioner: Captioner, photo: Path, attention: object) -> None:
    """attention="false" (or 1) was truthy: maps computed and returned that nobody asked for; None passed as off."""
    with pytest.raises(InputError, match=rf"^attention: must be True or False, got {re.escape(repr(attention))}$"):
        captioner.caption(photo, attention=attention, **GREEDY)  # type: ignore[arg-type]
    assert captioner.caption(photo, attention=np.bool_(False), **GREEDY)[0].captions[0].attention is None
