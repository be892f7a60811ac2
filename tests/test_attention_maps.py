"""Attention maps: the model hook, the API's arrays, the heatmap overlays and `captionkit caption --attention-maps`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from _data import real_photos
from _families import peaked, pixels
from _helpers import run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.attention import MAX_ALPHA, MIN_ALPHA, caption_maps, overlay, overlay_name, write_overlays
from captionkit.errors import InputError
from captionkit.images import Preprocessing, load_image
from captionkit.models.registry import create_model, families_with_attention_maps, train_tokenizer
from captionkit.models.vit_gpt2 import VitGpt2Model
from captionkit.text import train_bpe_tokenizer, train_word_tokenizer
from captionkit.text.styles import add_style_tokens
from captionkit.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")

CAPTIONS = ("a dog runs on the grass", "a cat sits on a red couch", "two birds fly over the sea")
PHOTOS = real_photos(2)
GRID = (4, 4)  # tiny presets: 32 px images; ViT 8 px patches, ResNet 8x downsampling


def batch_of_ids(model, rows: int = 3, length: int = 6, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(3, model.vocab_size, (rows, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = model.bos_token_id
    return ids


def assert_distributions(maps: torch.Tensor | np.ndarray) -> None:
    maps = torch.as_tensor(maps)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(maps.shape[:-2]), rtol=0, atol=1e-5)


def test_vit_gpt2_maps_are_transformers_cross_attention_averaged_over_layers_and_heads(make_vit_gpt2):
    model = make_vit_gpt2(seed=1)
    # The reference: the same weights in a model built for eager attention, through transformers' full forward.
    reference = VitGpt2Model.from_config(
        model.config, attn_implementation="eager", bos_token_id=1, eos_token_id=2, pad_token_id=0
    ).eval()
    reference.load_state_dict(model.state_dict())
    images, ids = pixels(3, 4), batch_of_ids(model)
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0  # a padded row
    with torch.no_grad():
        maps = model.attention_maps(images, ids, mask)
        output = reference.ved(
            pixel_values=images, decoder_input_ids=ids, decoder_attention_mask=mask, output_attentions=True
        )
    layers = output.cross_attentions
    assert len(layers) == 2 and layers[0].shape == (3, 2, 6, 1 + 16)  # (B, heads, T, CLS + patches)
    patches = torch.stack(layers).mean(dim=(0, 2))[..., 1:]
    expected = (patches / patches.sum(-1, keepdim=True)).reshape(3, 6, *GRID)
    assert maps.shape == (3, 6, *GRID)
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-6)
    assert_distributions(maps)
    assert not torch.allclose(maps[0, 0], maps[1, 0])  # images differ, so do their maps
    # The decoder goes back to its own attention implementation (decoding speed depends on it).
    assert model.ved.decoder.config._attn_implementation == "sdpa"


def test_cnn_lstm_attention_maps_are_its_soft_attention_on_the_feature_grid():
    model = peaked("cnn-lstm-attention", seed=2)
    images, ids = pixels(3, 5), batch_of_ids(model)
    with torch.no_grad():
        maps = model.attention_maps(images, ids)
        model(images, ids)  # teacher forcing keeps the weights it used, (B, T, regions)
    assert model.has_attention and maps.shape == (3, 6, *GRID)
    torch.testing.assert_close(maps.flatten(2), model.last_attention, rtol=0, atol=0)
    assert_distributions(maps)
    # The map grid follows the ResNet feature map, also for a non-square input.
    with torch.no_grad():
        wide = model.attention_maps(torch.randn(2, 3, 32, 64), ids[:2])
    assert wide.shape == (2, 6, 4, 8)
    assert_distributions(wide)


def test_attention_maps_record_no_training_penalty():
    model = peaked("cnn-lstm-attention", seed=2).train()
    model.attention_maps(pixels(2), batch_of_ids(model, rows=2))
    assert model.auxiliary_loss() is None


@pytest.mark.parametrize("family", ["prefix-gpt2", "cnn-lstm"])
def test_families_without_spatial_attention_return_none_and_are_refused(family):
    model = peaked(family)
    assert not model.has_attention
    assert model.attention_maps(pixels(1), batch_of_ids(model, rows=1)) is None
    with pytest.raises(InputError) as refused:
        caption_maps(model, pixels(1), [0], [[3, 4]])
    assert str(refused.value) == (
        f"attention: the {family} family has no spatial attention to show "
        "(maps come from blip, cnn-lstm-attention and vit-gpt2)"
    )


def test_caption_maps_align_each_token_with_the_step_that_wrote_it(make_vit_gpt2):
    model = make_vit_gpt2(seed=3)
    images = pixels(2, 6)
    sequences = [[5, 6, 7], [], [8, 9, 10, 11, 12]]
    found = caption_maps(model, images, [0, 1, 1], sequences, start_token_id=4)
    assert [m.shape for m in found] == [(3, *GRID), (0, *GRID), (5, *GRID)]
    for row, ids, maps in zip([0, 1, 1], sequences, found, strict=True):
        alone = torch.tensor([[4, *ids]])  # the style-like start token, then the caption, no padding
        with torch.no_grad():
            direct = model.attention_maps(images[row : row + 1], alone)[0, : len(ids)]
        np.testing.assert_allclose(maps, direct.numpy(), rtol=0, atol=1e-6)
        assert_distributions(maps)


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    directory = save_tiny_model(tmp_path_factory.mktemp("m") / "vit", captions=CAPTIONS, initializer_range=0.3)
    return Captioner.from_pretrained(directory, device="cpu")


def test_captioner_returns_one_map_per_token_of_every_caption(captioner):
    images = [Image.open(path).convert("RGB") for path in PHOTOS]
    ved = captioner.model.ved
    implementations = [part.config._attn_implementation for part in (ved, ved.encoder, ved.decoder)]
    results = captioner.caption(images, attention=True, num_beams=3, num_return_sequences=2, max_new_tokens=6)
    # The maps switch the decoder to eager attention for their call only: every part is as it was.
    assert [part.config._attn_implementation for part in (ved, ved.encoder, ved.decoder)] == implementations
    plain = captioner.caption(images, num_beams=3, num_return_sequences=2, max_new_tokens=6)
    assert [[c.caption for c in r.captions] for r in results] == [[c.caption for c in r.captions] for r in plain]
    assert all(c.attention is None and c.tokens is None for r in plain for c in r.captions)
    pixels_of = torch.from_numpy(captioner.preprocessing(images))
    lengths = []
    for row, result in enumerate(results):
        for caption in result.captions:
            assert caption.attention.shape == (len(caption.token_ids), *GRID)
            assert caption.attention.dtype == np.float32
            assert_distributions(caption.attention)
            # Byte-level BPE: the tokens' (stripped) texts put together are the caption without its whitespace (a
            # newline token, which random weights on another machine wrote, is whitespace too).
            assert len(caption.tokens) == len(caption.token_ids)
            assert "".join(caption.tokens) == "".join(caption.caption.split())
            lengths.append(len(caption.token_ids))
            ids = torch.tensor([[captioner.model.bos_token_id, *caption.token_ids]])
            with torch.no_grad():
                direct = captioner.model.attention_maps(pixels_of[row : row + 1], ids)[0, : len(caption.token_ids)]
            np.testing.assert_allclose(caption.attention, direct.numpy(), rtol=0, atol=1e-5)
    assert max(lengths) > 0


def test_a_caption_as_long_as_the_models_positions_gets_its_maps(captioner):
    # Decoding feeds the start token and every token but the last: the maps need no more positions than that.
    positions = captioner.model.max_positions
    image = Image.open(PHOTOS[0]).convert("RGB")
    (result,) = captioner.caption(
        image, attention=True, num_beams=1, max_new_tokens=positions, min_new_tokens=positions
    )
    caption = result.captions[0]
    assert len(caption.token_ids) == positions
    assert caption.attention.shape == (positions, *GRID)
    assert_distributions(caption.attention)


@pytest.mark.parametrize("family", ["prefix-gpt2", "cnn-lstm"])
def test_captioner_refuses_attention_for_a_model_without_it(family, tmp_path):
    tokenizer = (train_word_tokenizer if family == "cnn-lstm" else train_bpe_tokenizer)(CAPTIONS * 10, 300)
    model = create_model(family, "tiny", tokenizer)
    captioner = Captioner(model, tokenizer, Preprocessing.for_size(32, 32), device="cpu")
    with pytest.raises(InputError, match=f"^attention: the {family} family has no spatial attention"):
        captioner.caption([PHOTOS[0]], attention=True)


def test_overlay_colours_where_the_model_looked():
    image = Image.new("RGB", (64, 48), (128, 128, 128))
    grid = np.zeros((4, 4), dtype=np.float32)
    grid[0, 0] = 1.0
    drawn = np.asarray(overlay(image, grid)).astype(float)
    assert drawn.shape == (48, 64, 3)
    top, bottom = np.array([252, 255, 164]), np.array([0, 0, 4])
    np.testing.assert_allclose(drawn[0, 0], MAX_ALPHA * top + (1 - MAX_ALPHA) * 128, atol=2)
    np.testing.assert_allclose(drawn[47, 63], MIN_ALPHA * bottom + (1 - MIN_ALPHA) * 128, atol=2)
    # Bilinear upsampling: weight fades from the hot corner instead of stopping at the cell edge.
    row = drawn[0, :, 0]
    assert row[0] > row[12] > row[20] > row[40] and row[40] == pytest.approx(row[63], abs=1)
    big = overlay(Image.new("RGB", (2000, 1000)), grid)
    assert big.size == (512, 256)  # large photos are drawn at a bounded size
    with pytest.raises(ValueError, match="finite"):
        overlay(image, np.full((2, 2), np.nan))


def test_overlay_names_are_safe_file_names():
    assert overlay_name(3, "dog") == "003-dog.png"
    assert overlay_name(12, "<unk>") == "012-unk.png"
    assert overlay_name(0, "") == "000-token.png"
    assert overlay_name(1, "a/b c") == "001-a_b_c.png"
    assert overlay_name(2, "café") == "002-café.png"


def test_write_overlays_replaces_an_earlier_caption(tmp_path):
    image = Image.new("RGB", (32, 32))
    maps = np.full((3, 2, 2), 0.25, dtype=np.float32)
    write_overlays(image, ["a", "red", "couch"], maps, tmp_path / "x")
    (tmp_path / "x" / "keep.txt").write_text("not ours")
    paths = write_overlays(image, ["a", "dog"], maps[:2], tmp_path / "x")
    assert [p.name for p in paths] == ["000-a.png", "001-dog.png"]
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["000-a.png", "001-dog.png", "keep.txt"]
    assert Image.open(paths[0]).size == (32, 32)
    with pytest.raises(ValueError, match="2 tokens but 3 attention maps"):
        write_overlays(image, ["a", "dog"], maps, tmp_path / "y")


def test_cli_writes_a_heatmap_per_token_of_each_best_caption(captioner, tmp_path, capsys):
    model_dir = tmp_path / "model"
    captioner.save_pretrained(model_dir)
    photos = tmp_path / "photos"
    for folder, photo in (("a", PHOTOS[0]), ("b", PHOTOS[0]), ("b", PHOTOS[1])):  # one stem twice
        (photos / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, photos / folder / photo.name)
    (photos / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    maps = tmp_path / "maps"
    args = ["caption", photos, "--model", model_dir, "--beams", "1", "--max-length", "6", "--attention-maps", maps]
    code, _, err = run_cli([*args, "--output", tmp_path / "out.jsonl"], capsys)
    assert code == 2, err  # the broken file is recorded, the others get captions and maps
    stem = PHOTOS[0].stem
    inputs = {stem: photos / "a" / PHOTOS[0].name, f"{stem}-2": photos / "b" / PHOTOS[0].name}
    inputs[PHOTOS[1].stem] = photos / "b" / PHOTOS[1].name
    assert sorted(p.name for p in maps.iterdir() if p.is_dir()) == sorted(inputs)
    # The index says which folder is whose, under the name the records give the image; the broken image has none.
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert index_of(maps) == {str(path): folder for folder, path in inputs.items()}
    assert set(index_of(maps)) == {r["image"] for r in records if "caption" in r}
    total = 0
    for folder, path in inputs.items():
        # The job's workers decode JPEGs in draft mode: the API gets the same pixels.
        drafted = load_image(path, draft=captioner.preprocessing.draft_size)
        [result] = captioner.caption([drafted], num_beams=1, max_new_tokens=6, attention=True)
        expected = [overlay_name(i, token) for i, token in enumerate(result.captions[0].tokens)]
        written = sorted(p.name for p in (maps / folder).iterdir())
        assert written == expected
        total += len(written)
        if written:
            with Image.open(maps / folder / written[0]) as png:
                assert png.format == "PNG" and max(png.size) == min(512, max(Image.open(path).size))
    assert total > 0


def test_shards_give_each_image_its_own_folder(captioner, tmp_path, capsys):
    model_dir = tmp_path / "model"
    captioner.save_pretrained(model_dir)
    photos = tmp_path / "photos"
    folders = "abcdef"  # six images with one stem: the shards split them
    for folder in folders:
        (photos / folder).mkdir(parents=True)
        shutil.copy(PHOTOS[0], photos / folder / PHOTOS[0].name)
    maps = tmp_path / "maps"
    args = ["caption", photos, "--model", model_dir, "--beams", "1", "--max-length", "4", "--attention-maps", maps]
    for shard in ("0/2", "1/2"):
        code, _, err = run_cli([*args, "--shard", shard, "--output", tmp_path / "captions.jsonl"], capsys)
        assert code == 0, err
        part = tmp_path / f"captions.part-{shard[0]}-of-2.jsonl"
        assert 0 < len(part.read_text().splitlines()) < len(folders)  # each shard has some of the images
    stem = PHOTOS[0].stem
    # Names come from the whole input list, the same in every shard: no shard overwrote another's image.
    expected = [stem, *(f"{stem}-{n}" for n in range(2, len(folders) + 1))]
    assert sorted(p.name for p in maps.iterdir() if p.is_dir()) == sorted(expected)
    # Both shards appended to one index: every image once, each with the folder of its place in the input list.
    assert index_of(maps) == {str(photos / f / PHOTOS[0].name): name for f, name in zip(folders, expected, strict=True)}


def index_of(maps) -> dict[str, str]:
    """DIR/index.jsonl as {image: folder}, every line a whole entry and no image twice."""
    entries = [json.loads(line) for line in (maps / "index.jsonl").read_text().splitlines()]
    assert all(set(entry) == {"image", "folder"} for entry in entries)
    index = {entry["image"]: entry["folder"] for entry in entries}
    assert len(index) == len(entries)
    return index


def snapshot(folder) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_a_resumed_run_over_more_images_keeps_every_folder_its_images(captioner, tmp_path, capsys):
    """Folder names came from the input list alone: an image added before ``--resume`` took the name ``x-2`` that the
    first run gave another image, and its maps replaced that image's, with nothing to tell them apart."""
    model_dir = tmp_path / "model"
    captioner.save_pretrained(model_dir)
    photos, maps, out = tmp_path / "photos", tmp_path / "maps", tmp_path / "out.jsonl"
    name = PHOTOS[0].name
    for folder, photo in (("a", PHOTOS[0]), ("c", PHOTOS[1])):  # two different photos, one name
        (photos / folder).mkdir(parents=True)
        shutil.copy(photo, photos / folder / name)
    # n-best sampling: the maps are the best caption's, the folders as with one caption.
    args = ["caption", photos, "--model", model_dir, "--max-length", "4", "--sample", "--seed", "3", "--n-best", "2"]
    args += ["--attention-maps", maps, "--output", out]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    stem = PHOTOS[0].stem
    first = {str(photos / "a" / name): stem, str(photos / "c" / name): f"{stem}-2"}
    assert index_of(maps) == first
    c_maps = snapshot(maps / f"{stem}-2")
    assert c_maps
    (photos / "b").mkdir()
    shutil.copy(PHOTOS[0], photos / "b" / name)  # sorts between a and c: it would be the second x
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert "1 of 3 images" not in err and "2 of 3 images already done" in err
    assert index_of(maps) == {**first, str(photos / "b" / name): f"{stem}-3"}
    assert snapshot(maps / f"{stem}-2") == c_maps  # c's maps untouched
    assert any((maps / f"{stem}-3").glob("000-*.png"))
    assert sorted(p.name for p in maps.iterdir()) == sorted([stem, f"{stem}-2", f"{stem}-3", "index.jsonl"])
    # A fresh run over DIR (--overwrite) keeps each image in its folder too: the index outlives the output.
    code, _, err = run_cli([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert index_of(maps) == {**first, str(photos / "b" / name): f"{stem}-3"}


@pytest.mark.parametrize("family", ["prefix-gpt2", "cnn-lstm"])
def test_cli_refuses_attention_maps_for_a_model_without_attention(family, tmp_path, capsys):
    tokenizer = (train_word_tokenizer if family == "cnn-lstm" else train_bpe_tokenizer)(CAPTIONS * 10, 300)
    model = create_model(family, "tiny", tokenizer)
    model_dir = save_checkpoint(tmp_path / "m", model, tokenizer, Preprocessing.for_size(32, 32))
    code, out, err = run_cli(
        ["caption", PHOTOS[0], "--model", model_dir, "--attention-maps", tmp_path / "maps"], capsys
    )
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        f"captionkit: error: --attention-maps: the {family} family has no spatial attention to show "
        "(maps come from blip, cnn-lstm-attention and vit-gpt2)"
    ]
    assert not (tmp_path / "maps").exists()


def test_cli_draws_cnn_lstm_attention_maps_with_word_names(tmp_path, capsys):
    tokenizer = train_word_tokenizer(CAPTIONS * 10, 300)
    model = peaked("cnn-lstm-attention", seed=4, vocab_size=tokenizer.vocab_size)
    model_dir = save_checkpoint(tmp_path / "m", model, tokenizer, Preprocessing.for_size(32, 32))
    maps = tmp_path / "maps"
    code, _, err = run_cli(
        ["caption", PHOTOS[1], "--model", model_dir, "--beams", "2", "--max-length", "5", "--attention-maps", maps],
        capsys,
    )
    assert code == 0, err
    [result] = Captioner.from_pretrained(model_dir, device="cpu").caption(
        [PHOTOS[1]], num_beams=2, max_new_tokens=5, attention=True
    )
    words = result.captions[0].tokens
    assert words and all(word in tokenizer.hf.get_vocab() for word in words)  # whole words, not pieces
    assert sorted(p.name for p in (maps / PHOTOS[1].stem).iterdir()) == [
        overlay_name(i, w) for i, w in enumerate(words)
    ]


@pytest.mark.parametrize("family", families_with_attention_maps())
def test_styled_beam_captions_get_the_maps_of_their_own_style_start(family, tmp_path):
    """Every family with maps, a style model, beams and n-best: each caption's maps are those of that caption fed
    alone after its style's token (not bos), and asking for maps leaves the captions as they were."""
    tokenizer = train_tokenizer(family, list(CAPTIONS) * 10, 300)
    styles = add_style_tokens(tokenizer)
    torch.manual_seed(0)
    model = create_model(family, "tiny", tokenizer)
    with torch.no_grad():  # weights redrawn large (as tests/_hub_models.py's): maps that differ between tokens
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2 and "encoder" not in name:  # a ResNet's or ViT's own start stays
                parameter.normal_(0.0, 0.1 if "vision_model" in name else 0.3)
    directory = save_checkpoint(tmp_path / family, model, tokenizer, Preprocessing.for_size(32, 32))
    styled = Captioner.from_pretrained(directory, device="cpu")
    images = [Image.open(path).convert("RGB") for path in PHOTOS]
    options = {"style": "negative", "num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 5}
    results = styled.caption(images, attention=True, **options)
    plain = styled.caption(images, **options)
    assert [[c.caption for c in r.captions] for r in results] == [[c.caption for c in r.captions] for r in plain]
    pixels_of = torch.from_numpy(styled.preprocessing(images))
    checked = 0
    for row, result in enumerate(results):
        for caption in result.captions:
            ids = caption.token_ids
            assert caption.attention.shape == (len(ids), *GRID) and len(caption.tokens) == len(ids)
            if not ids:
                continue
            with torch.no_grad():
                alone = styled.model.attention_maps(
                    pixels_of[row : row + 1], torch.tensor([[styles["negative"], *ids]])
                )
                from_bos = styled.model.attention_maps(
                    pixels_of[row : row + 1], torch.tensor([[model.bos_token_id, *ids]])
                )
            np.testing.assert_allclose(caption.attention, alone[0, : len(ids)].numpy(), rtol=0, atol=1e-5)
            assert not np.allclose(caption.attention, from_bos[0, : len(ids)].numpy(), atol=1e-5)
            assert_distributions(caption.attention)
            checked += 1
    assert checked == 4
