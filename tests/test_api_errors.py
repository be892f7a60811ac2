"""Captioner.caption() over many images: a bad image need not cost the others (errors="record"), results can be taken
as they come (caption_iter), one image still gives a list, and inputs that are no image (a dict, NaN or out-of-range
float samples) are refused naming them; torch tensors are images, (channels, height, width) as torchvision's."""

from __future__ import annotations

import io
import pickle
import pydoc
import re
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _data import real_photos
from _helpers import save_tiny_model
from captionkit.api import Captioner, CaptionResult
from captionkit.errors import ImageError, InputError

pytestmark = pytest.mark.usefixtures("single_thread")
GREEDY = {"num_beams": 1, "max_new_tokens": 4}
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory) -> Captioner:
    return Captioner.from_pretrained(save_tiny_model(tmp_path_factory.mktemp("m") / "tiny"), device="cpu")


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    return real_photos(5)


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jpg"
    path.write_text("not an image\n")
    return path


def captions_of(results: list[CaptionResult]) -> list[list[tuple[str, float]]]:
    return [[(c.caption, c.score) for c in result.captions] for result in results]


def test_recorded_errors_keep_every_good_result(captioner: Captioner, photos: list[Path], bad: Path) -> None:
    """The 5th of 6 images was bad: caption() raised after the first four were captioned, and returned nothing."""
    images = [*photos[:4], bad, photos[4]]
    results = captioner.caption(images, batch_size=2, errors="record", **GREEDY)
    expected = captioner.caption(photos, batch_size=2, **GREEDY)
    assert [r.image for r in results] == [str(p) for p in images]
    assert [r.ok for r in results] == [True] * 4 + [False, True]
    assert captions_of([r for r in results if r.ok]) == captions_of(expected)
    failed = results[4]
    message = f"{bad} (images[4]): unsupported image format (text); allowed: JPEG, PNG, WebP, GIF, BMP, TIFF"
    assert (failed.image, failed.captions, failed.error) == (str(bad), [], message)
    with pytest.raises(ImageError) as raised:
        failed.caption  # noqa: B018 (a failed image has no caption: asking for one says why)
    assert str(raised.value) == message
    copied = pickle.loads(pickle.dumps(failed))  # a result holds no exception: it copies and pickles as data
    assert (copied, asdict(failed)["error"]) == (failed, message)
    with pytest.raises(ImageError, match=re.escape(message)):
        copied.score  # noqa: B018
    with pytest.raises(ImageError, match=re.escape(message)):
        captioner.caption(images, batch_size=2, **GREEDY)  # the default still raises, naming the image and where


def test_recorded_errors_name_images_without_a_path_by_position(captioner: Captioner, photos: list[Path]) -> None:
    text_stream = io.StringIO("a text-mode stream")  # load_image's TypeError: recorded too, as the CLI records it
    results = captioner.caption([b"not an image", photos[0], text_stream], errors="record", **GREEDY)
    assert [(r.image, r.ok) for r in results] == [("<image>", False), (str(photos[0]), True), ("<image>", False)]
    assert results[0].error == "images[0]: unsupported image format (text); allowed: JPEG, PNG, WebP, GIF, BMP, TIFF"
    assert results[2].error == (
        "images[2]: cannot decode image (TypeError: images[2]: the stream gave str; open it in binary mode)"
    )


def test_seeded_samples_do_not_depend_on_a_failed_neighbour(
    captioner: Captioner, photos: list[Path], bad: Path
) -> None:
    """Image i samples from seed + i: with image 1 missing from its batch, images 2 and 3 must not take its draws."""
    sampling = {"do_sample": True, "seed": 7, "max_new_tokens": 6, "num_return_sequences": 2}
    whole = captioner.caption(photos[:4], batch_size=4, **sampling)
    holed = captioner.caption([photos[0], bad, photos[2], photos[3]], batch_size=4, errors="record", **sampling)
    assert [r.ok for r in holed] == [True, False, True, True]
    assert captions_of([holed[0], holed[2], holed[3]]) == captions_of([whole[0], whole[2], whole[3]])


def test_caption_iter_reads_and_gives_a_batch_at_a_time(captioner: Captioner, photos: list[Path], bad: Path) -> None:
    read: list[Path] = []

    def stream() -> Iterator[Path]:
        for path in [*photos, bad]:
            read.append(path)
            yield path

    results = captioner.caption_iter(stream(), batch_size=2, **GREEDY)
    assert read == []  # nothing read before the first result is asked for
    first = next(results)
    assert read == photos[:2]
    given = [first]
    with pytest.raises(ImageError, match=rf"^{re.escape(str(bad))} \(images\[5\]\): unsupported image format"):
        given.extend(results)
    # Every batch before the bad image's was given (photos[4] shares its batch: raise mode captions none of it).
    assert captions_of(given) == captions_of(captioner.caption(photos[:4], **GREEDY))
    recorded = list(captioner.caption_iter(iter([bad, photos[0]]), errors="record", **GREEDY))
    assert [(r.image, r.ok) for r in recorded] == [(str(bad), False), (str(photos[0]), True)]
    (one,) = captioner.caption_iter(photos[0], **GREEDY)
    assert captions_of([one]) == captions_of(captioner.caption(photos[0], **GREEDY))


