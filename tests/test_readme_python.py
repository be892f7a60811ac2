"""README.md's Python examples run as written, with tiny local models standing in for the hub ids and run directories
they load; what they print and the values their comments show are checked; the decoding options and the error its
Python section names are the real ones."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from _data import COCO_PHOTOS
from _helpers import save_tiny_model
from captionkit.api import Captioner
from captionkit.decoding.options import decoding_request, option_errors
from captionkit.errors import InputError
from captionkit.text.styles import add_style_tokens

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
LOADED = re.compile(r"""from_pretrained\(["']([^"']+)["']""")
# A line `EXPRESSION  # VALUE`: the README shows what the expression gives.
SHOWN = re.compile(r"^(?P<expression>[^#]+?)\s+#\s*(?P<value>.+)$")

pytestmark = pytest.mark.usefixtures("single_thread")


def python_blocks() -> list[str]:
    return PYTHON_BLOCK.findall(README.read_text(encoding="utf-8"))


def python_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What the README loads -> a tiny local model of the same kind (the styled one knows the two styles)."""
    root = tmp_path_factory.mktemp("readme")
    plain = save_tiny_model(root / "plain")
    styled = Captioner.from_pretrained(plain, device="cpu")
    add_style_tokens(styled.tokenizer)
    styled.model.resize_vocabulary(styled.tokenizer.vocab_size)
    styled.save_pretrained(root / "styled")
    return {"nlpconnect/vit-gpt2-image-captioning": plain, "runs/senticap-style": root / "styled", "runs/scenes": plain}


def with_checks(block: str) -> str:
    """``block`` with each `EXPRESSION  # LITERAL` line turned into a check that the expression gives the literal."""
    lines = []
    for line in block.splitlines():
        shown = SHOWN.match(line)
        if shown and _is_expression(shown["expression"]) and _is_literal(shown["value"]):
            line = f"_shows({shown['expression']}, {shown['value']!r})"
        lines.append(line)
    return "\n".join(lines)


def _is_expression(text: str) -> bool:
    try:
        ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    return "=" not in text.split("(", 1)[0]  # `x = f()  # ...` is an assignment, not a shown value


def _is_literal(text: str) -> bool:
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return False
    return True


def _shows(value: Any, literal: str) -> None:
    assert value == ast.literal_eval(literal), f"README shows {literal}, the code gives {value!r}"


def test_every_model_the_examples_load_has_a_stand_in(stand_ins: dict[str, Path]) -> None:
    loaded = {name for block in python_blocks() for name in LOADED.findall(block)}
    assert loaded and loaded <= set(stand_ins), f"add a tiny stand-in for {sorted(loaded - set(stand_ins))}"


def test_the_python_examples_run_as_written(
    stand_ins: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blocks run in order in one namespace, as a reader pastes them, beside the photos they name."""
    shutil.copy(sorted(COCO_PHOTOS.glob("*.jpg"))[0], tmp_path / "photo.jpg")
    Image.open(tmp_path / "photo.jpg").save(tmp_path / "other.png")
    monkeypatch.chdir(tmp_path)
    printed: list[tuple[Any, ...]] = []
    namespace: dict[str, Any] = {"_shows": _shows, "print": lambda *args, **kwargs: printed.append(args)}
    for block in python_blocks():
        for name, directory in stand_ins.items():
            block = block.replace(f'"{name}"', repr(str(directory)))
        exec(compile(with_checks(block), "README.md", "exec"), namespace)  # the README's own code
    assert [(image, type(caption), type(score)) for image, caption, score in printed] == [
        ("photo.jpg", str, float),
        ("other.png", str, float),
    ]


def test_the_shown_values_are_checked() -> None:
    """The check above is not vacuous: the README's `captioner.styles  # [...]` line becomes a check."""
    checked = [line for block in python_blocks() for line in with_checks(block).splitlines() if "_shows(" in line]
    assert "_shows(captioner.styles, \"['neutral', 'positive', 'negative']\")" in checked


def test_the_python_sections_decoding_options_exist() -> None:
    section = " ".join(python_section().split())
    options = re.search(r"any decoding option: (.*?); plus", section)
    aliases = re.search(r"the same names and aliases \((.*?)\), the same defaults", section)
    assert options and aliases, "README's Python section no longer lists the decoding options where this test looks"
    names = re.findall(r"`([a-z_]+)`", options[1] + " " + aliases[1])
    assert len(names) >= 12
    assert [str(error) for name in names for error in option_errors(**{name: None})] == []


def test_the_api_error_the_readme_quotes_is_the_real_one() -> None:
    quoted = re.search(r"`(num_beams: [^`]*)` from the API", " ".join(python_section().split()))
    assert quoted, "README's Python section no longer quotes the API's error for num_beams=0"
    with pytest.raises(InputError) as error:
        decoding_request(num_beams=0)
    assert str(error.value) == quoted[1]
