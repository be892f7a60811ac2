"""The one loader (captionkit.loading): checkpoints of every family, int8 and ONNX exports, hub ids offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _captioning import PHOTO_DIRS
from _helpers import FAMILIES, run_cli, run_cli_process, save_tiny_model
from captionkit import Captioner
from captionkit.errors import ConfigError, InputError, ModelLoadError
from captionkit.export.onnx import OnnxCaptionModel
from captionkit.loading import load_pretrained

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTOS = sorted(PHOTO_DIRS[0].glob("*.jpg"))[:2]


def test_a_checkpoint_loads_with_its_tokenizer_and_preprocessing(tmp_path: Path) -> None:
    source = save_tiny_model(tmp_path / "model")
    loaded = load_pretrained(source)
    assert (loaded.model.family, loaded.source, loaded.cpu_only) == ("vit-gpt2", source, False)
    assert loaded.preprocessing.size == (32, 32)
    assert loaded.tokenizer.vocab_size == loaded.model.vocab_size
    ids = (loaded.model.bos_token_id, loaded.model.eos_token_id, loaded.model.pad_token_id)
    assert (loaded.tokenizer.bos_token_id, loaded.tokenizer.eos_token_id, loaded.tokenizer.pad_token_id) == ids


def test_int8_and_onnx_exports_load_through_the_captioner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = save_tiny_model(tmp_path / "model")
    for kind in ("int8", "onnx"):
        code, _, err = run_cli(["export", kind, "--model", source, "--output", tmp_path / kind], capsys)
        assert code == 0, err
    reference = Captioner.from_pretrained(source, device="cpu").caption(PHOTOS, num_beams=2, max_new_tokens=6)
    onnx = Captioner.from_pretrained(tmp_path / "onnx")
    assert isinstance(onnx.model, OnnxCaptionModel) and onnx.device == torch.device("cpu")
    found = onnx.caption(PHOTOS, num_beams=2, max_new_tokens=6)
    assert [r.captions[0].token_ids for r in found] == [r.captions[0].token_ids for r in reference]
    int8 = load_pretrained(tmp_path / "int8")
    assert int8.cpu_only and Captioner.from_pretrained(tmp_path / "int8").device == torch.device("cpu")


def test_a_hub_id_offline_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as error:
        load_pretrained("captionkit-test/no-such-captioner")
    assert str(error.value) == (
        "captionkit-test/no-such-captioner: not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    )


@pytest.mark.parametrize(
    ("dtype", "reason"),
    [("half", "unknown dtype 'half' (expected one of fp32, bf16, fp16)"), ("fp16", "fp16 needs a GPU; on the CPU use")],
)
def test_a_bad_dtype_is_refused_before_a_download_or_a_load(
    dtype: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dtype was checked after the load: a hub model was downloaded and read in fp32 (gigabytes, minutes) to
    be told "fp16 needs a GPU"; offline, the hub's error hid the dtype's."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_load(*_: object, **__: object) -> None:
        raise AssertionError("loaded before the dtype was checked")

    monkeypatch.setattr("captionkit.api.load_pretrained", no_load)
    for source in ("captionkit-test/no-such-captioner", save_tiny_model(tmp_path / "model")):
        with pytest.raises(InputError) as error:
            Captioner.from_pretrained(source, dtype=dtype)
        assert str(error.value).startswith(f"dtype: {reason}")


@pytest.mark.parametrize(
    "environment",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["offline", "unreachable"],
)
def test_the_cli_names_an_unloadable_hub_id_in_one_line(environment: dict[str, str], tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), **environment}
    done = run_cli_process(["caption", PHOTOS[0], "--model", "captionkit-test/none"], env, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("captionkit: error: captionkit-test/none: "), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_model_name_is_refused_and_not_read_as_the_working_directory(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--model ""`` was Path(""), the working directory: "captionkit: error: .: no config.json", or, run from inside a
    model's folder, that model, unasked."""
    save_tiny_model(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="an empty model name; give a model directory or a hub id"):
        Captioner.from_pretrained(name)
    code, _, err = run_cli(["caption", PHOTOS[0], "--model", name], capsys)
    assert (code, err) == (1, f"captionkit: error: {name!r}: an empty model name; give a model directory or a hub id\n")


