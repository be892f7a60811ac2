"""`captionkit data check`: counts, lengths, duplicates and the errors that make it exit 1, on shared data and on
folders with a missing, a corrupt and a leaked image."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest
from PIL import Image

from _data import SHARED_DATA
from _helpers import run_cli
from _shards import real_photos, samples
from captionkit.data.check import caption_words, check_records, length_stats
from captionkit.data.sources import load_records
from captionkit.data.splits import assign_splits
from captionkit.shards import writing

FLICKR = SHARED_DATA / "flickr8k"
COCO = SHARED_DATA / "coco"


def test_check_flickr8k_json(capsys):
    code, out, _ = run_cli(["data", "check", str(FLICKR), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["format"] == "flickr"
    assert report["splits_from"] == "data"
    counts = {name: (s["images"], s["captions"], s["styles"]["neutral"]) for name, s in report["splits"].items()}
    assert counts == {"train": (150, 750, 750), "val": (25, 125, 125), "test": (25, 125, 125)}
    assert (report["total"]["images"], report["total"]["captions"]) == (200, 1000)
    words = report["total"]["caption_words"]
    assert words["min"] <= words["median"] <= words["max"] and words["min"] < words["mean"] < words["max"]
    assert report["missing_images"] == report["unreadable_images"] == report["images_in_several_splits"] == []
    assert report["errors"] == 0


def test_check_coco_subset_text_table(capsys):
    code, out, _ = run_cli(
        ["data", "check", str(COCO / "captions_val2017_subset.json"), "--val-fraction", "0.2"], capsys
    )
    assert code == 0
    assert "coco" in out and "splits: none in the data; shown as a training run splits it: by image, seed 0" in out
    assert ", val 0.2\n" in out
    # The same rule as evaluate's: no test split in the data, so evaluate scores it whole.
    assert "evaluate's default split: all 100 images (the data has no test split)" in out
    total = next(line for line in out.splitlines() if line.strip().startswith("total"))
    assert total.replace("│", " ").split()[1:4] == ["100", "500", "500"]
    assert "ok: no errors" in out


def test_a_folder_with_two_coco_caption_files_checks_each(capsys):
    code, out, _ = run_cli(["data", "check", str(COCO), "--no-images"], capsys)
    assert code == 0, out
    files = [COCO / "captions_val2017.json", COCO / "captions_val2017_subset.json"]
    assert out.startswith(f"{COCO}: 2 COCO caption files of one split each, checked one by one:\n")
    assert all(f"  {path}\n" in out for path in files)
    assert [line for line in out.splitlines() if line.startswith("evaluate's default split")] == [
        "evaluate's default split: all 5,000 images (the data has no test split)",
        "evaluate's default split: all 100 images (the data has no test split)",
    ]
    code, out, _ = run_cli(["data", "check", str(COCO), "--no-images", "--json"], capsys)
    reports = json.loads(out)["datasets"]
    assert [(r["files"], r["total"]["images"]) for r in reports] == [([str(files[0])], 5000), ([str(files[1])], 100)]


def test_check_one_split_only(capsys):
    code, out, _ = run_cli(["data", "check", str(FLICKR / "dataset_flickr8k.json"), "--split", "val", "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert list(report["splits"]) == ["val"] and report["total"]["images"] == 25


@pytest.fixture
def broken_folder(tmp_path):
    """train/: a good image, a corrupt one and one whose file is gone; test/: a copy of the good train image."""
    root = tmp_path / "photos"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(root / "train" / "good.png")
    (root / "train" / "good.txt").write_text("a green square\na green square\n")
    (root / "train" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "train" / "corrupt.txt").write_text("a broken photo\n")
    shutil.copy(root / "train" / "good.png", root / "test" / "copy.png")
    (root / "test" / "copy.txt").write_text("a green square\n")
    csv = tmp_path / "list.csv"
    csv.write_text(
        "image,caption,split\nphotos/train/good.png,a square,train\nphotos/train/gone.png,a lost photo,train\n"
    )
    return root, csv


def test_check_reports_corrupt_image_and_leak_by_bytes(broken_folder, capsys):
    root, _ = broken_folder
    code, out, _ = run_cli(["data", "check", str(root)], capsys)
    assert code == 1
    assert str(root / "train" / "corrupt.jpg") in out
    assert "1 unreadable image" in out
    assert "image in several splits" in out and "same bytes" in out
    assert "1 caption repeated on one image" in out
    assert "2 errors" in out
    code, out, _ = run_cli(["data", "check", str(root), "--json"], capsys)
    report = json.loads(out)
    assert [item["image"] for item in report["unreadable_images"]] == [str(root / "train" / "corrupt.jpg")]
    assert report["duplicate_images"] == [[str(root / "test" / "copy.png"), str(root / "train" / "good.png")]]
    assert report["images_in_several_splits"][0]["splits"] == ["test", "train"]


def test_check_reports_missing_image(broken_folder, capsys):
    _, csv = broken_folder
    code, out, _ = run_cli(["data", "check", str(csv)], capsys)
    assert code == 1
    assert "1 missing image" in out and str(csv.parent / "photos" / "train" / "gone.png") in out


def test_check_without_opening_images_finds_no_image_errors(broken_folder, capsys):
    _, csv = broken_folder
    code, out, _ = run_cli(["data", "check", str(csv), "--no-images", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["images_checked"] is False
    code, out, _ = run_cli(["data", "check", str(csv), "--no-images"], capsys)
    assert code == 0 and "missing image" not in out and "identical image files" not in out
    assert "images: not opened (--no-images): missing, unreadable and identical files not looked for\n" in out


def test_check_reports_dropped_captions(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "c.jsonl").write_text(
        '{"image": "a.png", "caption": "one", "split": "train"}\n{"image": "a.png", "caption": " "}\n'
    )
    code, out, _ = run_cli(["data", "check", str(tmp_path / "c.jsonl")], capsys)
    assert code == 0
    assert "dropped: 1 x empty caption" in out


def test_check_image_id_in_two_splits(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "c.csv").write_text("image,caption,split\na.png,one,train\na.png,two,val\n")
    code, out, _ = run_cli(["data", "check", str(tmp_path / "c.csv"), "--json"], capsys)
    assert code == 1
    shared = json.loads(out)["images_in_several_splits"]
    assert shared == [
        {"image": str(tmp_path / "a.png"), "image_id": "a.png", "splits": ["train", "val"], "by": "image id"}
    ]


def test_check_bad_input_and_unknown_split(tmp_path, capsys):
    code, _, err = run_cli(["data", "check", str(tmp_path / "nothing")], capsys)
    assert code == 1 and "no such file or directory" in err
    code, out, err = run_cli(["data", "check", str(FLICKR), "--split", "extra"], capsys)
    assert (code, out, err) == (
        1,
        "",
        "captionkit: error: --split: must be one of train, val, test or all, got 'extra'\n",
    )
    code, _, err = run_cli(["data", "check", str(FLICKR / "captions.txt"), "--split", "test", "--no-images"], capsys)
    assert code == 1 and "no captions in split 'test' (splits: train, val)" in err


def test_length_stats_and_words():
    assert caption_words("A man's hat, (red).") == ["a", "man's", "hat", "red"]
    assert length_stats([3, 1, 2, 10]) == {"min": 1, "mean": 4.0, "median": 2.5, "max": 10}
    report = check_records(load_records(FLICKR / "captions.txt"), open_images=False)
    assert report["splits"] == {"none": report["total"]}


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("deep.json", "[" * 1500 + "]" * 1500, "invalid JSON: nested more than 64 levels deep"),
        ("bigint.json", '{"images": [{"id": ' + "1" * 5000 + "}]}", "invalid JSON: a number longer than 4300 digits"),
        ("c.jsonl", '{"image": "a.png", "caption": "x", "image_id": ' + "1" * 5000 + "}\n", "a number longer"),
        ("nan.json", '{"images": [{"id": NaN}], "annotations": []}', "invalid JSON: NaN is not a JSON number"),
    ],
)
def test_check_hostile_json_is_one_line_naming_the_file(tmp_path, capsys, name, content, reason):
    path = tmp_path / name
    path.write_text(content)
    code, out, err = run_cli(["data", "check", str(path), "--no-images"], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"captionkit: error: {path}")
    assert reason in err


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (
            'image,caption\na.jpg,one\nb.jpg,"a dog runs\nc.jpg,a cat sits\nd.jpg,a bird\n',
            3,
            "unterminated quote: the quoted field opened in this row is still open at the end (line 5)",
        ),
        (
            'image,caption\nb.jpg,"a dog runs\nc.jpg,a cat sits\nd.jpg,"the end"\n',
            2,
            "malformed CSV at line 4 (',' expected after '\"'); is a quote in this row left open?",
        ),
    ],
)
def test_check_csv_with_a_quote_left_open_names_the_line(tmp_path, capsys, content, line, reason):
    path = tmp_path / "c.csv"
    path.write_text(content)
    code, out, err = run_cli(["data", "check", str(path), "--no-images"], capsys)
    assert code == 1 and out == ""
    assert err == f"captionkit: error: {path}:{line}: {reason}\n"


def test_check_warns_of_absurdly_long_captions(tmp_path, capsys):
    long = " ".join(["word"] * 150)
    (tmp_path / "c.csv").write_text(f'image,caption\na.png,a short one\nb.png,"{long}"\nc.png,"two\nlines"\n')
    code, out, _ = run_cli(["data", "check", str(tmp_path / "c.csv"), "--no-images", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["long_captions"] == [{"image": str(tmp_path / "b.png"), "words": 150}]
    code, out, _ = run_cli(["data", "check", str(tmp_path / "c.csv"), "--no-images"], capsys)
    assert code == 0
    assert "warning: captions over 100 words (a quote left open in a table?)\n1 long caption:\n" in out
    assert f"  {tmp_path / 'b.png'}: 150 words\n" in out


def test_senticap_csv_with_a_quote_left_open_names_the_line(tmp_path, capsys):
    path = tmp_path / "s.csv"
    path.write_text('filename,is_positive_sentiment,caption\na.jpg,1,"a nice dog\nb.jpg,0,a bad cat\n')
    code, _, err = run_cli(["data", "check", f"senticap:{path}", "--no-images"], capsys)
    assert code == 1
    assert err == (
        f"captionkit: error: {path}:2: unterminated quote: the quoted field opened in this row is still open at the "
        "end (line 3)\n"
    )


def test_senticap_with_its_images_elsewhere_gets_the_images_hint(tmp_path, capsys):
    spec = tmp_path / "senticap_subset.json"
    shutil.copy(SHARED_DATA / "senticap" / "senticap_subset.json", spec)
    code, out, _ = run_cli(["data", "check", spec], capsys)
    images = json.loads(run_cli(["data", "check", spec, "--json"], capsys)[1])["total"]["images"]
    assert code == 1 and f"{images} missing images:" in out
    assert f"hint: images kept in another folder? name it: {spec}?images=DIR" in out
    code, out, _ = run_cli(["data", "check", f"{spec}?val=0.5"], capsys)
    assert f"hint: images kept in another folder? name it: {spec}?val=0.5&images=DIR" in out


@pytest.fixture
def leaky_table(tmp_path):
    """A CSV of one image in two splits (by id), a copy of it in a third (by bytes), and a row naming a directory."""
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.png")
    shutil.copy(tmp_path / "a.png", tmp_path / "copy.png")
    (tmp_path / "folder.png").mkdir()
    rows = "a.png,a red square,train\na.png,a red square,test\ncopy.png,red,val\nfolder.png,a folder,train\n"
    (tmp_path / "c.csv").write_text("image,caption,split\n" + rows)
    return tmp_path / "c.csv"


def test_check_text_counts_are_in_good_english(leaky_table, capsys):
    code, out, _ = run_cli(["data", "check", leaky_table], capsys)
    assert code == 1
    root = leaky_table.parent
    assert "duplicates: 1 caption repeated on one image, 0 captions on several images, 1 group of identical " in out
    assert f"2 images in several splits:\n  {root / 'a.png'} (image id): test, train\n" in out
    assert f"  {root / 'a.png'}, {root / 'copy.png'} (same bytes): test, train, val\n" in out


def test_check_counts_of_one_are_in_good_english_too(tmp_path, capsys):
    # Said "1 captions without one", "all 2 images (...; 1 of them are in its train split)" and "all 1 images".
    (tmp_path / "c.csv").write_text("image,caption,split\na.png,a red square,train\nb.png,a blue one,\n")
    code, out, _ = run_cli(["data", "check", tmp_path / "c.csv", "--no-images"], capsys)
    assert code == 0 and "\nsplits: data; 1 caption without one shown as a training run splits it" in out
    assert (
        "\nevaluate's default split: all 2 images (the data has no test split; 1 of them is in its train split)\n"
        in out
    )
    (tmp_path / "c.csv").write_text("image,caption\na.png,a red square\n")
    code, out, _ = run_cli(["data", "check", tmp_path / "c.csv", "--no-images"], capsys)
    assert code == 0 and "\nevaluate's default split: its 1 image (the data has no test split)\n" in out


@pytest.mark.parametrize("folder", ["photos[old]", "x[/b]"])
def test_check_prints_paths_with_square_brackets_as_they_are(tmp_path, capsys, folder):
    # Read as rich markup: "photos[old]" was printed as "photos", and "x[/b]" ended in a MarkupError traceback.
    (tmp_path / folder).mkdir(parents=True)  # "x[/b]" is x[ and b] in it
    table = tmp_path / folder / "c.csv"
    table.write_text("image,caption\nb[1].png,a red square\n")
    code, out, _ = run_cli(["data", "check", table], capsys)
    assert code == 1 and out.startswith(f"{table}: csv ({table})\n")
    assert f"1 missing image:\n  {tmp_path / folder / 'b[1].png'}\n" in out


def test_check_names_a_directory_given_as_an_image_not_missing(leaky_table, capsys):
    code, out, _ = run_cli(["data", "check", leaky_table, "--json"], capsys)
    report = json.loads(out)
    assert code == 1 and report["missing_images"] == []
    folder = str(leaky_table.parent / "folder.png")
    assert report["unreadable_images"] == [{"image": folder, "reason": "is a directory, not an image file"}]
    code, out, _ = run_cli(["data", "check", leaky_table], capsys)
    assert f"1 unreadable image:\n  {folder}: is a directory, not an image file\n" in out
    assert "missing image" not in out and "hint: images kept in another folder?" not in out


def test_split_flags_on_data_with_splits_say_they_change_nothing(capsys):
    args = ["data", "check", FLICKR / "dataset_flickr8k.json", "--no-images", "--json"]
    code, out, err = run_cli([*args, "--val-fraction", "0.5", "--seed", "7"], capsys)
    assert code == 0 and json.loads(out)["splits"]["val"]["images"] == 25
    note = f"captionkit: note: --val-fraction, --seed change nothing here: every caption of {args[2]} has its split"
    assert err == f"{note} in the data\n"
    code, _, err = run_cli(args, capsys)
    assert (code, err) == (0, "")
    # Splits the spec gives are not the data's: both say so.
    spec = f"{FLICKR / 'captions.txt'}?val=0.2"
    code, out, err = run_cli(["data", "check", spec, "--no-images", "--seed", "1"], capsys)
    assert code == 0 and "\nsplits: data, and the spec's val=/test= for captions without one\n" in out
    where = "in the data or by the spec's val=/test="
    assert err == f"captionkit: note: --seed changes nothing here: every caption of {spec} has its split {where}\n"
    # Data without splits uses them, and says nothing.
    code, out, err = run_cli(["data", "check", FLICKR / "captions.txt", "--no-images", "--val-fraction", "0.5"], capsys)
    assert (code, err) == (0, "") and "val 0.5\n" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--val-fraction", "1.5"], "--val-fraction: must be in [0, 1), got 1.5"),
        (["--test-fraction", "-0.1"], "--test-fraction: must be in [0, 1), got -0.1"),
        (["--val-fraction", "0.6", "--test-fraction", "0.6"], "--val-fraction and --test-fraction: must sum below 1"),
        (["--seed", "-1"], "--seed: must be in [0, 4294967295], got -1"),
        (["--split", "trian"], "--split: must be one of train, val, test or all, got 'trian'"),
    ],
)
def test_bad_split_options_are_one_line_naming_the_flag(flags, message, tmp_path, capsys):
    code, out, err = run_cli(["data", "check", tmp_path / "not-read-yet.csv", *flags], capsys)
    assert (code, out) == (1, "")
    assert err.startswith(f"captionkit: error: {message}") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("flags", "options", "reason"),
    [
        (["--val-fraction", "1.5"], "val=1.5", "must be in [0, 1), got 1.5"),
        (["--test-fraction", "0.5", "--val-fraction", "0.5"], "test=0.5&val=0.5", "must sum below 1, got 0.5 + 0.5"),
        (["--seed", "-1"], "seed=-1", "must be in [0, 4294967295], got -1"),
    ],
)
def test_split_flags_and_the_specs_split_options_are_one_check(flags, options, reason, tmp_path, capsys):
    table = tmp_path / "data.csv"
    table.write_text("image,caption\na.jpg,a dog\n")
    by_flags = run_cli(["data", "check", table, "--no-images", *flags], capsys)
    by_spec = run_cli(["data", "check", f"{table}?{options}", "--no-images"], capsys)
    assert by_flags[:2] == by_spec[:2] == (1, "")
    assert by_flags[2].endswith(f": {reason}\n") and by_spec[2].endswith(f" {reason}\n")
    assert by_spec[2].count("\n") == 1 and by_spec[2].startswith(f"captionkit: error: {table}?{options}: ")


def test_split_all_and_split_aliases(capsys):
    spec = FLICKR / "dataset_flickr8k.json"
    whole = json.loads(run_cli(["data", "check", spec, "--no-images", "--json"], capsys)[1])
    assert json.loads(run_cli(["data", "check", spec, "--no-images", "--json", "--split", "all"], capsys)[1]) == whole
    val = json.loads(run_cli(["data", "check", spec, "--no-images", "--json", "--split", "val"], capsys)[1])
    for alias in ("dev", "validation", "VAL"):
        code, out, _ = run_cli(["data", "check", spec, "--no-images", "--json", "--split", alias], capsys)
        assert code == 0 and json.loads(out) == val


def test_one_split_is_checked_for_its_own_leaks_byte_copies_included(leaky_table, capsys):
    # val holds copy.png, the bytes of a.png (train and test): a leak of val, found without opening all of train.
    root = leaky_table.parent
    by_bytes = {
        "image": f"{root / 'a.png'}, {root / 'copy.png'}",
        "splits": ["test", "train", "val"],
        "by": "same bytes",
    }
    by_id = {"image": str(root / "a.png"), "image_id": "a.png", "splits": ["test", "train"], "by": "image id"}
    leaks = {}
    for split in ("val", "test", "all"):
        code, out, _ = run_cli(["data", "check", leaky_table, "--split", split, "--json"], capsys)
        leaks[split] = json.loads(out)["images_in_several_splits"]
        assert code == 1
    # a.png in train and test is no leak of val; the copy in val is.
    assert leaks == {"val": [by_bytes], "test": [by_id, by_bytes], "all": [by_id, by_bytes]}


def test_one_file_named_relative_and_absolute_in_two_splits_is_found_as_one_file(tmp_path, capsys, monkeypatch):
    # Compared as written, "a.png" and "/…/a.png" were two files: --no-images found no leak, and opening them
    # called the one file two files of the same bytes.
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "c.csv").write_text(f"image,caption,split\na.png,a red square,train\n{tmp_path}/a.png,red,test\n")
    monkeypatch.chdir(tmp_path)
    for flag in ("--no-images", "--images"):
        code, out, _ = run_cli(["data", "check", "c.csv", flag, "--json"], capsys)
        leaks = json.loads(out)["images_in_several_splits"]
        assert (code, leaks) == (1, [{"image": "a.png", "splits": ["test", "train"], "by": "file"}])


@pytest.mark.parametrize("layout", ["webdataset", "parquet"])
def test_one_split_of_shards_is_checked_for_byte_copies_in_the_others(tmp_path, capsys, layout):
    # A shard sample has no file size to compare, so its byte copies in other splits were never looked for.
    photos = real_photos(3)
    copied = samples(photos, {1: photos[0].read_bytes()})  # sample 1 holds sample 0's bytes under its own key
    if layout == "webdataset":
        spec = writing.write_webdataset(copied, tmp_path, per_shard=3)[0]
    else:
        spec = writing.write_parquet(copied, tmp_path / "part.parquet")
    records = load_records(spec)
    keys = (photos[0].stem, photos[1].stem)
    splits_of = {seed: {r.image_id: r.split for r in assign_splits(records, 0.5, 0.0, seed)} for seed in range(20)}
    seed = next(seed for seed, split in splits_of.items() if split[keys[0]] != split[keys[1]])
    split = splits_of[seed][keys[1]]
    args = ["data", "check", spec, "--val-fraction", "0.5", "--seed", seed, "--split", split, "--json"]
    code, out, _ = run_cli(args, capsys)
    images = [record.image_path for record in records[:2]]
    assert code == 1 and json.loads(out)["images_in_several_splits"] == [
        {"image": f"{images[0]}, {images[1]}", "splits": ["train", "val"], "by": "same bytes"}
    ]


def test_ctrl_c_ends_the_check_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C used to end `data check` with exit 130 and not a word, as if it had found nothing."""
    import captionkit.data.check as check_module

    def interrupted(*args: object, **kwargs: object) -> dict[str, object]:
        raise KeyboardInterrupt

    monkeypatch.setattr(check_module, "check_records", interrupted)
    code, out, err = run_cli(["data", "check", str(FLICKR), "--no-images"], capsys)
    assert (code, out) == (130, "")
    assert err == f"captionkit: interrupted: the check of {FLICKR} did not finish\n"


