"""README.md's checkable claims hold, and those of the documents under docs/: every `--flag` given to a `captionkit`
command (in a code block or inline code) is one of that command's options, every recipe key it names (`train.lr`,
`--set data.train=...`) is a field of captionkit/config.py, every recipe, test file, benchmark and document it cites
exists, every `captionkit[extra]` is in pyproject.toml, every `python benchmarks/X.py --flag` is an option of that
script, and the Layout block lists the modules of src/captionkit, no more and no fewer. Reads the parsers, not `--help`
output, and imports no torch: it runs in about a second."""

from __future__ import annotations

import dataclasses
import re
import shlex
import tomllib
import typing
from pathlib import Path

import pytest
import typer

from captionkit.cli.app import build_app
from captionkit.config import TrainConfig, packaged_recipes
from captionkit.models.native import FamilyConfig
from captionkit.models.registry import get_family, list_models

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))
# Everything the general checks read: the README, then each document (their own sections stay the README's).
TEXT = "\n".join([README, *(path.read_text(encoding="utf-8") for path in DOCS)])
CODE_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
# Recipe keys as the README writes them: `train.lr`, `data.styles`, `--set model.encoder=...`.
RECIPE_KEY = re.compile(r"^(?:model|tokenizer|data|train)\.[a-z_]+(?:\.[a-z_]+)*(?==|$)")
# ... but not a file of a run directory (`model.safetensors`, `tokenizer.json`).
FILE_NAME = re.compile(r"\.(?:json|jsonl|safetensors|yaml|py|png|html|txt)$")


def _commands() -> dict[str, typing.Any]:
    """'caption' -> its click command, 'export int8' -> the subcommand, for every command."""
    root = typer.main.get_command(build_app())
    found: dict[str, typing.Any] = {}
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        if hasattr(command, "commands"):  # a group (typer may vendor its own click)
            for sub, subcommand in command.commands.items():
                found[f"{name} {sub}"] = subcommand
        else:
            found[name] = command
    return found


def _command_lines() -> list[str]:
    """Every command line of the README's shell blocks (continuations joined, comments cut) and every inline
    code span that starts a `captionkit` command."""
    lines = []
    for language, block in CODE_BLOCK.findall(TEXT):
        if language not in ("bash", "sh", ""):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(re.sub(r"(^|\s)#.*$", "", line))
    lines += [span for span in INLINE.findall(TEXT) if span.startswith("captionkit ")]
    return lines


def _invocations() -> list[tuple[str, list[str]]]:
    """(command name, its `--` options) for each `captionkit CMD ...` or `-m captionkit.cli CMD ...` in the README."""
    known = _commands()
    found = []
    for line in _command_lines():
        for part in re.split(r"\s(?:&&|\|\||;|&|\|)\s|;\s*|&\s*$", line):
            try:
                words = shlex.split(part.replace("[", " ").replace("]", " "))
            except ValueError:
                words = part.split()
            for start, word in enumerate(words):
                if word in ("captionkit", "captionkit.cli") and start + 1 < len(words):
                    rest = words[start + 1 :]
                    name = " ".join(rest[:2]) if " ".join(rest[:2]) in known else rest[0]
                    if name in known:
                        flags = [w.split("=", 1)[0] for w in rest if w.startswith("--")]
                        found.append((name, flags))
                    break
    return found


def test_readme_names_commands() -> None:
    names = {name for name, _ in _invocations()}
    assert {"caption", "train", "merge", "evaluate", "export int8", "data check", "benchmark"} <= names


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_readme_flag_is_an_option_of_its_command(name: str) -> None:
    command = _commands()[name]
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    unknown = sorted({flag for cmd, flags in _invocations() if cmd == name for flag in flags} - options)
    assert not unknown, f"README gives `captionkit {name}` options it does not have: {unknown}"


def _family_fields() -> set[str]:
    """The fields of every family's config: the keys ``model.overrides`` takes."""
    for name in list_models():
        get_family(name).load_class()  # defines its config class
    classes, fields = [FamilyConfig], set()
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        if dataclasses.is_dataclass(cls):
            fields |= {field.name for field in dataclasses.fields(cls)}
    return fields