HOSTILE_CONFIGS = {
    "deep": ("[" * 1500 + "]" * 1500, "invalid JSON: nested more than 64 levels deep"),
    "bigint": ('{"model_type": ' + "9" * 5000 + "}", "invalid JSON: a number longer than 4300 digits"),
    "nan": ('{"model_type": NaN}', "invalid JSON: NaN is not a JSON number"),
    "list": ("[1, 2]", "is not a JSON object"),
    "latin-1": (b'{"model_type": "caf\xe9"}', "unreadable config: 'utf-8' codec can't decode byte 0xe9"),
}


@pytest.mark.parametrize("family", ["vit-gpt2", "cnn-lstm"])
@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_a_hostile_config_json_is_one_model_load_error_naming_the_file(family: str, case: str, tmp_path: Path) -> None:
    source = save_tiny_model(tmp_path / "model", family)
    text, reason = HOSTILE_CONFIGS[case]
    config_file = source / "config.json"
    config_file.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ModelLoadError) as error:
        Captioner.from_pretrained(source, device="cpu")
    assert error.value.source == str(config_file)
    assert error.value.reason.startswith(reason) and "\n" not in str(error.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_cut_short_are_one_model_load_error_naming_the_file(family: str, tmp_path: Path) -> None:
    source = save_tiny_model(tmp_path / "model", family)
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a download or copy cut short
    with pytest.raises(ModelLoadError) as error:
        Captioner.from_pretrained(source, device="cpu")
    assert error.value.source == str(source)
    assert (
        error.value.reason
        == "model.safetensors: unreadable weights (Error while deserializing header: invalid header length)"
    )


def test_the_cli_refuses_a_hostile_config_json_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = save_tiny_model(tmp_path / "model")
    (source / "config.json").write_text("[" * 1500 + "]" * 1500)
    capsys.readouterr()  # saving's own progress output
    code, out, err = run_cli(["caption", PHOTOS[0], "--model", source], capsys)
    expected = f"captionkit: error: {source / 'config.json'}: invalid JSON: nested more than 64 levels deep"
    assert (code, out, err.strip()) == (1, "", expected)


def test_loading_shows_no_transformers_progress_bars(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    directory = save_tiny_model(tmp_path / "m")
    hf_logging.enable_progress_bar()
    capfd.readouterr()
    Captioner.from_pretrained(directory)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting comes back


# --- hub layouts a real fine-tune may have (tests/_hub_parts.py writes them as the hub stores them)


@pytest.fixture(scope="module")
def hub_vit_gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished ViT-GPT2 in nlpconnect's transformers 4 layout, and the GPT-2 part its tokenizer files came from."""
    from _hub_parts import save_gpt2, save_vit, save_vit_gpt2_t4

    root = tmp_path_factory.mktemp("hub-vit-gpt2")
    gpt2 = save_gpt2(root / "gpt2", "t4", seed=1)
    return save_vit_gpt2_t4(root / "run", save_vit(root / "vit", "t4"), gpt2), gpt2


def _copy_without(source: Path, target: Path, *names: str) -> Path:
    target.mkdir()
    for path in source.iterdir():
        if path.name not in names:
            (target / path.name).write_bytes(path.read_bytes())
    return target


@pytest.mark.parametrize("settings", ["none", "no-class"])
def test_gpt2_bpe_files_that_name_no_tokenizer_class_load(
    hub_vit_gpt2: tuple[Path, Path], settings: str, tmp_path: Path
) -> None:
    """vocab.json + merges.txt only, with no tokenizer_config.json or one without ``tokenizer_class`` (fine-tunes
    saved by older transformers 4): AutoTokenizer cannot tell the class from a VisionEncoderDecoder's config.json."""
    import json

    from transformers import AutoTokenizer

    run, gpt2 = hub_vit_gpt2
    run = _copy_without(run, tmp_path / "run", "tokenizer_config.json")
    if settings == "no-class":
        (run / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64, "add_prefix_space": False}))
    loaded = load_pretrained(run)
    reference = AutoTokenizer.from_pretrained(gpt2)
    caption = "a dog runs through the grass, zebra!"
    assert loaded.tokenizer.encode(caption) == reference.encode(caption, add_special_tokens=False)
    assert loaded.tokenizer.decode(reference.encode(caption)) == caption
    assert (loaded.tokenizer.bos_token_id, loaded.tokenizer.eos_token_id) == (reference.eos_token_id,) * 2
    assert loaded.tokenizer.vocab_size == loaded.model.vocab_size


