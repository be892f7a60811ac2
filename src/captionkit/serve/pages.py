"""The page (``/``) and the API docs page (``/docs``), served under whatever path prefix a reverse proxy puts them.

Every URL in the static files is relative (``static/app.js``, ``v1/models``), so a page opened at ``<prefix>/``
works whatever the prefix. A page opened at ``<prefix>`` without the slash would resolve them against the parent
path, so when the server knows its prefix it adds ``<base href="<prefix>/">``. It knows it from

- the ASGI ``root_path``: ``captionkit serve --root-path /captions`` (:class:`UnderPrefix`), or uvicorn's
  ``--root-path``;
- else the ``X-Forwarded-Prefix`` header a proxy that strips the prefix sends (Traefik's StripPrefix, many
  ingress controllers). A client can send it too, so only a plain path is taken (never a host, a scheme or a
  ``//``): the worst it can do is break that client's own page. The answer varies with it (``Vary``).
"""

from __future__ import annotations

import functools
import html
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from captionkit.serve.settings import valid_prefix

STATIC = ("captionkit.serve", "static")
FORWARDED_PREFIX = "X-Forwarded-Prefix"
# Where the base element goes: first in <head> after the charset, before any element that has a URL.
_CHARSET = '<meta charset="utf-8">'


def url_prefix(request: Request) -> str:
    """The path the proxy serves this app under (``""`` when none is known): the root path, else a valid
    ``X-Forwarded-Prefix`` (without its trailing slashes)."""
    root_path = request.scope.get("root_path", "").rstrip("/")
    if root_path:
        return root_path
    forwarded = request.headers.get(FORWARDED_PREFIX, "").strip().rstrip("/")
    return forwarded if forwarded and valid_prefix(forwarded) else ""


def page(request: Request, name: str) -> HTMLResponse:
    """The static HTML file ``name``, with a ``<base>`` at the prefix when one is known."""
    text = static_text(name)
    prefix = url_prefix(request)
    if prefix:
        base = f'<base href="{html.escape(prefix, quote=True)}/">'
        text = text.replace(_CHARSET, f"{_CHARSET}\n  {base}", 1)
    return HTMLResponse(text, headers={"Vary": FORWARDED_PREFIX})


@functools.cache  # the package's files do not change while it runs: read once, not on every request
def static_text(name: str) -> str:
    text = resources.files(STATIC[0]).joinpath(STATIC[1], name).read_text(encoding="utf-8")
    if _CHARSET not in text:  # the base element would have nowhere to go: a packaging mistake, said at once
        raise ValueError(f"{name}: no {_CHARSET} to put the <base> after")
    return text


class UnderPrefix:
    """ASGI middleware serving an app under ``prefix`` whether the proxy in front strips it or not: a path without
    the prefix gets it, as uvicorn's ``--root-path`` does (the ASGI spec has ``path`` include ``root_path``), and
    one that already has it is kept, where uvicorn would prefix it twice."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.prefix and scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path != self.prefix and not path.startswith(self.prefix + "/"):
                raw = scope.get("raw_path") or path.encode()
                scope = {**scope, "path": self.prefix + path, "raw_path": self.prefix.encode() + raw}
            scope = {**scope, "root_path": self.prefix}
        await self.app(scope, receive, send)
