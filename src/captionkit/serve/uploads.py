"""Reading a ``POST /v1/captions`` body: size cap, multipart or JSON, then images through captionkit.images.

Statuses: a body not all arrived within the read timeout 408; a body over the cap 413 (refused from
Content-Length before reading, or as soon as the stream passes it, and the connection closed); a client that leaves
before its body has all come 499 (nobody reads it; /metrics counts it); a content type other than multipart/form-data
or application/json 415; a malformed body 400; missing or bad fields 422. A JSON body must be UTF-8 with finite
numbers, no key twice in an object, no ``\\u`` escape of a lone surrogate (keys and values end up in error
messages, which must encode) and at most :data:`captionkit.jsontext.MAX_DEPTH` levels of nesting (400 otherwise).
Images are judged by their bytes, never by file name or declared type: a format outside
:data:`captionkit.images.ALLOWED_FORMATS` (SVG, PDF, text ...) is 415; empty, truncated, corrupt or oversized
in pixels is 422.

A request with any bad image is refused whole, before any model work: the status is that of the first bad
image, and ``errors`` lists every bad one as ``{"index", "image", "error"}`` (its position in the request, its
name). A client resends the good ones; it never has to pick results apart from failures.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from captionkit.errors import ImageError, InputError
from captionkit.images import ImageLimits, Preprocessing, load_image
from captionkit.images.loading import to_rgb
from captionkit.jsontext import parse_json
from captionkit.serve.errors import CLIENT_GONE, ApiError, field_error, invalid_fields
from captionkit.serve.settings import ServeSettings

IMAGE_FIELD = "image"
JSON_IMAGES = "images"
MAX_FORM_FIELDS = 64
MAX_FIELD_BYTES = 4096
MULTIPART_SLICE_BYTES = 256 * 1024
_UNSUPPORTED_PREFIX = "unsupported image format"
# How Starlette's form parser words the max_files refusal (it has no exception type of its own). The parser stops at
# max_images + 1 files, so a request of many more images would otherwise read as a malformed body (400).
_TOO_MANY_FILES = "Too many files"
# How it words a text field over max_part_size: it does not say which field.
_PART_TOO_LARGE = "Part exceeded maximum size"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_FIELD_NAME = re.compile(rb'^content-disposition:[^\r\n]*?\bname="([^"]*)"', re.IGNORECASE | re.MULTILINE)
# What a \uD800-\uDFFF JSON escape left unpaired decodes to: not Unicode text, and unencodable in any answer.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Upload:
    """One image as sent: its bytes and the name results and errors call it by."""

    name: str
    data: bytes


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 once it is known to exceed ``limit`` bytes, with 408 (closing the
    connection) when it has not all arrived within ``timeout_s``, and with 499 when the client left before it had."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        reason = f"request body: not received within {timeout_s:g} s ({size} bytes came)"
        raise ApiError(408, reason, headers={"Connection": "close"}) from None
    except ClientDisconnect:  # an upload cancelled mid-way: the client's doing, not a server error (500)
        raise ApiError(CLIENT_GONE, f"request body: the client closed the connection after {size} bytes") from None
    return b"".join(chunks)


async def parse_body(request: Request, body: bytes, settings: ServeSettings) -> tuple[list[Upload], dict[str, Any]]:
    """``(uploads, parameters)`` from a multipart or JSON body; parameters are the non-image fields."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        uploads, params = await _parse_multipart(request, body, settings)
    elif media_type == "application/json":
        # On a thread: parsing and base64-decoding a body of up to --max-upload-mb takes a tenth of a second, in
        # which the event loop would answer nothing else (other requests, /healthz).
        uploads, params = await run_in_threadpool(_parse_json, body, settings.max_images)
    else:
        shown = media_type or "none"
        raise ApiError(415, f"Content-Type: {shown} is not accepted; send multipart/form-data or application/json")
    if not uploads:
        raise invalid_fields([_no_image(media_type == "application/json", params)])
    if len(uploads) > settings.max_images:
        reason = f"{len(uploads)} images, at most {settings.max_images} per request"
        raise invalid_fields([field_error(IMAGE_FIELD, reason)])
    return uploads, params