def test_a_directory_without_tokenizer_files_says_so(hub_vit_gpt2: tuple[Path, Path], tmp_path: Path) -> None:
    tokenizer_files = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
    run = _copy_without(hub_vit_gpt2[0], tmp_path / "run", *tokenizer_files)
    with pytest.raises(ModelLoadError) as error:
        load_pretrained(run)
    assert str(error.value) == (
        f"{run}: no tokenizer files (tokenizer.json, or vocab.json + merges.txt): copy the base model's here"
    )


@pytest.mark.parametrize("part", ["gpt2", "vit"])
def test_a_pretrained_part_given_as_the_model_is_refused_by_its_model_type(part: str, tmp_path: Path) -> None:
    from _hub_parts import save_gpt2, save_vit

    directory = (save_gpt2 if part == "gpt2" else save_vit)(tmp_path / part, "t4")
    with pytest.raises(ModelLoadError) as error:
        load_pretrained(directory)
    assert str(error.value) == (
        f"{directory}: is a '{part}' model, not one of the captioners loaded here "
        "(hub types: blip, git, vision-encoder-decoder)"
    )


def test_a_config_json_naming_no_family_and_no_model_type_says_so(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["VisionEncoderDecoderModel"]}')
    with pytest.raises(ModelLoadError) as error:
        load_pretrained(tmp_path)
    assert str(error.value) == f"{tmp_path}: config.json names neither a captionkit family nor a model_type"


# Where each hub-layout family keeps a text width in config.json, and the error transformers 5's check gives for it.
WRONG_TYPES = {
    "vit-gpt2": (("decoder", "n_embd"), "bad config.json: Validation error for field 'n_embd': TypeError: "),
    "blip": (("text_config", "hidden_size"), "bad config.json: Validation error for field 'hidden_size': TypeError: "),
    "git": (("hidden_size",), "bad config.json: Validation error for field 'hidden_size': TypeError: "),
}


@pytest.mark.parametrize("family", sorted(WRONG_TYPES))
def test_a_config_field_of_the_wrong_type_is_one_load_error(family: str, tmp_path: Path) -> None:
    """Valid JSON, but a width given as text: transformers 5 refuses it with a two-line error of its own class."""
    import json

    source = save_tiny_model(tmp_path / "model", family)
    keys, reason = WRONG_TYPES[family]
    config = json.loads((source / "config.json").read_text())
    settings = config
    for key in keys[:-1]:
        settings = settings[key]
    settings[keys[-1]] = "wide"
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as error:
        load_pretrained(source)
    assert error.value.source == str(source)
    assert error.value.reason.startswith(reason) and "'wide'" in error.value.reason
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("key", ["encoder", "decoder"])
def test_a_vit_gpt2_config_whose_part_settings_are_not_an_object_is_one_load_error(key: str, tmp_path: Path) -> None:
    import json

    source = save_tiny_model(tmp_path / "model")
    config = json.loads((source / "config.json").read_text())
    config[key] = "gpt2"
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as error:
        load_pretrained(source)
    assert str(error.value) == f"{source}: bad config.json: '{key}' is a str, not an object"


