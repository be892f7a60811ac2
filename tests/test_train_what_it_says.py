"""What `captionkit train` says it validates on and which captions it trains, checked on the real data in
shared/data: a line that names the wrong source (or none) sends a user looking for the wrong images."""

from __future__ import annotations

import logging

import pytest
import torch

from _data import SHARED_DATA
from captionkit.config import load_train_config
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.training.setup import build_setup
from captionkit.training.stages import Stages
from captionkit.training.summary import summary_lines

FLICKR8K = SHARED_DATA / "flickr8k"


def validation_line(*settings: str) -> str:
    config = load_train_config(None, ["train.device=cpu", "model.preset=tiny", "tokenizer.vocab_size=300", *settings])
    setup = build_setup(config)
    lines = summary_lines(config, setup, Stages(setup.model, ()), 0, torch.device("cpu"), 1)
    return next(line for line in lines if line.startswith("validation: "))


@pytest.mark.parametrize("fraction", ["0", "0.05"])
def test_data_with_its_own_val_split_is_said_to_validate_on_it(fraction):
    """Flickr8k's dev list gives 25 val images whatever data.val_fraction is: the line said "none" with 0 (and the
    run then validated on them) and "held out ... by data.val_fraction 0.05" otherwise."""
    line = validation_line(f"data.train={FLICKR8K}", f"data.val_fraction={fraction}")
    assert line == "validation: 25 images, 125 captions, from data.train's own val split"


def test_data_without_splits_is_said_to_be_held_out_by_the_fraction():
    line = validation_line(f"data.train={SHARED_DATA / 'coco' / 'captions_val2017_subset.json'}")
    assert line.startswith("validation: ") and line.endswith(", held out of data.train by data.val_fraction 0.05")


def test_styled_captions_left_out_by_first_caption_only_are_not_said_to_train(tmp_path, caplog):
    """The scenes' first caption is neutral: with data.first_caption_only their positive and negative captions are
    never trained, yet the run said they "train as plain captions". SentiCap's first captions are styled: said."""
    scenes = write_synthetic_dataset(tmp_path / "scenes", 6, 2, 0, seed=0, image_size=32)
    senticap = SHARED_DATA / "senticap"
    photos = f"?images={SHARED_DATA / 'coco' / 'val2017'}&images={senticap / 'images'}"
    for data, warned in ((scenes, False), (f"{senticap / 'senticap_subset.json'}{photos}", True)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="captionkit.training"):
            validation_line(f"data.train={data}", "data.first_caption_only=true")
        said = [r.getMessage() for r in caplog.records if "train as plain captions" in r.getMessage()]
        assert bool(said) == warned, said


def test_evaluate_as_validation_names_the_own_val_split_too():
    """`evaluate --as-validation` said a run without data.val validated on "the images it held out of data.train",
    also of Flickr8k, whose val split is its own dev list (what the run and `validation_records` use)."""
    from captionkit.trained_on import TrainedOn

    saved = {"data": {"train": str(FLICKR8K), "val_fraction": 0.05}, "train": {"seed": 0}}
    described = TrainedOn.read_config(saved).describe_validation()
    assert described.startswith(
        "validation data data.train's val split, or the images it held out of data.train (data.val_fraction); "
    )


def test_validation_data_without_validation_captions_is_said_in_plain_words(tmp_path):
    """A data.val whose every caption is in its train split validates on nothing: "(data.val gave no captions)",
    not "(from data.val gave no captions)"."""
    photo = sorted((FLICKR8K / "Images").iterdir())[0]
    table = tmp_path / "train-only.csv"
    table.write_text(f"image,caption,split\n{photo},a dog runs,train\n", encoding="utf-8")
    line = validation_line(f"data.train={FLICKR8K}", f"data.val={table}")
    assert line == "validation: none (data.val gave no captions)"
