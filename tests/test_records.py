import json
from pathlib import Path

import pytest

from captionkit.data import CaptionRecord, load_records, read_jsonl, write_jsonl
from captionkit.data.splits import (
    assign_splits,
    first_caption_per_image,
    select_split,
    split_by_image,
    training_records,
)
from captionkit.errors import InputError


def records(n_images: int, per_image: int = 2) -> list[CaptionRecord]:
    return [
        CaptionRecord(Path(f"/data/{i}.png"), f"caption {j} of {i}", image_id=str(i))
        for i in range(n_images)
        for j in range(per_image)
    ]


def test_jsonl_round_trip_with_relative_paths(tmp_path):
    original = [
        CaptionRecord(tmp_path / "images" / "a.png", "a red circle", "neutral", "a", "train"),
        CaptionRecord(tmp_path / "images" / "a.png", "a lovely red circle", "positive", "a", "train"),
        CaptionRecord(tmp_path / "b.png", "a blue square", "negative", "b", None),
        # Written raw (not escaped): a line separator inside a caption must not split its line.
        CaptionRecord(tmp_path / "c.png", "caf\u00e9 sign\u2028second line", "neutral", "c", None),
    ]
    path = write_jsonl(original, tmp_path / "captions.jsonl")
    assert "\u2028" in path.read_text(encoding="utf-8")
    first = json.loads(path.read_text().splitlines()[0])
    assert first["image"] == "images/a.png"
    assert read_jsonl(path) == original
    loaded = load_records(tmp_path)  # the dataset readers also fold any whitespace run into one space
    assert loaded[:3] == original[:3] and loaded[3].caption == "caf\u00e9 sign second line"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "no captions in file"),
        ("{not json}\n", "invalid JSON"),
        ("[1, 2]\n", "expected a JSON object"),
        ('{"caption": "x"}\n', "missing 'image'"),
        ('{"image": "a.png", "caption": "  "}\n', "missing or empty 'caption'"),
        ('{"image": "a.png", "caption": "x", "style": "happy"}\n', "unknown style 'happy'"),
        ('{"image": "a.png", "caption": "x", "split": 3}\n', "'split' must be a string"),
        # Silently read before: a misspelt key lost its value, a misspelt split left its captions out of every split.
        ('{"image": "a.png", "caption": "x", "syle": "positive"}\n', "unknown key 'syle'"),
        ('{"image": "a.png", "caption": "x", "split": "trian"}\n', "unknown split 'trian'"),
    ],
)
def test_bad_jsonl_names_file_line_and_reason(tmp_path, content, reason):
    path = tmp_path / "captions.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        read_jsonl(path)
    assert str(path) in caught.value.source
    assert reason in caught.value.reason


def test_non_utf8_jsonl(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_bytes(b'{"image": "a.png", "caption": "caf\xe9"}\n')
    with pytest.raises(InputError, match="not UTF-8"):
        read_jsonl(path)


def test_jsonl_saved_by_windows_tools_reads_as_the_dataset_reader_reads_it(tmp_path):
    # A byte-order mark and CRLF (Notepad), splits spelt "Test" or "dev": read_jsonl failed on the mark and kept
    # "Test" and "dev" as they were, which select_split("test") and "val" do not match.
    path = tmp_path / "captions.jsonl"
    rows = [
        {"image": "a.png", "caption": "a cat", "split": "Test"},
        {"image": "b.png", "caption": "a dog", "split": "dev"},
    ]
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(row) + "\r\n" for row in rows).encode())
    assert [(r.caption, r.split) for r in read_jsonl(path)] == [("a cat", "test"), ("a dog", "val")]
    assert read_jsonl(path) == load_records(path)
    path.write_bytes(json.dumps(rows[0]).encode("utf-16"))
    with pytest.raises(InputError, match="UTF-16 text: save it as UTF-8"):
        read_jsonl(path)


