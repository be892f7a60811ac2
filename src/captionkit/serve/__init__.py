"""``captionkit serve``: a REST API and a web page over one or more captioners (needs ``captionkit[serve]``).

>>> from captionkit.serve import ServeSettings, create_app
>>> app = create_app({"base": Captioner.from_pretrained("runs/base")}, ServeSettings(max_batch=8))  # doctest: +SKIP
"""

from __future__ import annotations

from captionkit.serve.app import create_app
from captionkit.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