def _no_image(is_json: bool, params: dict[str, Any]) -> dict[str, str]:
    """The error of a request without images, naming the field its kind of body carries them in (and the field of
    the other kind, when the request put them there: ``image`` in JSON, ``images`` as a form field)."""
    field, other = (JSON_IMAGES, IMAGE_FIELD) if is_json else (IMAGE_FIELD, JSON_IMAGES)
    where = f"'{JSON_IMAGES}': [base64, ...]" if is_json else f"one or more '{IMAGE_FIELD}' file fields"
    wrong = f", not '{other}'" if other in params else ""
    return field_error(field, f"no image in the request; send {where}{wrong}")


def load_uploads(
    uploads: list[Upload], settings: ServeSettings, preprocessing: Preprocessing
) -> tuple[list[Image.Image], list[tuple[int, int]]]:
    """Decode every upload safely, each shrunk to :func:`model_sized` before the next is decoded (a request holds
    one image at full size at a time), and the (width, height) each was sent at; refuse the request (415/422)
    listing each image that failed."""
    limits = ImageLimits(max_bytes=settings.max_upload_bytes)
    images: list[Image.Image] = []
    sizes: list[tuple[int, int]] = []
    failures: list[tuple[int, dict[str, Any]]] = []
    for index, upload in enumerate(uploads):
        try:
            image, size = _load_sized(upload, limits, preprocessing)
        except ImageError as error:
            status = 415 if error.reason.startswith(_UNSUPPORTED_PREFIX) else 422
            # The index tells apart two uploads of one file name (photo.jpg from two folders).
            failures.append((status, {"index": index, "image": upload.name, "error": error.reason}))
        else:
            images.append(image)
            sizes.append(size)
    if failures:
        status, first = failures[0]
        more = f" (and {len(failures) - 1} more bad images)" if len(failures) > 1 else ""
        raise ApiError(status, f"{first['image']}: {first['error']}{more}", [record for _, record in failures])
    return images, sizes


def _load_sized(
    upload: Upload, limits: ImageLimits, preprocessing: Preprocessing
) -> tuple[Image.Image, tuple[int, int]]:
    """One upload at its model size, and its size as sent; the full-size image is freed on return."""
    image = load_image(upload.data, limits=limits, name=upload.name)
    return model_sized(image, preprocessing), image.size


def model_sized(image: Image.Image, preprocessing: Preprocessing) -> Image.Image:
    """``image`` in RGB at the size ``preprocessing`` first resizes it to (before any centre crop): what a request's
    images wait in the queue as, so that a 40 MP photo holds 120 MB only while it is decoded (a megabyte of
    compressible PNGs would otherwise hold gigabytes). The captions are the same: ``preprocessing`` then resizes
    it to its own size, which Pillow does as a copy, and crops and normalises as it would have."""
    if not preprocessing.do_resize:
        return image
    return to_rgb(image).resize(preprocessing.resized_size(image.size), resample=preprocessing.resample)


async def _parse_multipart(
    request: Request, body: bytes, settings: ServeSettings
) -> tuple[list[Upload], dict[str, Any]]:
    offset = 0

    async def replay() -> Message:
        # The body was already read (and capped); it goes to the form parser a slice at a time, with a turn for the
        # event loop between slices: in one piece, parsing a body of --max-upload-mb holds the loop for a tenth of a
        # second, in which nothing else (other requests, /healthz) is answered.
        nonlocal offset
        if offset < 0:
            return {"type": "http.disconnect"}
        if offset:
            await asyncio.sleep(0)
        chunk = body[offset : offset + MULTIPART_SLICE_BYTES]
        offset += len(chunk)
        more = offset < len(body)
        offset = offset if more else -1
        return {"type": "http.request", "body": chunk, "more_body": more}

    try:
        form = await Request(request.scope, replay).form(
            max_files=settings.max_images + 1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES
        )
    except (MultiPartException, HTTPException) as error:  # Starlette turns the former into the latter in an app
        reason = error.detail if isinstance(error, HTTPException) else str(error)
        if reason.startswith(_TOO_MANY_FILES):  # too many images is a 422 whatever the count, as in parse_body
            count = f"more than {settings.max_images} images, at most {settings.max_images} per request"
            raise invalid_fields([field_error(IMAGE_FIELD, count)]) from None
        if reason.startswith(_PART_TOO_LARGE):
            raise _text_field_too_large(request.headers.get("content-type", ""), body) from None
        raise ApiError(400, f"request body: malformed or over-limit multipart data ({reason})") from None
    uploads: list[Upload] = []
    params: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    try:
        for key, value in form.multi_items():
            if key == IMAGE_FIELD:
                if isinstance(value, UploadFile):
                    uploads.append(Upload(value.filename or f"image[{len(uploads)}]", await value.read()))
                else:
                    errors.append(field_error(IMAGE_FIELD, "is a text field; send the image as a file upload"))
            elif isinstance(value, UploadFile):
                errors.append(field_error(key, f"unexpected file field (images go in '{IMAGE_FIELD}')"))
            elif key in params:
                errors.append(field_error(key, "given more than once"))
            else:
                params[key] = value
    finally:
        await form.close()
    if errors:
        raise invalid_fields(errors)
    return uploads, params


