"""`captionkit score` end to end: JSON on stdout, table on stderr, exit codes 0/1/2, and no torch import."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _data import SHARED_DATA
from _helpers import run_cli
from _java import require_java, require_pycocoevalcap
from captionkit.cli import scoring
from captionkit.cli._common import without_cyclic_gc
from captionkit.evaluation import external, spice

DATA = SHARED_DATA
COCO_SUBSET = DATA / "coco" / "captions_val2017_subset.json"
FLICKR_TOKENS = DATA / "flickr8k" / "Flickr8k.token.txt"
SCRIPT = Path(sys.executable).parent / "captionkit"
COCO_KEYS = {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}


@pytest.fixture
def coco_candidates(tmp_path: Path) -> Path:
    """What `captionkit caption` writes for the COCO subset: the second reference of each image as its caption."""
    data = json.loads(COCO_SUBSET.read_text(encoding="utf-8"))
    seen: dict[int, int] = {}
    lines = []
    for annotation in data["annotations"]:
        seen[annotation["image_id"]] = seen.get(annotation["image_id"], 0) + 1
        if seen[annotation["image_id"]] == 2:
            name = f"photos/{annotation['image_id']:012d}.jpg"
            lines.append(json.dumps({"image": name, "caption": annotation["caption"], "score": -4.0}))
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def no_meteor(monkeypatch: pytest.MonkeyPatch) -> None:
    """pycocoevalcap (the ``meteor`` extra) is not installed: neither METEOR engine has its data files."""
    monkeypatch.setattr("captionkit.evaluation.meteor.resources.pycocoevalcap_dir", lambda: None)
    monkeypatch.setattr("captionkit.evaluation.external.pycocoevalcap_dir", lambda: None)


def test_score_subprocess_end_to_end(coco_candidates: Path, tmp_path: Path) -> None:
    per_image = tmp_path / "per_image.json"
    args = ["score", "--refs", str(COCO_SUBSET), "--cands", str(coco_candidates), "--metrics", "BLEU,ROUGE_L,CIDEr"]
    done = subprocess.run([str(SCRIPT), *args, "--per-image", str(per_image)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 1
    result = json.loads(done.stdout)
    assert set(result) >= COCO_KEYS and "METEOR" not in result
    assert 0.5 < result["Bleu_1"] < 1 and 0.2 < result["CIDEr"] < 3
    assert {"distinct_1", "distinct_2", "vocab_size", "unique_captions", "length_mean", "length_p90"} <= set(result)
    assert result["num_images"] == 100 and isinstance(result["num_images"], int)
    assert isinstance(result["unique_captions"], int) and isinstance(result["vocab_size"], int)
    assert "CIDEr" in done.stderr and "Bleu_4" in done.stderr
    assert re.search(r"^  num_images +100$", done.stderr, re.MULTILINE), done.stderr
    written = json.loads(per_image.read_text())
    assert written["overall"]["CIDEr"] == result["CIDEr"]
    assert len(written["per_image"]) == 100 and set(written["per_image"]["139"]) == COCO_KEYS


def test_a_score_process_ends_with_its_exit_code_and_all_its_output(coco_candidates: Path) -> None:
    # The process ends without the interpreter's clean-up (os._exit): output flushed first, a partial result's 2 kept.
    no_java = {"PATH": str(SCRIPT.parent), "HOME": str(Path.home())}
    args = ["score", "--refs", str(COCO_SUBSET), "--cands", str(coco_candidates), "--metrics", "BLEU,SPICE"]
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=no_java)
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stdout)["num_images"] == 100
    assert "captionkit: note: SPICE left out:" in done.stderr and done.stderr.endswith("\n")


def test_scoring_imports_no_heavy_library(coco_candidates: Path) -> None:
    # Start-up is most of what `captionkit score` costs: no model library, image library, server or dataset layer,
    # no other command's module, and no typer (nor the pydantic it imports): well-formed options skip its parser.
    heavy = ("torch", "transformers", "PIL", "fastapi", "captionkit.data", "captionkit.models", "captionkit.cli.")
    heavy += ("typer", "pydantic", "click", "rich")
    light = ("captionkit.cli.scoring", "captionkit.cli._common")
    code = (
        "import sys\n"
        "from captionkit.cli import main\n"
        f"try:\n    main(['score', '--refs', {str(COCO_SUBSET)!r}, '--cands', {str(coco_candidates)!r},"
        " '--metrics', 'BLEU,ROUGE_L,CIDEr'])\n"
        "except SystemExit as done:\n    assert done.code == 0, done.code\n"
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r}) and m not in {light!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_fast_parser_knows_the_typer_commands_options() -> None:
    import inspect

    import typer

    from captionkit.cli.app import build_app

    command = typer.main.get_command(build_app("score")).commands["score"]
    declared = {opt: param.name for param in command.params for opt in param.opts}
    assert declared == {flag: name for flag, (name, _) in scoring.SCORE_OPTIONS.items()}
    assert {param.name for param in command.params if param.required} == set(scoring.REQUIRED_OPTIONS)
    defaults = inspect.signature(scoring.run_score).parameters
    for param in command.params:
        if not param.required:
            assert param.default == defaults[param.name].default, param.name


@pytest.mark.parametrize(
    ("args", "parsed"),
    [
        (["--refs", "r.json", "--cands=c.json"], {"refs": Path("r.json"), "cands": Path("c.json")}),
        (
            ["--cands", "c", "--metrics", "BLEU", "--refs", "r"],
            {"cands": Path("c"), "metrics": "BLEU", "refs": Path("r")},
        ),
        (["--refs", "r.json"], None),  # missing --cands: typer says so
        (["--refs", "r", "--cands", "c", "--help"], None),
        (["--refs", "r", "--cands", "c", "--refs", "s"], None),  # repeated
        (["--refs", "r", "--cands", "c", "--metric", "BLEU"], None),  # mistyped
        (["--refs", "r", "--cands", "c", "--metrics"], None),  # no value
        (["--refs", "r", "--cands", "--metrics", "BLEU"], None),  # a flag where a value should be
        (["--refs", "r", "--cands", ""], None),
        (["--refs", "r", "--cands", "c", "extra"], None),
    ],
)
def test_the_fast_parser_takes_only_well_formed_command_lines(args: list[str], parsed: dict | None) -> None:
    assert scoring.parse_score_options(args) == parsed


def test_score_without_typer_equals_score_through_typer(
    coco_candidates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["score", "--refs", COCO_SUBSET, "--cands", coco_candidates, "--metrics", "BLEU,ROUGE_L,CIDEr"]
    fast = run_cli([*args, "--per-image", tmp_path / "fast.json"], capsys)
    monkeypatch.setattr(scoring, "parse_score_options", lambda _args: None)
    typed = run_cli([*args, "--per-image", tmp_path / "typed.json"], capsys)
    assert fast == typed and fast[0] == 0
    assert (tmp_path / "fast.json").read_text() == (tmp_path / "typed.json").read_text()
    bad = ["score", "--refs", COCO_SUBSET, "--cands", COCO_SUBSET, "--metrics", "BLEU"]
    typed_error = run_cli(bad, capsys)
    monkeypatch.undo()
    assert run_cli(bad, capsys) == typed_error and typed_error[0] == 1


def test_score_pauses_the_cyclic_collector_only_while_it_runs(
    coco_candidates: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[bool] = []

    @without_cyclic_gc
    def command(fail: bool) -> int:
        seen.append(gc.isenabled())
        if fail:
            raise SystemExit(1)
        return 7

    assert command(fail=False) == 7 and gc.isenabled()
    with pytest.raises(SystemExit):
        command(fail=True)
    assert seen == [False, False] and gc.isenabled()
    args = ["score", "--refs", str(COCO_SUBSET), "--cands", str(coco_candidates), "--metrics", "BLEU"]
    assert run_cli(args, capsys)[0] == 0 and gc.isenabled()
    assert run_cli([*args[:-4], "--cands", str(COCO_SUBSET)], capsys)[0] == 1 and gc.isenabled()


def test_importing_the_evaluation_package_is_light() -> None:
    code = (
        "import sys, captionkit.evaluation\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'torch', 'transformers'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_default_metrics_leave_out_meteor_with_a_note(
    no_meteor: None, coco_candidates: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["score", "--refs", str(COCO_SUBSET), "--cands", str(coco_candidates)], capsys)
    assert code == 0
    result = json.loads(out)
    assert set(result) >= COCO_KEYS and "METEOR" not in result
    extra = "install the extra (pip install 'captionkit[meteor]')"
    assert result["notes"] == [f"METEOR left out: METEOR needs pycocoevalcap's data files: {extra}"]
    assert "captionkit: note: METEOR left out" in err
    assert "Java" not in err  # METEOR in Python never needs Java


def test_asked_for_meteor_unavailable_exits_2(
    no_meteor: None, coco_candidates: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["score", "--refs", str(COCO_SUBSET), "--cands", str(coco_candidates), "--metrics", "CIDEr,METEOR"]
    code, out, _ = run_cli(args, capsys)
    assert code == 2
    assert "CIDEr" in json.loads(out) and "METEOR" not in json.loads(out)


def test_spice_offline_gives_one_clear_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, coco_candidates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # pycocoevalcap's SPICE jar in a package copy whose lib/ lacks CoreNLP, whether or not the real one has it.
    jar = require_pycocoevalcap() / "spice" / "spice-1.0.jar"
    package = tmp_path / "pycocoevalcap"
    (package / "spice" / "lib").mkdir(parents=True)
    (package / "spice" / "spice-1.0.jar").symlink_to(jar)
    monkeypatch.setattr(external, "pycocoevalcap_dir", lambda: package)
    # A refused connection stands in for being offline (this machine is offline anyway; never start a 400 MB
    # download from a test run).
    monkeypatch.setattr(spice, "CORENLP_URL", "http://127.0.0.1:9/stanford-corenlp-full-2015-12-09.zip")
    args = ["score", "--refs", str(COCO_SUBSET), "--cands", str(coco_candidates), "--metrics", "BLEU,SPICE"]
    require_java()
    code, out, err = run_cli(args, capsys)
    assert code == 2
    result = json.loads(out)
    assert "SPICE" not in result and "Bleu_4" in result
    (note,) = result["notes"]
    assert note.startswith("SPICE left out: SPICE needs Stanford CoreNLP 3.6.0, which could not be downloaded (")
    assert "stanford-corenlp-3.6.0-models.jar" in note and "\n" not in note
    assert f"captionkit: note: {note}" in err


def test_spice_without_java_is_one_note_saying_so_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, coco_candidates: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, a "SPICE runs in Java" note came first, on a machine without Java: two notes, the first one false.
    monkeypatch.setattr(external.shutil, "which", lambda name: None)  # no java on PATH
    args = ["score", "--refs", str(COCO_SUBSET), "--cands", str(coco_candidates), "--metrics", "BLEU,SPICE"]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert "SPICE" not in json.loads(out) and "Bleu_4" in json.loads(out)
    notes = [line for line in err.splitlines() if line.startswith("captionkit:")]
    assert notes == ["captionkit: note: SPICE left out: SPICE needs Java on PATH (java not found)"]


def test_train_captions_give_the_share_of_captions_copied_from_them(
    coco_candidates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    captions = [json.loads(line)["caption"] for line in coco_candidates.read_text(encoding="utf-8").splitlines()]
    train = tmp_path / "train.token.txt"  # any --refs format: Flickr's tokens here, two captions verbatim
    train.write_text(f"a.jpg#0\t{captions[0]}\na.jpg#1\t{captions[5]}\nb.jpg#0\ta caption of no candidate\n")
    args = ["score", "--refs", COCO_SUBSET, "--cands", coco_candidates, "--metrics", "BLEU"]
    code, out, _ = run_cli([*args, "--train-captions", train], capsys)
    assert code == 0
    assert json.loads(out)["copied_from_train"] == pytest.approx(2 / 100)
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "copied_from_train" not in json.loads(out)  # only with training captions to compare
    code, out, err = run_cli([*args, "--train-captions", tmp_path / "missing.txt"], capsys)
    assert (code, out) == (1, "")
    assert err.strip() == f"captionkit: error: {tmp_path / 'missing.txt'}: no such file"


def test_flickr_references_with_plain_json_candidates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = sorted({line.split("#")[0] for line in FLICKR_TOKENS.read_text(encoding="utf-8").splitlines() if line})
    cands = tmp_path / "cands.json"
    cands.write_text(json.dumps({Path(n).stem: "a dog runs through the grass ." for n in names}), encoding="utf-8")
    code, out, _ = run_cli(["score", "--refs", str(FLICKR_TOKENS), "--cands", str(cands), "--metrics", "bleu"], capsys)
    assert code == 0
    result = json.loads(out)
    assert set(result) >= {"Bleu_1", "Bleu_4"} and "CIDEr" not in result
    assert result["unique_captions"] == 1 and result["unique_share"] == pytest.approx(1 / 200)
    # Quoted as written, not as tokenized ('a dog runs through the grass'), which the user never wrote.
    assert result["notes"] == ["the caption 'a dog runs through the grass .' was given to 200 of 200 images (100%)"]


@pytest.mark.parametrize(
    ("cands_content", "message"),
    [
        ("", "empty file"),
        ('{"image": "x.jpg", "error": "truncated image"}\n', "not one image has a caption: 1 image failed to caption"),
        ('{"nope.jpg": "a room"}', "1 candidate image without references in"),
        ("[1, 2]", "result 0: expected an object"),
    ],
)
def test_bad_input_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cands_content: str, message: str
) -> None:
    cands = tmp_path / "cands.json"
    cands.write_text(cands_content, encoding="utf-8")
    code, out, err = run_cli(["score", "--refs", str(COCO_SUBSET), "--cands", str(cands), "--metrics", "BLEU"], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"captionkit: error: {cands}: ")
    assert message in err


def _second_references() -> dict[str, str]:
    """The COCO subset's second reference of each image, by image id: captions a good model could write."""
    data = json.loads(COCO_SUBSET.read_text(encoding="utf-8"))
    captions: dict[str, list[str]] = {}
    for annotation in data["annotations"]:
        captions.setdefault(str(annotation["image_id"]), []).append(annotation["caption"])
    return {image_id: refs[1] for image_id, refs in captions.items()}


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_caption_results_with_an_empty_caption_and_a_failed_image_are_scored_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """`caption` writes empty captions and error records; `score` refused both ("1 image failed to caption ...
    every image needs a caption to score", then "image '139': empty caption"). Now, as `evaluate`: the empty caption
    is scored (0 on its image), the failed image is left out, counted and said in one line, and the exit is 2."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    from captionkit.evaluation import score_captions
    from captionkit.evaluation.readers import read_references
    from captionkit.jobs.outputs import RecordWriter

    captions = _second_references()
    ids = list(captions)
    empty, failed = ids[0], ids[1]
    captions[empty] = ""
    records = [
        {"image": f"photos/{int(i):012d}.jpg", "error": "cannot identify image file"}
        if i == failed
        else {"image": f"photos/{int(i):012d}.jpg", "caption": captions[i], "score": -4.0}
        for i in ids
    ]
    cands = tmp_path / f"caps.{fmt}"
    writer = RecordWriter(cands, fmt)  # as `captionkit caption --output caps.FMT` writes it
    writer.write(records)
    writer.close()
    per_image = tmp_path / "per_image.json"
    args = ["score", "--refs", COCO_SUBSET, "--cands", cands, "--metrics", "BLEU,ROUGE_L,CIDEr"]
    code, out, err = run_cli([*args, "--per-image", per_image], capsys)
    assert code == 2, err
    result = json.loads(out)
    assert (result["num_images"], result["failed_images"]) == (99, 1)
    references = read_references(COCO_SUBSET).captions
    scored = {i: captions[i] for i in ids if i != failed}
    expected = score_captions({i: references[i] for i in scored}, scored, "BLEU,ROUGE_L,CIDEr", allow_empty=True)
    for key in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert result[key] == pytest.approx(expected.scores[key], abs=1e-12), key
    written = json.loads(per_image.read_text(encoding="utf-8"))["per_image"]
    assert failed not in written and written[empty] == {k: 0.0 for k in written[empty]}
    line = (
        f"captionkit: 1 of 100 images in {cands} failed to caption ({int(failed):012d}.jpg: cannot identify image "
        "file), left out of the scores, which are over the other 99 images"
    )
    assert line in err.splitlines()
    assert "captionkit: note: 1 of the 99 candidate captions is empty, scored as captions (0 on their images)" in err
    assert "error:" not in err and "left out, as pycocoevalcap" not in err  # the failed image has its own line


def test_an_empty_caption_in_coco_results_is_scored_and_a_retried_image_keeps_its_caption(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model's empty caption scores 0 (it was "image '139': empty caption", exit 1); an image that failed and
    was captioned later (an error record, then its caption) is captioned, as `merge` keeps its caption."""
    captions = _second_references()
    captions["139"] = ""
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": int(i), "caption": c} for i, c in captions.items()]), encoding="utf-8")
    args = ["score", "--refs", COCO_SUBSET, "--cands", results, "--metrics", "BLEU,CIDEr", "--per-image"]
    code, out, err = run_cli([*args, tmp_path / "scores.json"], capsys)
    assert code == 0, err
    assert json.loads(out)["num_images"] == 100 and "failed_images" not in json.loads(out)
    assert json.loads((tmp_path / "scores.json").read_text())["per_image"]["139"]["CIDEr"] == 0.0
    assert "captionkit: note: 1 of the 100 candidate captions is empty" in err

    lines = [json.dumps({"image": "photos/000000000139.jpg", "error": "cannot identify image file"})]
    lines += [json.dumps({"image": f"photos/{int(i):012d}.jpg", "caption": c}) for i, c in captions.items()]
    retried = tmp_path / "retried.jsonl"
    retried.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, again, err = run_cli(["score", "--refs", COCO_SUBSET, "--cands", retried, "--metrics", "BLEU,CIDEr"], capsys)
    assert code == 0 and "failed" not in err
    assert json.loads(again) == json.loads(out)


