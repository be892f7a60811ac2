"""A model directory's ``config.json``, read the one way every loader reads it: each way it can fail (missing,
unreadable, hostile or malformed JSON, not an object) is one :class:`ModelLoadError` line naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captionkit.errors import ModelLoadError, first_line
from captionkit.jsontext import parse_json
from captionkit.run_layout import CHECKPOINTS, latest_checkpoint

CONFIG_FILE = "config.json"


def read_config_json(directory: Path, source: object) -> dict[str, Any]:
    """``directory/config.json`` as a dict; ``source`` (what the user named) is blamed when there is none."""
    config_file = Path(directory) / CONFIG_FILE
    if not config_file.is_file():
        raise ModelLoadError(source, f"no config.json: {_what_instead(Path(directory))}")
    try:
        text = config_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ModelLoadError(config_file, f"unreadable config: {first_line(error)}") from None
    config = parse_json(text, config_file, error=ModelLoadError)
    if not isinstance(config, dict):
        raise ModelLoadError(config_file, "is not a JSON object")
    return config


def _what_instead(directory: Path) -> str:
    """What a directory without config.json is: a training run that has not written its final model yet (pointing
    at its latest checkpoint), or no model directory."""
    latest = latest_checkpoint(directory / CHECKPOINTS)
    if latest is None and directory.name == CHECKPOINTS:  # a run's checkpoints folder itself
        latest = latest_checkpoint(directory)
        if latest is not None:
            return f"a run's checkpoints folder, not a model; its latest checkpoint is {latest}"
    if latest is None:
        return "not a model directory"
    return f"a training run without its final model yet; its latest checkpoint is {latest} (load it, or resume the run)"
