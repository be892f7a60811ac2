"""The limits that protect a running server: upload size, batch shape, queue depth, time, decoding bounds."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

from captionkit.cpus import usable_cpus
from captionkit.errors import ConfigError

MiB = 1024 * 1024
# A URL path prefix: segments of unreserved URL characters, each after one slash, none only dots; no trailing slash.
_PREFIX = re.compile(r"(/(?!\.{1,2}(?:/|$))[A-Za-z0-9._~-]+)+")


def valid_prefix(prefix: str) -> bool:
    """Whether ``prefix`` is ``""`` or a path such as ``/captions`` or ``/a/b`` (no trailing slash, no ``..``)."""
    return prefix == "" or _PREFIX.fullmatch(prefix) is not None


# Float settings that must be above 0 (the others may be 0).
POSITIVE = ("request_timeout_s", "read_timeout_s")


@dataclass(frozen=True)
class ServeSettings:
    """What ``captionkit serve`` accepts and how it batches; every field is checked when built."""

    # Micro-batching: concurrent images for the same model and decoding settings run as one batch of at most
    # max_batch, waiting at most max_wait_ms after the first one arrives for others to join.
    max_batch: int = 8
    max_wait_ms: float = 10.0
    # Images waiting per model; beyond this a request is refused with 503 + Retry-After rather than queued. At
    # least max_images: a whole request must fit in an empty queue.
    max_queue: int = 64
    retry_after_s: int = 1
    # A request still waiting after this long answers 504 (its images are dropped from the queue).
    request_timeout_s: float = 30.0
    # A request's head must arrive within this long of the connection opening (or of its previous response), and
    # its body within this long of the head: 408 beyond, so that slow clients cannot hold connections.
    read_timeout_s: float = 30.0
    # Open connections at most; one more is answered 503 and closed (each costs a file descriptor).
    max_connections: int = 256
    # The whole request body (all images together); each image is also held to it.
    max_upload_bytes: int = 20 * MiB
    max_images: int = 16
    # Requests decoding their images at once; the others wait (without a thread) for their turn, within their
    # request_timeout_s. Decoding is CPU work, so more at once than CPUs only finishes each later, and a 40 MP image
    # takes 120 MB while it is decoded: this bounds that memory whatever the number of requests.
    max_image_loads: int = field(default_factory=usable_cpus)
    # Decoding bounds: tighter than DecodingConfig's, since every request shares the same machine.
    max_beams: int = 8
    max_new_tokens: int = 64
    max_n_best: int = 8
    # The path a reverse proxy serves this server under ("/captions"; "" at the root): the page and the docs link
    # their files and the API under it, and routes answer with or without it (a proxy that strips it or not).
    root_path: str = ""

    def __post_init__(self) -> None:
        for setting in fields(self):
            value = getattr(self, setting.name)
            if setting.type == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"serve.{setting.name}", f"must be a positive integer, got {value!r}")
            if setting.type == "float":
                positive = setting.name in POSITIVE  # a timeout of 0 would refuse every request
                number = not isinstance(value, bool) and isinstance(value, int | float)
                if not (number and math.isfinite(value) and (value > 0 if positive else value >= 0)):
                    shown = f"{value:g}" if number else repr(value)
                    raise ConfigError(
                        f"serve.{setting.name}", f"must be a finite number {'>' if positive else '>='} 0, got {shown}"
                    )
        if self.max_images > self.max_queue:  # a request of more images than the queue holds could never run
            raise ConfigError(
                "serve.max_images",
                f"must be <= serve.max_queue ({self.max_queue}), got {self.max_images}: "
                "a request with more images than the queue holds could never run",
            )
        if not valid_prefix(self.root_path):
            reason = f"must be a path such as /captions (no trailing slash, no ..), got {self.root_path!r}"
            raise ConfigError("serve.root_path", reason)
        if self.max_n_best > self.max_beams:
            reason = f"must be <= serve.max_beams ({self.max_beams}), got {self.max_n_best}"
            raise ConfigError("serve.max_n_best", reason)