def test_a_torn_shard_is_an_error_and_its_samples_before_the_cut_are_still_checked(tmp_path, capsys):
    """A copy cut short was one "dropped:" line, and the check said "ok: no errors" with exit 0. Its samples after
    the cut went unchecked: exit 2 (partial), as for a shard that cannot be read at all."""
    photos = real_photos(4)
    shards = writing.write_webdataset(samples(photos), tmp_path / "shards", per_shard=2)
    with tarfile.open(shards[1]) as archive:
        member = archive.getmember(f"{photos[3].stem}.jpg")
    cut = member.offset_data + member.size // 2
    shards[1].write_bytes(shards[1].read_bytes()[:cut])
    code, out, _ = run_cli(["data", "check", tmp_path / "shards", "--json"], capsys)
    report = json.loads(out)
    assert code == 2 and report["errors"] == 1
    reason = f"torn tar: cut at byte {cut}, inside {photos[3].stem}.jpg"
    assert report["damaged_shards"] == [{"shard": str(shards[1]), "reason": reason}]
    assert report["total"]["captions"] == 3 and not report["unreadable_images"]
    code, out, _ = run_cli(["data", "check", tmp_path / "shards"], capsys)
    assert code == 2
    assert f"1 damaged shard (their other samples are read):\n  {shards[1]}: {reason}\n" in out
    assert "dropped:" not in out and out.endswith("1 error\n")


