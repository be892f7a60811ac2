"""JSON Schemas of what the API answers, for ``/openapi.json``: the captions, the model list and the refusals.

Written by hand next to the code that builds the answers (``captionkit.serve.app``), closed with
``additionalProperties: false`` so that a key added to an answer and not here fails the test that validates real
answers against these schemas (tests/test_serve_openapi.py).
"""

from __future__ import annotations

from typing import Any

INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}


def _object(properties: dict[str, Any], description: str | None = None, optional: tuple[str, ...] = ()) -> dict:
    """A closed object schema: every property required but those in ``optional``."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


_ATTENTION = {
    "type": "array",
    "description": "Only with attention=true: per generated token, its text and its (h, w) attention grid over the"
    " image (3 decimals; each grid sums to 1 before rounding).",
    "items": _object({"token": STRING, "grid": {"type": "array", "items": {"type": "array", "items": NUMBER}}}),
}

CAPTION = _object(
    {
        "caption": STRING,
        "score": {"type": "number", "description": "log-probability / generated length ** length_penalty"},
        "attention": _ATTENTION,
    },
    optional=("attention",),
)

RESULT = _object(
    {
        "index": {"type": "integer", "description": "The image's position in the request."},
        "image": {"type": "string", "description": "Its file name (multipart) or images[i] (JSON)."},
        "caption": {"type": "string", "description": "The best caption (captions[0])."},
        "score": {"type": "number", "description": "The best caption's score."},
        "captions": {"type": "array", "items": CAPTION, "description": "The n-best captions, best first."},
        "attention_box": {
            "type": "array",
            "items": NUMBER,
            "minItems": 4,
            "maxItems": 4,
            "description": "Only with attention=true: the part of the image (upright, as its EXIF orientation says)"
            " that the attention grids cover, as [left, top, right, bottom] fractions of its width and height: the"
            " centre crop the model saw, or [0, 0, 1, 1] when it sees the whole image.",
        },
    },
    optional=("attention_box",),
)

# The DecodingConfig the request resolved to, its fields named as a request names them where they differ.
DECODING = _object(
    {
        "max_length": INTEGER,
        "min_new_tokens": INTEGER,
        "num_beams": INTEGER,
        "length_penalty": NUMBER,
        "n_best": INTEGER,
        "early_stopping": {"type": ["boolean", "string"]},
        "do_sample": BOOLEAN,
        "temperature": NUMBER,
        "top_k": INTEGER,
        "top_p": NUMBER,
        "seed": {"type": ["integer", "null"]},
        "start_token_id": {"type": ["integer", "null"], "description": "The style's start token (null: the model's)."},
        "prompt_ids": {"type": "array", "items": INTEGER, "description": "The prompt's token ids."},
    },
    "The decoding settings used, defaults filled in.",
)

CAPTIONS = _object(
    {
        "model": STRING,
        "style": STRING,
        "decoding": DECODING,
        "results": {"type": "array", "items": RESULT, "description": "One per image, in request order."},
        "latency_ms": NUMBER,
    }
)

LIMITS = _object(
    {
        "max_images": {"type": "integer", "description": "Most images in one request."},
        "max_upload_bytes": {"type": "integer", "description": "Largest request body."},
        "max_beams": INTEGER,
        "max_n_best": INTEGER,
        "max_length": {"type": "integer", "description": "The server's bound; a model's own may be lower."},
    },
    "This server's limits on a request.",
)

MODEL = _object(
    {
        "name": STRING,
        "family": STRING,
        "parameters": INTEGER,
        "device": STRING,
        "dtype": STRING,
        "export": {
            "type": ["string", "null"],
            "description": "int8 or ONNX for a model loaded from an export (its int8 layers run on the CPU); null "
            "for a checkpoint.",
        },
        "styles": {"type": "array", "items": STRING, "description": "Values of style this model takes."},
        "attention": {"type": "boolean", "description": "Takes attention=true."},
        "prompt": {"type": "boolean", "description": "Takes a prompt (BLIP)."},
        "max_length": {"type": "integer", "description": "Most max_length this model takes on this server."},
    }
)

MODELS = _object(
    {
        "default": {"type": "string", "description": "The model a request without model= gets."},
        "limits": LIMITS,
        "models": {"type": "array", "items": MODEL},
    }
)

REFUSAL = _object(
    {
        "detail": {"type": "string", "description": "One line naming the input and the reason."},
        "errors": {
            "type": "array",
            "description": "Each bad parameter, or each bad image of the request.",
            "items": {
                "oneOf": [
                    _object({"field": STRING, "error": STRING}),
                    _object({"index": INTEGER, "image": STRING, "error": STRING}),
                ]
            },
        },
    },
    optional=("errors",),
)


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}
