"""Attention-map folders made from image names stay inside DIR, whatever the name (issue 20, defect 2)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from _data import real_photos
from _helpers import run_cli, save_tiny_model
from captionkit.jobs.overlays import MAX_FOLDER_BYTES, overlay_folders, safe_folder_name

PHOTO = real_photos(1)[0]
HOSTILE_STEMS = ["..", ".", "...", "", "/etc/passwd", "a/../../b", "a\\..\\b", "nul\0byte", "é" * 300, ".hidden"]


@pytest.mark.parametrize("stem", HOSTILE_STEMS)
def test_safe_folder_name_is_one_plain_child_of_dir(stem, tmp_path):
    name = safe_folder_name(stem)
    assert name not in ("", ".", "..") and not name.startswith(".")
    assert "/" not in name and "\\" not in name and "\0" not in name
    assert len(os.fsencode(name)) <= MAX_FOLDER_BYTES
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_safe_folder_name_keeps_ordinary_names():
    assert safe_folder_name("000000139") == "000000139"
    assert safe_folder_name("dog-on_grass.v2") == "dog-on_grass.v2"
    assert safe_folder_name("café") == "café"
    assert safe_folder_name("..") == "__"
    assert safe_folder_name(".") == "_"
    assert safe_folder_name("a/b") == "a_b"


def test_overlay_folders_are_unique_after_sanitising():
    paths = [Path("x/...png"), Path("y/__.png"), Path("z/..png"), Path("w/_.png"), Path("x/...png")]
    assert overlay_folders(paths) == {
        Path("x/...png"): "__",
        Path("y/__.png"): "__-2",
        Path("z/..png"): "_",
        Path("w/_.png"): "_-2",
    }
    assert overlay_folders([Path("a/Dog.jpg"), Path("b/dog.jpg")]) == {
        Path("a/Dog.jpg"): "Dog",
        Path("b/dog.jpg"): "dog-2",
    }


def test_cli_keeps_maps_of_dot_named_images_inside_dir(tmp_path, capsys):
    """``...png`` has the stem ``..``: its maps once went to DIR/.., deleting and replacing files beside DIR."""
    model_dir = save_tiny_model(tmp_path / "model")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("...png", "..png"):  # stems ".." and "."
        shutil.copy(PHOTO, photos / name)
    beside = tmp_path / "000-a.png"  # what write_overlays' clean-up of DIR/.. used to delete
    beside.write_bytes(b"keep me")
    maps = tmp_path / "maps"
    args = ["caption", photos / "...png", photos / "..png", "--model", model_dir, "--beams", "1"]
    code, _, err = run_cli(
        [*args, "--max-length", "4", "--attention-maps", maps, "--output", tmp_path / "o.jsonl"], capsys
    )
    assert code == 0, err
    assert beside.read_bytes() == b"keep me"
    assert sorted(p.name for p in maps.iterdir()) == ["_", "__", "index.jsonl"]
    assert all(p.is_dir() and any(p.glob("000-*.png")) for p in maps.iterdir() if p.name != "index.jsonl")
    assert not list(maps.glob("*.png"))  # nothing written into DIR itself


def test_attention_maps_inside_an_input_folder_are_refused_before_anything_is_written(tmp_path, capsys):
    """Overlays written into the photo folder were captioned, and overlaid again, by the next (resumed) run."""
    model_dir = save_tiny_model(tmp_path / "model")
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTO, photos / PHOTO.name)
    out = tmp_path / "o.jsonl"
    args = ["caption", photos, "--model", model_dir, "--max-length", "3", "--output", out]
    code, _, err = run_cli([*args, "--attention-maps", photos / "maps"], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        f"captionkit: error: --attention-maps: {photos / 'maps'} is inside the input folder {photos}: later runs "
        "would caption its overlays; write them outside it"
    ]
    assert not out.exists() and not (photos / "maps").exists()
    code, _, err = run_cli([*args, "--attention-maps", tmp_path / "maps"], capsys)
    assert code == 0, err
    code, _, err = run_cli([*args, "--attention-maps", tmp_path / "maps", "--resume"], capsys)
    assert code == 0 and "nothing left to do" in err, err


def test_attention_maps_in_the_output_file_are_refused_before_anything_is_written(tmp_path, capsys):
    """The output file was made first, so every overlay failed ("Not a directory") and the job still exited 0."""
    model_dir = save_tiny_model(tmp_path / "model")
    out = tmp_path / "o.jsonl"
    args = ["caption", PHOTO, "--model", model_dir, "--max-length", "3", "--output", out, "--attention-maps", out]
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert err == f"captionkit: error: --attention-maps: {out} is also --output; write them to a folder of their own\n"
    assert not out.exists()


def test_the_caption_job_draws_maps_on_what_the_model_saw(tmp_path, capsys, monkeypatch):
    """A model that centre-crops (ResNet's 256 then 224, CLIP, DeiT) saw part of a non-square photo: the job's
    overlays stretched its maps over the whole photo. It passes the model's preprocessing to write_overlays."""
    from captionkit.jobs import overlays

    seen = []
    real = overlays.write_overlays

    def recording(*args, **kwargs):
        seen.append(args[4] if len(args) > 4 else kwargs.get("preprocessing"))
        return real(*args, **kwargs)

    monkeypatch.setattr(overlays, "write_overlays", recording)
    model_dir = save_tiny_model(tmp_path / "model")
    args = ["caption", PHOTO, "--model", model_dir, "--beams", "1", "--max-length", "3"]
    code, _, err = run_cli([*args, "--attention-maps", tmp_path / "maps", "--output", tmp_path / "o.jsonl"], capsys)
    assert code == 0, err
    from captionkit.images import Preprocessing

    assert len(seen) == 1 and seen[0] == Preprocessing.load(model_dir)