def test_the_text_report_of_many_shards_lists_the_first_files_and_dropped_reasons(tmp_path, capsys):
    """The first line named every shard, and each shard's unreadable caption was a "dropped:" line of its own."""
    folder = tmp_path / "shards"
    folder.mkdir()
    image, text = tmp_path / "k.png", tmp_path / "k.txt"
    Image.new("RGB", (8, 8)).save(image)
    count = 14
    for number in range(count):
        with tarfile.open(folder / f"{number:05d}.tar", "w") as archive:
            text.write_text("a good caption\n")
            archive.add(image, "good.png")
            archive.add(text, "good.txt")
            text.write_bytes(b"caf\xe9 latin-1\n")
            archive.add(image, "bad.png")
            archive.add(text, "bad.txt")
    code, out, _ = run_cli(["data", "check", folder, "--no-images"], capsys)
    assert code == 0
    first = out.splitlines()[0]
    assert first.endswith(f"{folder / '00009.tar'}, ... and {count - 10} more)") and "00010.tar" not in first
    dropped = [line for line in out.splitlines() if line.startswith("dropped:")]
    assert len(dropped) == 11 and dropped[-1] == f"dropped: ... and {count - 10} more reasons (--json lists all)"
    code, out, _ = run_cli(["data", "check", folder, "--no-images", "--json"], capsys)
    report = json.loads(out)
    assert len(report["files"]) == count and len(report["dropped"]) == count