@pytest.mark.parametrize(("part", "field"), [("encoder_part", "hidden_size"), ("decoder_part", "n_embd")])
def test_a_prefix_run_whose_part_settings_have_a_wrong_type_is_one_load_error(
    part: str, field: str, tmp_path: Path
) -> None:
    """A prefix-gpt2 run from CLIP and GPT-2 parts keeps each part's transformers config in its own config.json."""
    import json

    from _hub_parts import save_clip, save_gpt2
    from captionkit.models.registry import create_model
    from captionkit.parts import CaptionerParts
    from captionkit.text import CaptionTokenizer

    clip, gpt2 = save_clip(tmp_path / "clip"), save_gpt2(tmp_path / "gpt2", seed=1)
    model = create_model("prefix-gpt2", encoder=str(clip), decoder=str(gpt2))
    run = tmp_path / "run"
    CaptionerParts(model, CaptionTokenizer.load(gpt2), model.preprocessing, clip).save(run)  # type: ignore[arg-type]
    config = json.loads((run / "config.json").read_text())
    config["config"][part][field] = "wide"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as error:
        load_pretrained(run)
    assert str(error.value) == (
        f"{run}: bad config.json: Validation error for field '{field}': TypeError: Field '{field}' expected int, "
        "got str (value: 'wide')"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_without_its_image_settings_says_what_to_copy(family: str, tmp_path: Path) -> None:
    """Size, mean and std belong to the weights: a checkpoint without preprocessor_config.json is refused with the
    remedy, in one line, for every family (none is given defaults)."""
    source = save_tiny_model(tmp_path / "model", family)
    (source / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError) as error:
        Captioner.from_pretrained(source, device="cpu")
    assert str(error.value) == (
        f"{source / 'preprocessor_config.json'}: no such file: copy the base model's preprocessor_config.json here "
        "(its image size, mean and std are not guessed)"
    )


def test_an_unfinished_training_run_points_at_its_latest_checkpoint(tmp_path: Path) -> None:
    """A run stopped before its final save holds checkpoints only: loading it names the latest one to load."""
    run = tmp_path / "run"
    for name in ("step-000005", "step-999999", "step-1000000", "step-000010"):  # steps, not names, give the order
        (run / "checkpoints" / name).mkdir(parents=True)
        (run / "checkpoints" / name / "config.json").write_text("{}")
        (run / "checkpoints" / name / "COMPLETE").touch()
    (run / "checkpoints" / "step-2000000").mkdir()  # not COMPLETE: never loaded
    latest = run / "checkpoints" / "step-1000000"
    with pytest.raises(ModelLoadError) as caught:
        Captioner.from_pretrained(run)
    assert str(caught.value) == (
        f"{run}: no config.json: a training run without its final model yet; its latest checkpoint is {latest} "
        "(load it, or resume the run)"
    )
    with pytest.raises(ModelLoadError) as caught:  # the checkpoints folder itself names its latest too
        Captioner.from_pretrained(run / "checkpoints")
    assert str(caught.value) == (
        f"{run / 'checkpoints'}: no config.json: a run's checkpoints folder, not a model; its latest checkpoint is "
        f"{latest}"
    )
    with pytest.raises(ModelLoadError, match=r"no config\.json: not a model directory$"):
        Captioner.from_pretrained(run / "checkpoints" / "step-2000000")


def test_two_threads_load_at_once(tmp_path: Path) -> None:
    """Loads in two threads undid each other's process-wide switches: most failed with "weights do not match the
    config (1 tensors: decoder.lm_head.weight)", a checkpoint that loads alone; bf16 loads too."""
    from concurrent.futures import ThreadPoolExecutor

    source = save_tiny_model(tmp_path / "model")
    dtypes = [None, "bf16"] * 6
    with ThreadPoolExecutor(2) as pool:
        loaded = list(pool.map(lambda dtype: Captioner.from_pretrained(source, device="cpu", dtype=dtype), dtypes))
    expected = [torch.float32 if dtype is None else torch.bfloat16 for dtype in dtypes]
    assert [{p.dtype for p in captioner.model.parameters()} for captioner in loaded] == [{d} for d in expected]