def test_unknown_metric_and_missing_option_exit_1(coco_candidates: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["score", "--refs", str(COCO_SUBSET), "--cands", str(coco_candidates), "--metrics", "BLEU,WER"]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and err.startswith("captionkit: error: --metrics: unknown metric 'WER' (known: BLEU, ")
    code, _, _ = run_cli(["score", "--refs", str(COCO_SUBSET)], capsys)
    assert code == 1


def test_clipscore_with_an_images_path_that_is_no_directory_exits_1_naming_the_flag(
    coco_candidates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["score", "--refs", str(COCO_SUBSET), "--cands", str(coco_candidates), "--metrics", "CIDEr,CLIPScore"]
    nowhere = tmp_path / "nowhere"
    for images, reason in ((nowhere, f"{nowhere}: no such directory"), (coco_candidates, f"{coco_candidates} is not")):
        code, out, err = run_cli([*args, "--images", str(images), "--clip-model", str(tmp_path / "no-clip")], capsys)
        assert (code, out) == (1, "")
        assert err.startswith(f"captionkit: error: --images: {reason}") and err.count("\n") == 1


DEEP = "[" * 1500 + "]" * 1500
BIG = "9" * 5000


@pytest.mark.parametrize(
    ("which", "content", "reason"),
    [
        ("--refs", DEEP, "invalid JSON: nested more than 64 levels deep"),
        ("--cands", DEEP, "invalid JSON: nested more than 64 levels deep"),
        ("--refs", '{"1": [' + BIG + "]}", "invalid JSON: a number longer than 4300 digits"),
        ("--cands", '[{"image_id": ' + BIG + ', "caption": "a"}]', "invalid JSON: a number longer than 4300 digits"),
        ("--cands", '{"image": "x.jpg", "caption": ' + BIG + "}\n", "invalid JSON: a number longer than 4300"),
        (
            "--cands",
            '{"image": "x.jpg", "caption": "a"}\n{"image": "y.jpg", "caption": ' + BIG + "}\n",
            "line 2: invalid JSON: a number longer than 4300 digits",
        ),
    ],
)
def test_hostile_json_files_exit_1_with_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str, content: str, reason: str
) -> None:
    hostile = tmp_path / "hostile.json"
    hostile.write_text(content, encoding="utf-8")
    files = {"--refs": str(COCO_SUBSET), "--cands": str(COCO_SUBSET)} | {which: str(hostile)}
    code, out, err = run_cli(["score", *[part for pair in files.items() for part in pair], "--metrics", "BLEU"], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"captionkit: error: {hostile}")
    assert reason in err


def test_a_note_says_when_meteor_runs_java_and_how_to_leave_it_out(
    monkeypatch: pytest.MonkeyPatch, coco_candidates: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from captionkit.evaluation.api import java_note

    runs: list[str] = []
    monkeypatch.setattr("captionkit.evaluation.meteor.meteor_unavailable_reason", lambda engine: None)  # Java is there
    monkeypatch.setattr("captionkit.evaluation.spice.spice_unavailable_reason", lambda: None)  # and SPICE's jar
    monkeypatch.setattr(
        "captionkit.evaluation.meteor.meteor",
        lambda cands, refs, engine: (runs.append(engine), (0.25, [0.25] * len(cands)))[1],
    )
    note = "METEOR runs in Java (seconds more than the others); --metrics BLEU,ROUGE_L,CIDEr leaves it out"
    assert java_note(None) is None  # METEOR runs in Python by default
    assert java_note(None, "java") == note
    assert java_note("BLEU,ROUGE_L,CIDEr", "java") is None
    assert java_note("cider,meteor,spice", "java") == (
        "METEOR and SPICE run in Java (seconds more than the others); --metrics CIDEr leaves them out"
    )
    assert (
        java_note("cider,meteor,spice")
        == "SPICE runs in Java (seconds more than the others); --metrics CIDEr,METEOR leaves it out"
    )
    code, out, err = run_cli(["score", "--refs", COCO_SUBSET, "--cands", coco_candidates, "--meteor", "java"], capsys)
    assert code == 0 and json.loads(out)["METEOR"] == 0.25 and runs == ["java"]
    assert err.startswith(f"captionkit: note: {note}\n")
    code, _, err = run_cli(["score", "--refs", COCO_SUBSET, "--cands", coco_candidates], capsys)
    assert code == 0 and runs == ["java", "python"] and "Java" not in err
    monkeypatch.setattr("captionkit.evaluation.meteor.meteor_unavailable_reason", lambda engine: "java not found")
    assert java_note(None, "java") is None  # METEOR is left out with its own note
    code, out, err = run_cli(["score", "--refs", COCO_SUBSET, "--cands", coco_candidates, "--meteor", "jvm"], capsys)
    assert code == 1 and out == ""
    assert err == "captionkit: error: --meteor: unknown METEOR engine 'jvm' (known: python, java)\n"


def _meteor_score_files(tmp_path: Path) -> list[str]:
    """`score` arguments for METEOR over the COCO subset: each image's first caption against its others."""
    by_image: dict[str, list[str]] = {}
    for annotation in json.loads(COCO_SUBSET.read_text(encoding="utf-8"))["annotations"]:
        by_image.setdefault(str(annotation["image_id"]), []).append(annotation["caption"])
    refs, cands = tmp_path / "refs.json", tmp_path / "cands.json"
    refs.write_text(json.dumps({i: captions[1:] for i, captions in by_image.items()}), encoding="utf-8")
    cands.write_text(json.dumps({i: captions[0] for i, captions in by_image.items()}), encoding="utf-8")
    return ["score", "--refs", str(refs), "--cands", str(cands), "--metrics", "METEOR"]


def _meteor_without_java(args: list[str]) -> float:
    """METEOR from `score ARGS` run where no `java` can be found."""
    from captionkit.evaluation.meteor import meteor_unavailable_reason

    assert meteor_unavailable_reason("python") is None, "the dev install has the meteor extra (pycocoevalcap)"
    caches = {k: v for k, v in os.environ.items() if k in ("CAPTIONKIT_CACHE", "XDG_CACHE_HOME")}
    no_java = {"PATH": str(SCRIPT.parent), "HOME": str(Path.home()), **caches}
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=no_java)
    assert done.returncode == 0, done.stderr
    assert "Java" not in done.stderr
    return float(json.loads(done.stdout)["METEOR"])


def test_meteor_needs_no_java(tmp_path: Path) -> None:
    """Issue 19's "done when": `score` reports METEOR where no `java` can be found (equal to the jar's: the slow
    test below, and tests/test_meteor_jar.py image by image)."""
    assert 0.1 < _meteor_without_java(_meteor_score_files(tmp_path)) < 0.5


@pytest.mark.slow
def test_meteor_without_java_equals_the_jars_through_score(tmp_path: Path) -> None:
    """The same `score` run with --meteor java (the jar, in a JVM: about 15 s) gives the same METEOR."""
    args = _meteor_score_files(tmp_path)
    python_meteor = _meteor_without_java(args)
    require_java()
    java = subprocess.run([str(SCRIPT), *args, "--meteor", "java"], capture_output=True, text=True)
    assert java.returncode == 0, java.stderr
    assert abs(json.loads(java.stdout)["METEOR"] - python_meteor) <= 1e-4


@pytest.mark.parametrize("which", ["--refs", "--cands", "--train-captions"])
def test_a_per_image_file_that_is_an_input_is_refused_before_scoring(
    coco_candidates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    """--per-image used to replace the candidates (or references) with the scores, exit 0."""
    refs = tmp_path / "refs.json"
    refs.write_bytes(COCO_SUBSET.read_bytes())
    files = {"--refs": refs, "--cands": coco_candidates, "--train-captions": refs}
    kept = {path: path.read_bytes() for path in files.values()}
    args = ["score", "--refs", refs, "--cands", coco_candidates, "--metrics", "BLEU"]
    if which == "--train-captions":
        args += ["--train-captions", refs]
    code, out, err = run_cli([*args, "--per-image", files[which]], capsys)
    assert (code, out) == (1, "")
    shown = files[which]
    assert err == f"captionkit: error: --per-image: {shown} is also an input; write the results to a new file\n"
    assert {path: path.read_bytes() for path in kept} == kept


def test_a_per_image_path_through_a_folder_yet_to_be_made_that_leads_to_an_input_is_refused(
    coco_candidates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """sub/../cands.json names no file while sub is missing (samefile cannot stat it), but the command makes sub and
    then wrote the scores over the candidates."""
    monkeypatch.chdir(coco_candidates.parent)
    kept = coco_candidates.read_bytes()
    through = Path("sub") / ".." / coco_candidates.name
    args = ["score", "--refs", COCO_SUBSET, "--cands", coco_candidates.name, "--metrics", "BLEU"]
    code, out, err = run_cli([*args, "--per-image", through], capsys)
    assert (code, out) == (1, "")
    reason = f"{through} is also an input ({coco_candidates.name}); write the results to a new file"
    assert err == f"captionkit: error: --per-image: {reason}\n"
    assert coco_candidates.read_bytes() == kept and not (coco_candidates.parent / "sub").exists()


def test_a_per_image_path_that_cannot_be_written_is_refused_before_scoring(
    coco_candidates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import captionkit.evaluation.api as api

    scored: list[object] = []
    score = api.score_captions
    monkeypatch.setattr(api, "score_captions", lambda *a, **k: scored.append(1) or score(*a, **k))
    args = ["score", "--refs", COCO_SUBSET, "--cands", coco_candidates, "--metrics", "BLEU", "--per-image", tmp_path]
    code, out, err = run_cli(args, capsys)
    assert (code, out, scored) == (1, "", [])
    assert err == f"captionkit: error: --per-image: {tmp_path} is a directory\n"


def test_a_per_image_file_in_a_folder_yet_to_exist_is_written(coco_candidates: Path, tmp_path: Path, capsys) -> None:
    per_image = tmp_path / "new" / "deeper" / "scores.json"
    args = ["score", "--refs", COCO_SUBSET, "--cands", coco_candidates, "--metrics", "BLEU", "--per-image", per_image]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert set(json.loads(per_image.read_text())) == {"overall", "per_image"}


def test_a_per_image_file_the_disk_refuses_is_one_line_naming_its_flag(
    coco_candidates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that failed after the checks (a full disk, /proc/x.json) said "FILE: cannot write (...)" without the
    "--per-image:" every other output error of score and evaluate starts with."""
    per_image = tmp_path / "scores.json"

    def full_disk(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        raise OSError(28, "No space left on device", os.fspath(source))

    monkeypatch.setattr(os, "replace", full_disk)
    args = ["score", "--refs", COCO_SUBSET, "--cands", coco_candidates, "--metrics", "BLEU", "--per-image", per_image]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: --per-image: {per_image}: cannot write (No space left on device)\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["captions.jsonl"]  # no staging file left


def test_ctrl_c_while_scoring_exits_130_in_one_line(
    coco_candidates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during a long METEOR used to end score with a traceback from deep inside numpy."""
    import captionkit.evaluation.api as api

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "score_captions", interrupted)
    per_image = tmp_path / "scores.json"
    args = ["score", "--refs", COCO_SUBSET, "--cands", coco_candidates, "--metrics", "BLEU", "--per-image", per_image]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (130, "")
    assert err == f"captionkit: interrupted: no scores printed; {per_image} not written\n"
    assert not per_image.exists()


@pytest.mark.parametrize(
    ("flag", "value", "metric"),
    [("--images", "photos", "CLIPScore"), ("--clip-model", "my-clip", "CLIPScore"), ("--meteor", "java", "METEOR")],
)
def test_metric_options_without_their_metric_are_refused_not_ignored(
    coco_candidates: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, metric: str
) -> None:
    """--images DIR (or --clip-model, --meteor java) with metrics that leave its metric out scored as if it had not
    been given: exit 0 and no CLIPScore (or METEOR), without a word."""
    args = ["score", "--refs", COCO_SUBSET, "--cands", coco_candidates, "--metrics", "BLEU,CIDEr", flag, value]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: {flag}: only with --metrics naming {metric}: nothing else reads it\n"


def test_the_failed_images_line_groups_every_count_alike(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Its last count came through the one plural ("1,200 images") and the others did not ("1 of 1201")."""
    refs, cands = tmp_path / "refs.json", tmp_path / "caps.jsonl"
    refs.write_text(json.dumps({str(i): [f"a photo of thing {i}"] for i in range(1200)}), encoding="utf-8")
    records = [{"image": f"{i}.jpg", "caption": f"a photo of thing {i}"} for i in range(1200)]
    records.append({"image": "gone.jpg", "error": "no such file"})
    cands.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    code, _, err = run_cli(["score", "--refs", refs, "--cands", cands, "--metrics", "BLEU"], capsys)
    assert code == 2, err
    line = (
        f"captionkit: 1 of 1,201 images in {cands} failed to caption (gone.jpg: no such file), left out of the "
        "scores, which are over the other 1,200 images"
    )
    assert line in err.splitlines(), err
