"""How captionkit runs pycocoevalcap's SPICE jar, with the jar's process stood in for (no Java, no CoreNLP here):
the command pycocoevalcap runs, its results read as pycocoevalcap reads them, and every failure one clear line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from captionkit.evaluation import spice
from captionkit.evaluation.external import MetricUnavailable


@pytest.fixture
def jar_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Commands the fake jar ran; it scores image "1" 0.25, "2" with SPICE's "NaN" and leaves "3" out."""
    commands: list[list[str]] = []
    jar = tmp_path / "spice" / "spice-1.0.jar"
    monkeypatch.setattr(spice, "require_java_tool", lambda *parts, metric: jar)
    monkeypatch.setattr(spice, "ensure_corenlp", lambda lib, timeout: None)

    def run(command: list[str], **_: object) -> None:
        commands.append(command)
        results = [
            {"image_id": "1", "scores": {"All": {"f": 0.25}}},
            {"image_id": "2", "scores": {"All": {"f": "NaN"}}},
        ]
        Path(command[command.index("-out") + 1]).write_text(json.dumps(results))

    monkeypatch.setattr(spice.subprocess, "run", run)
    return commands


def test_spice_runs_the_jar_as_pycocoevalcap_and_reads_its_f_scores(jar_run, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    corpus, per_image = spice.spice(["a dog", "a cat", "a cow"], [["a dog"], ["a cat"], ["a cow"]], ["1", "2", "3"])
    (command,) = jar_run
    assert command[:4] == ["java", "-jar", "-Xmx8G", "spice-1.0.jar"]
    assert command[command.index("-cache") + 1] == str(tmp_path / "cache" / "captionkit" / "spice")
    assert command[-2:] == ["-subset", "-silent"]
    assert per_image[0] == 0.25 and math.isnan(per_image[1]) and math.isnan(per_image[2])
    assert math.isnan(corpus)  # pycocoevalcap's np.mean over the images: NaN when one is NaN


def test_an_unwritable_cache_directory_runs_spice_without_its_cache(jar_run, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    _, per_image = spice.spice(["a dog"], [["a dog"]], ["1"])
    assert per_image == [0.25] and "-cache" not in jar_run[0]


def test_results_without_scores_are_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(spice, "require_java_tool", lambda *parts, metric: tmp_path / "spice-1.0.jar")
    monkeypatch.setattr(spice, "ensure_corenlp", lambda lib, timeout: None)
    monkeypatch.setattr(
        spice.subprocess,
        "run",
        lambda command, **_: Path(command[command.index("-out") + 1]).write_text('[{"image_id": "1"}]'),
    )
    with pytest.raises(MetricUnavailable, match=r"^SPICE: the jar wrote unexpected results \(KeyError: 'scores'\)$"):
        spice.spice(["a dog"], [["a dog"]], ["1"])