def test_the_json_splits_from_writes_its_count_ungrouped(tmp_path, capsys):
    """--json output is parsed by scripts: "1200 captions without one", as before counts were grouped in messages
    (the one plural of every layer writes "1,200")."""
    rows = [{"image": "a.png", "caption": "one", "split": "train"}]
    rows += [{"image": f"{index}.png", "caption": f"caption {index}"} for index in range(1200)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, out, _ = run_cli(["data", "check", str(tmp_path / "c.jsonl"), "--json", "--no-images"], capsys)
    assert code == 0
    assert json.loads(out)["splits_from"] == (
        "data; 1200 captions without one shown as a training run splits it: by image, seed 0, val 0.05"
    )


def test_a_long_list_counts_what_it_leaves_out_as_its_heading_counts(tmp_path, capsys):
    """The heading's count is grouped ("1,200 missing images"): the line saying how many more are not shown was
    "... and 1190 more"."""
    rows = "".join(f"gone/{index}.png,caption {index},train\n" for index in range(1200))
    (tmp_path / "c.csv").write_text("image,caption,split\n" + rows)
    code, out, _ = run_cli(["data", "check", str(tmp_path / "c.csv")], capsys)
    assert code == 1
    assert "\n1,200 missing images:\n" in out
    assert "\n  ... and 1,190 more (--json lists all)\n" in out


def test_a_missing_image_whose_name_holds_a_newline_is_listed_on_one_line(tmp_path, capsys):
    """Its name was printed across two lines, as two missing images."""
    rows = [{"image": "no\nsuch.png", "caption": "a dog", "split": "train"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, out, _ = run_cli(["data", "check", str(tmp_path / "c.jsonl")], capsys)
    assert code == 1
    assert f"\n1 missing image:\n  {tmp_path}/no\\nsuch.png\n" in out