def test_caption_iter_checks_its_options_when_called(captioner: Captioner, photos: list[Path]) -> None:
    """A bad option is an error at the call, not at the first next() (maybe far from it, after files were opened)."""
    images = iter(photos)
    with pytest.raises(InputError, match=r"^num_beams: must be in \[1, 64\], got 0$"):
        captioner.caption_iter(images, num_beams=0)
    with pytest.raises(InputError, match=r"^errors: must be 'raise' or 'record', got 'skip'$"):
        captioner.caption_iter(images, errors="skip")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"^errors: must be 'raise' or 'record', got 'ignore'$"):
        captioner.caption(images, errors="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^cannot caption a dict: "):
        captioner.caption_iter({"a": photos[0]})
    assert next(images) == photos[0]  # nothing consumed


def test_one_image_gives_a_list_and_the_docs_say_so(captioner: Captioner, photos: list[Path]) -> None:
    """Users wrote caption("x.png").caption: the list, kept for compatibility, is now shown for one image too."""
    (result,) = captioner.caption(photos[0], **GREEDY)
    assert isinstance(result, CaptionResult)
    doc = pydoc.render_doc(Captioner.caption, renderer=pydoc.plaintext)
    assert '[result] = captioner.caption("photo.jpg")' in doc
    python = README.read_text(encoding="utf-8").split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    assert '[result] = captioner.caption("photo.jpg")' in python
    assert 'errors="record"' in python and "caption_iter" in python


def test_a_dict_is_refused_not_read_as_its_keys(captioner: Captioner, photos: list[Path]) -> None:
    """A dict was iterated as its keys: {"a": photo} failed as "a: no such file"; a dict of paths was captioned."""
    with pytest.raises(TypeError, match=r"^cannot caption a dict: give .*\(list\(images\.values\(\)\) or list\("):
        captioner.caption({"a": photos[0]}, **GREEDY)
    with pytest.raises(TypeError, match=r"^cannot caption a dict: "):
        captioner.caption({str(photos[0]): "a cat"}, **GREEDY)


@pytest.mark.parametrize(
    ("samples", "reason"),
    [
        (np.full((8, 8, 3), np.nan), "192 of 192 float samples are NaN or infinite"),
        (np.where(np.eye(8)[..., None] > 0, np.inf, 0.5).repeat(3, -1), "24 of 192 float samples are NaN or infinite"),
        (np.full((8, 8), 300.0), r"float samples must lie in \[0, 1\] or 0\.\.255, got 300\.\.300"),
        (np.linspace(-2.1, 2.6, 192).reshape(8, 8, 3), r"float samples must lie .* got -2\.1\.\.2\.6 \(a normalised"),
    ],
    ids=["all-nan", "some-inf", "over-255", "normalised"],
)
def test_float_samples_no_image_has_are_refused(
    captioner: Captioner, photos: list[Path], samples: np.ndarray, reason: str
) -> None:
    """All-NaN arrays were captioned (as black), and values over 255 or below 0 silently clipped."""
    with pytest.raises(ImageError, match=rf"^<array>: {reason}"):
        captioner.caption(samples, **GREEDY)
    with pytest.raises(ImageError, match=rf"^images\[1\]: {reason}"):
        captioner.caption([photos[0], samples.astype(np.float32)], **GREEDY)
    with pytest.raises(ImageError, match=rf"^images\[0\]: {reason}"):
        captioner.caption([torch.from_numpy(np.moveaxis(samples, -1, 0) if samples.ndim == 3 else samples)])


def test_torch_tensors_are_images_channels_first(captioner: Captioner, photos: list[Path]) -> None:
    """A tensor was refused ("cannot caption a Tensor"): torchvision gives (channels, height, width) tensors."""
    rgb = np.array(Image.open(photos[0]).convert("RGB"))
    expected = captions_of(captioner.caption([rgb, rgb[..., 0]], **GREEDY))
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    assert captions_of(captioner.caption(chw, **GREEDY)) == expected[:1]
    assert captions_of(captioner.caption([chw.float() / 255, torch.from_numpy(rgb[..., 0])], **GREEDY)) == expected
    assert captions_of(captioner.caption(list(torch.stack([chw, chw])), **GREEDY)) == expected[:1] * 2
    with pytest.raises(
        ImageError, match=r"^<tensor>: a tensor of shape \(2, 3, .*\) is not an image: .*list\(tensor\)"
    ):
        captioner.caption(torch.stack([chw, chw]), **GREEDY)
    with pytest.raises(ImageError, match=r"^images\[0\]: a tensor of shape \(426, 640, 3\) is not an image: give \("):
        captioner.caption([torch.from_numpy(rgb)], **GREEDY)  # numpy's layout: ambiguous for a tensor
    with pytest.raises(ImageError, match=r"^<tensor>: int64 samples must lie in 0\.\.255, got 300\.\.300$"):
        captioner.caption(torch.full((3, 8, 8), 300), **GREEDY)