def test_load_records_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_records(tmp_path / "missing")
    with pytest.raises(InputError, match="directory holds no dataset"):
        load_records(tmp_path)
    other = tmp_path / "captions.bin"
    other.write_bytes(b"PAR1")
    with pytest.raises(InputError, match="unknown dataset format"):
        load_records(other)


def test_split_by_image_keeps_images_whole_and_is_stable():
    data = records(200)
    train, val = split_by_image(data, 0.2, seed=3)
    train_ids = {r.image_id for r in train}
    val_ids = {r.image_id for r in val}
    assert not train_ids & val_ids
    assert len(train) + len(val) == len(data)
    assert 20 <= len(val_ids) <= 60
    # Adding images does not move existing ones.
    _train2, val2 = split_by_image(records(300), 0.2, seed=3)
    assert val_ids <= {r.image_id for r in val2}
    assert split_by_image(data, 0.2, seed=4) != (train, val)


def test_records_own_split_wins_and_test_is_left_out():
    data = [
        CaptionRecord(Path("a.png"), "x", image_id="a", split="train"),
        CaptionRecord(Path("b.png"), "x", image_id="b", split="val"),
        CaptionRecord(Path("c.png"), "x", image_id="c", split="test"),
    ]
    train, val = split_by_image(data, 0.5)
    assert [r.image_id for r in train] == ["a"]
    assert [r.image_id for r in val] == ["b"]
    assert [r.image_id for r in select_split(data, "test")] == ["c"]
    assert [r.image_id for r in select_split(data, "dev")] == ["b"]


def test_training_records_leave_out_images_held_out_elsewhere_by_their_file():
    """data.train of COCO captions (no splits) and SentiCap (splits): the COCO captions of SentiCap's test images
    trained the model that was then tested on them; so did those of data.val's images."""
    coco = [CaptionRecord(Path(f"/coco/{i}.jpg"), f"coco {i}", image_id=str(i)) for i in range(5)]
    senticap = [
        CaptionRecord(Path("/coco/1.jpg"), "a lovely dog", image_id="s1", style="positive", split="test"),
        CaptionRecord(Path("/coco/2.jpg"), "an ugly cat", image_id="s2", style="negative", split="val"),
        CaptionRecord(Path("/coco/3.jpg"), "a nice cup", image_id="s3", style="positive", split="train"),
    ]
    other_id_same_number = CaptionRecord(Path("/flickr/1.jpg"), "a flickr photo", image_id="1")
    val = [CaptionRecord(Path("/coco/4.jpg"), "a bus", image_id="4", split="val")]
    kept, left_out = training_records([*coco, *senticap, other_id_same_number], val)
    assert [r.caption for r in kept] == ["coco 0", "coco 3", "a nice cup", "a flickr photo"]
    assert left_out == 3  # 1 (test), 2 (val split), 4 (data.val)
    assert training_records(coco) == (coco, 0)


def test_a_file_another_dataset_puts_in_a_split_follows_it_under_any_id():
    """Held out by val_fraction: a COCO caption (id "139") of the photo SentiCap (id "COCO_val2014_...139") puts in
    test was trained on: the split followed ids only."""
    coco = CaptionRecord(Path("/coco/139.jpg"), "a room", image_id="139")
    senticap = CaptionRecord(Path("/coco/139.jpg"), "a lovely room", image_id="s139", split="test")
    other = CaptionRecord(Path("/coco/140.jpg"), "a dog", image_id="140")
    train, val = split_by_image([coco, senticap, other], 0.0)
    assert (train, val) == ([other], [])
    assert [r.split for r in assign_splits([coco, senticap, other], 0.0)] == ["test", "test", "train"]


def test_first_caption_per_image():
    kept = first_caption_per_image(records(3, per_image=3))
    assert [r.caption for r in kept] == ["caption 0 of 0", "caption 0 of 1", "caption 0 of 2"]