def _text_field_too_large(content_type: str, body: bytes) -> ApiError:
    """The refusal of a multipart body with a text field over :data:`MAX_FIELD_BYTES`, naming the field: an image
    sent as text (``curl -F image=<photo.jpg`` instead of ``-F image=@photo.jpg``) is told how to send it."""
    name = _oversized_text_field(content_type, body)
    if name == IMAGE_FIELD:
        return invalid_fields([field_error(IMAGE_FIELD, "is a text field; send the image as a file upload")])
    field = f"field {name!r}" if name is not None else "a text field"
    return ApiError(400, f"request body: {field} is over {MAX_FIELD_BYTES} bytes, the most a parameter takes")


def _oversized_text_field(content_type: str, body: bytes) -> str | None:
    """The name of the first part without a file name whose content is over :data:`MAX_FIELD_BYTES` (the form
    parser has already refused the body for it; this only finds its name, for the message)."""
    boundary = _BOUNDARY.search(content_type)
    if boundary is None:
        return None
    for part in body.split(b"--" + boundary.group(1).encode("latin-1")):
        head, found, content = part.partition(b"\r\n\r\n")
        name = _FIELD_NAME.search(head)
        if found and name and b"filename=" not in head.lower() and len(content) - 2 > MAX_FIELD_BYTES:
            return name.group(1)[:100].decode("latin-1")
    return None


def _parse_json(body: bytes, max_images: int) -> tuple[list[Upload], dict[str, Any]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        reason = f"not UTF-8 (byte 0x{body[error.start]:02x} at offset {error.start})"
        raise ApiError(400, f"request body: {reason}") from None
    try:
        document = parse_json(text, "request body", unique_keys=True)
    except InputError as error:
        raise ApiError(400, str(error)) from None
    if _has_lone_surrogate(document):
        raise ApiError(400, "request body: invalid JSON: a \\u escape of a lone surrogate (not Unicode text)")
    if not isinstance(document, dict):
        raise invalid_fields([field_error("body", f"must be a JSON object, got {_json_type(document)}")])
    images = document.pop(JSON_IMAGES, None)
    if images is None:
        return [], document
    if not isinstance(images, list) or not all(isinstance(item, str) for item in images):
        raise invalid_fields([field_error(JSON_IMAGES, "must be a list of base64 strings")])
    if len(images) > max_images:  # said before decoding any: a bad one among too many is not the request's fault
        raise invalid_fields([field_error(JSON_IMAGES, f"{len(images)} images, at most {max_images} per request")])
    uploads: list[Upload] = []
    errors: list[dict[str, str]] = []
    for index, text in enumerate(images):
        name = f"images[{index}]"
        try:
            uploads.append(Upload(name, _decode_base64(text)))
        except ValueError as error:
            errors.append(field_error(name, str(error)))
    if errors:
        raise invalid_fields(errors)
    return uploads, document


def _json_type(value: Any) -> str:
    """What JSON calls the type of a parsed value (the client wrote JSON, not Python)."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    return "null" if value is None else names.get(type(value), "an object")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a key or string anywhere in a parsed JSON document holds a lone surrogate (the parser has already
    joined every valid pair into one character, and capped the nesting)."""
    if isinstance(value, str):
        return not value.isascii() and _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_lone_surrogate(key) or _has_lone_surrogate(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False


def _decode_base64(text: str) -> bytes:
    """Standard base64, optionally as a ``data:image/...;base64,`` URL (what a browser's FileReader gives)."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise ValueError("data URL is not base64-encoded")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"invalid base64 ({error})") from None


def _too_large(limit: int) -> ApiError:
    """The refusal of a body over ``limit``; it closes the connection, or the server would go on reading (and
    discarding) the rest of the body until the read timeout, however large the client says it is."""
    reason = f"request body: over the {limit / (1024 * 1024):g} MiB upload limit"
    return ApiError(413, reason, headers={"Connection": "close"})