def _resolves(key: str) -> bool:
    """Whether the dotted ``key`` names a field of the recipe config (nested sections followed; a key of
    ``model.overrides``, a field of a family's config)."""
    if key.startswith("model.overrides."):
        return key.removeprefix("model.overrides.") in _family_fields()
    owner: typing.Any = TrainConfig
    for part in key.split("."):
        if not (dataclasses.is_dataclass(owner) and isinstance(owner, type)):
            return False
        fields = {field.name: field for field in dataclasses.fields(owner)}
        if part not in fields:
            return False
        owner = typing.get_type_hints(owner)[part]
    return True


def test_every_readme_recipe_key_exists() -> None:
    keys = set()
    for span in INLINE.findall(TEXT) + re.findall(r"--set\s+'?([^\s']+)", TEXT):
        match = RECIPE_KEY.match(span.strip("'"))
        if match and not FILE_NAME.search(match.group(0)):
            keys.add(match.group(0))
    assert len(keys) > 20
    unknown = sorted(key for key in keys if not _resolves(key))
    assert not unknown, f"README names recipe keys that captionkit/config.py lacks: {unknown}"


def test_every_cited_file_exists() -> None:
    cited = set(re.findall(r"\b((?:benchmarks|tests)/[\w.-]+\.(?:yaml|py|sh))\b", TEXT))
    cited |= {f"tests/{name}" for name in re.findall(r"(?<![/\w])(test_\w+\.py)\b", TEXT)}
    cited |= set(re.findall(r"\bsrc/captionkit/[\w/.-]+\.(?:yaml|py)\b", TEXT))
    cited |= set(re.findall(r"\]\(((?:docs|benchmarks)/[\w./-]+)\)", README))  # the README's links
    assert len(cited) > 20
    missing = sorted(path for path in cited if not (ROOT / path).is_file())
    assert not missing, f"README cites files that do not exist: {missing}"


def test_every_recipe_named_is_packaged() -> None:
    """`captionkit train NAME`, the recipes table's `NAME` and the parts tables' `NAME.yaml` are packaged recipes."""
    table = README.split("### Recipes for the usual setups", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"\btrain ([a-z][\w.-]*) --", README))
    named |= {name for row in re.findall(r"^\| (`[^|]*`) \|", table, re.MULTILINE) for name in INLINE.findall(row)}
    named |= set(re.findall(r"\| `([a-z][\w-]*\.yaml)`", README))
    recipes = {name.removesuffix(".yaml") for name in named}
    assert len(recipes) >= 15
    missing = sorted(recipes - set(packaged_recipes()))
    assert not missing, f"README names recipes that captionkit/recipes lacks: {missing}"


def test_layout_lists_the_package() -> None:
    """The Layout block names every module and package of src/captionkit, and nothing that is gone."""
    layout = README.split("### Layout", 1)[1].split("```", 2)[1]
    listed = set()
    for line in layout.splitlines()[1:]:
        head = re.split(r"\s{2,}", line.strip())[0] if line.startswith("  ") and not line.startswith("   ") else ""
        listed |= {name.strip() for name in head.split(",") if name.strip()}
    package = ROOT / "src" / "captionkit"
    present = {
        f"{path.name}/" if path.is_dir() else path.name
        for path in package.iterdir()
        if not path.name.startswith("_") and (path.suffix == ".py" or (path / "__init__.py").is_file())
    }
    assert not listed - present, f"Layout lists what src/captionkit lacks: {sorted(listed - present)}"
    assert not present - listed, f"Layout leaves out: {sorted(present - listed)}"


def test_every_named_extra_exists() -> None:
    """`pip install 'captionkit[NAME]'` names an optional dependency group of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = set(project["optional-dependencies"])
    named = set(re.findall(r"captionkit\[([\w-]+)\]", TEXT))
    assert named, "README names no extra"
    assert not named - extras, f"README names extras pyproject.toml lacks: {sorted(named - extras)}"


def test_every_benchmark_flag_is_an_option_of_its_script() -> None:
    """`python benchmarks/NAME.py --flag ...` in the README: the script (or a benchmarks/_*.py helper it shares)
    declares `--flag`."""
    shared = "".join(path.read_text(encoding="utf-8") for path in (ROOT / "benchmarks").glob("_*.py"))
    unknown = []
    for script, arguments in re.findall(r"python\s+(benchmarks/[\w.]+\.py)([^`;)]*)", TEXT):
        source = (ROOT / script).read_text(encoding="utf-8") + shared
        unknown += [f"{script} {flag}" for flag in re.findall(r"--[a-z][\w-]*", arguments) if f'"{flag}"' not in source]
    assert not unknown, f"README gives benchmark options their scripts lack: {sorted(set(unknown))}"
