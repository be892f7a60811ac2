"""ViT + GPT-2: configs, presets, teacher forcing vs the step protocol, hub-layout save/load, load errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import VisionEncoderDecoderModel

from captionkit import __version__
from captionkit.decoding import DecodingConfig, generate
from captionkit.errors import ConfigError, ModelLoadError
from captionkit.hub import PROBE_TIMEOUT_S
from captionkit.models.base import Encoded
from captionkit.models.vit_gpt2 import PRESETS, VitGpt2Config, VitGpt2Model

pytestmark = pytest.mark.usefixtures("single_thread")

IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


# --- configs and presets


def test_base_preset_has_the_nlpconnect_architecture() -> None:
    # On the meta device: shapes without memory or initialisation.
    with torch.device("meta"):
        model = VitGpt2Model.from_config("base", bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
    # ViT-B/16 with its (unused) pooler 86.39M + GPT-2 124.44M + 12 cross-attention blocks 28.37M; tied head.
    assert sum(p.numel() for p in model.parameters()) == 239_195_904
    assert (model.vocab_size, model.max_positions, model.config.image_size) == (50257, 1024, 224)
    assert model.ved.decoder.lm_head.weight is model.ved.decoder.transformer.wte.weight


def test_small_preset_size() -> None:
    with torch.device("meta"):
        model = VitGpt2Model.from_config("small", **IDS)
    assert 2_000_000 < sum(p.numel() for p in model.parameters()) < 4_000_000


@pytest.mark.parametrize(
    ("call", "source", "reason"),
    [
        (lambda: VitGpt2Config.from_preset("huge"), "preset", "unknown vit-gpt2 preset 'huge'"),
        (
            lambda: VitGpt2Config.from_preset("tiny", decoder_layerz=3),
            "decoder_layerz",
            "unknown vit-gpt2 config key",
        ),
        (lambda: VitGpt2Config.from_preset("tiny", decoder_layers="3"), "decoder_layers", "expected int"),
        (lambda: VitGpt2Config.from_preset("tiny", decoder_layers=True), "decoder_layers", "expected int"),
        (lambda: VitGpt2Config.from_preset("tiny", encoder_layers=0), "encoder_layers", "at least 1"),
        (
            lambda: VitGpt2Config.from_preset("tiny", patch_size=7),
            "patch_size",
            "does not divide image_size 32",
        ),
        (lambda: VitGpt2Config.from_preset("tiny", decoder_heads=3), "decoder_heads", "do not divide"),
        (lambda: VitGpt2Config.from_preset("tiny", decoder_dropout=1.0), "decoder_dropout", "[0, 1)"),
        (
            lambda: VitGpt2Model.from_config("tiny", **IDS, vocab_sise=10),
            "vocab_sise",
            "unknown vit-gpt2 config key",
        ),
        (
            lambda: VitGpt2Model.from_config("tiny", **{**IDS, "eos_token_id": 256}),
            "eos_token_id",
            "[0, 256)",
        ),
    ],
)
def test_bad_configs_are_config_errors(call: Callable[[], Any], source: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        call()
    assert raised.value.source == source
    assert reason in raised.value.reason


def test_config_round_trips_through_the_hub_config() -> None:
    config = PRESETS["small"].replace(decoder_intermediate_size=320, vocab_size=999)
    assert VitGpt2Config.from_hf(config.to_hf(1, 2, 0)) == config
    assert VitGpt2Config.from_dict(config.to_dict()) == config


# --- teacher forcing and the step protocol


def test_forward_equals_the_wrapped_model(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    model = make_vit_gpt2(seed=0)
    pixels = make_pixels(3)
    input_ids = torch.randint(0, 16, (3, 7), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0  # right padding
    with torch.no_grad():
        logits = model(pixels, input_ids, attention_mask)
        reference = model.ved(pixel_values=pixels, decoder_input_ids=input_ids, decoder_attention_mask=attention_mask)
        from_encoded = model(None, input_ids, attention_mask, encoded=model.encode(pixels))
    assert logits.shape == (3, 7, 16)
    assert torch.equal(logits, reference.logits)
    assert torch.equal(from_encoded, logits)


def test_steps_with_reordering_equal_teacher_forcing(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    # float32 error grows with the logits' scale: std 0.1 weights give log-probs down to about -9, where the
    # cached and the full computation differ by ~3e-6 (std 0.3: down to -17, up to ~2.5e-5).
    model = make_vit_gpt2(seed=1, initializer_range=0.1)
    pixels = make_pixels(2, 1)
    row_image = torch.tensor([0, 0, 1, 1, 1])  # 2 images expanded to 5 sequences, as beams are
    sequences = torch.randint(0, 16, (5, 6), generator=torch.Generator().manual_seed(1))
    sequences[:, 0] = model.bos_token_id
    # Before feeding position t: a permutation within images (cross-attention cache kept as it is), a dropped
    # row, and a reversal across images (cross-attention cache reindexed).
    reorders = {
        3: torch.tensor([1, 0, 4, 2, 3]),
        4: torch.tensor([0, 2, 3, 4]),
        5: torch.tensor([3, 2, 1, 0]),
    }
    with torch.no_grad():
        teacher = model(pixels[row_image], sequences).log_softmax(dim=-1)
        state = model.init_state(model.encode(pixels))
        first, state = model.step(sequences[[0, 2], 0], state)  # once per image
        torch.testing.assert_close(first, teacher[[0, 2], 0], rtol=0, atol=1e-5)
        state, rows = model.reorder_state(state, row_image, tuple(row_image.tolist())), torch.arange(5)
        for position in range(1, 6):
            if position in reorders:
                rows = rows[reorders[position]]
                state = model.reorder_state(state, reorders[position], tuple(row_image[rows].tolist()))
            stepped, state = model.step(sequences[rows, position], state)
            torch.testing.assert_close(stepped, teacher[rows, position], rtol=0, atol=1e-5)


def test_cross_attention_keys_values_are_computed_once_per_image(
    make_vit_gpt2: Callable, make_pixels: Callable
) -> None:
    model = make_vit_gpt2(seed=2)
    batch_sizes: list[int] = []
    for block in model.ved.decoder.transformer.h:
        # c_attn of a cross-attention block projects encoder tokens to keys and values.
        block.crossattention.c_attn.register_forward_hook(lambda _m, args, _o: batch_sizes.append(args[0].shape[0]))
    config = DecodingConfig(max_new_tokens=8, num_beams=4, num_return_sequences=4)
    found = generate(model, make_pixels(3, 2), config=config)
    assert [len(hypotheses) for hypotheses in found] == [4, 4, 4]
    assert batch_sizes == [3, 3]  # one call per layer, 3 images, not 3 × 4 beams, and never again


def test_padded_encoder_tokens_are_refused(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    model = make_vit_gpt2()
    with torch.no_grad():
        tokens = model.encode(make_pixels(2)).tokens
    mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
    state = model.init_state(Encoded(tokens, mask))  # an all-true mask is no mask
    assert state.cross.shape[2:] == (2, 2, tokens.shape[1], 32)  # (images, heads, tokens, head_dim)
    mask[0, -1] = False
    with pytest.raises(ValueError, match="not supported"):
        model.init_state(Encoded(tokens, mask))


# --- save and load in the hub layout


def test_saved_directory_loads_in_plain_transformers_and_captionkit(
    make_vit_gpt2: Callable, make_pixels: Callable, tmp_path: Path
) -> None:
    model = make_vit_gpt2(seed=3)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["captionkit"] == {"family": "vit-gpt2", "captionkit_version": __version__}
    assert (saved["decoder_start_token_id"], saved["eos_token_id"], saved["pad_token_id"]) == (1, 2, 0)

    plain = VisionEncoderDecoderModel.from_pretrained(tmp_path).eval()
    ours = VitGpt2Model.from_pretrained(tmp_path)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.config) == (1, 2, 0, model.config)
    assert plain.config.captionkit["family"] == "vit-gpt2"  # transformers keeps the extra key

    pixels = make_pixels(3, 3)
    input_ids = torch.randint(0, 16, (3, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(pixels, input_ids)
        assert (ours(pixels, input_ids) - expected).abs().max() <= 1e-5
        assert (plain(pixel_values=pixels, decoder_input_ids=input_ids).logits - expected).abs().max() <= 1e-5
    config = DecodingConfig(max_new_tokens=10)
    captions = [found[0].token_ids for found in generate(model, pixels, config=config)]
    assert [found[0].token_ids for found in generate(ours, pixels, config=config)] == captions
    plain_captions = plain.generate(pixels, max_new_tokens=10).tolist()
    assert [row[1:][: row[1:].index(2)] if 2 in row[1:] else row[1:] for row in plain_captions] == captions


def test_directory_saved_by_plain_transformers_loads(make_vit_gpt2: Callable, tmp_path: Path) -> None:
    model = make_vit_gpt2(seed=4, bos_token_id=15, eos_token_id=15, pad_token_id=15)
    model.ved.save_pretrained(tmp_path)  # no captionkit key, GPT-2 style ids as in nlpconnect
    loaded = VitGpt2Model.from_pretrained(str(tmp_path))
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (15, 15, 15)
    assert not loaded.training


def _write_config(directory: Path, config: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        (lambda d, m: _write_config(d, m), "only safetensors weights are loaded"),
        (lambda d, m: _write_config(d, {**m, "model_type": "bert"}), "model_type is 'bert'"),
        (
            lambda d, m: _write_config(d, {**m, "decoder": {**m["decoder"], "model_type": "bert"}}),
            "needs vit + gpt2",
        ),
        (lambda d, m: _write_config(d, {**m, "captionkit": {"family": "lstm"}}), "family 'lstm'"),
        (lambda d, m: d.mkdir(), "no config.json"),
    ],
)
def test_bad_directories_are_refused(
    make_vit_gpt2: Callable, tmp_path: Path, prepare: Callable[[Path, dict], None], reason: str
) -> None:
    make_vit_gpt2().save_pretrained(tmp_path / "good")
    good = json.loads((tmp_path / "good" / "config.json").read_text())
    directory = tmp_path / "bad"
    prepare(directory, good)
    # A pickle must never be opened: this one would fail loudly if it were.
    (directory / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError) as raised:
        VitGpt2Model.from_pretrained(directory)
    assert raised.value.source == str(directory)
    assert reason in raised.value.reason


def test_weights_that_do_not_fit_the_config_are_refused(make_vit_gpt2: Callable, tmp_path: Path) -> None:
    make_vit_gpt2().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["decoder"]["n_inner"] = 96
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as raised:
        VitGpt2Model.from_pretrained(tmp_path)
    # Named: how many tensors, and the first with both shapes (2 layers x the MLP's c_fc weight and bias, c_proj).
    assert str(raised.value) == (
        f"{tmp_path}: weight shapes do not match config.json (6 tensors; decoder.transformer.h.0.mlp.c_fc.bias: "
        "[256] in the weights, [96] by config.json)"
    )


def test_missing_paths_are_refused_without_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    # "runs/final" could be a hub id, but ./runs exists: a mistyped local path.
    for missing in (tmp_path / "nowhere", str(tmp_path / "nowhere"), "./nowhere", "runs/final"):
        with pytest.raises(ModelLoadError, match="no such directory"):
            VitGpt2Model.from_pretrained(missing)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        VitGpt2Model.from_pretrained("file.txt")


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        # Without an eos anywhere transformers fills in GPT-2's 50256: captions never ended, exit 0.
        ({"eos_token_id": None}, "eos_token_id 50256"),
        # Refused only at captioning, as "start_token_id", a decoding option nobody set.
        ({"decoder_start_token_id": 99999}, "decoder_start_token_id 99999"),
    ],
)
def test_special_ids_outside_the_vocabulary_are_refused_at_load(
    edit: dict[str, Any], reason: str, tmp_path: Path
) -> None:
    from _hub_parts import save_gpt2, save_vit, save_vit_gpt2_t4

    run = save_vit_gpt2_t4(tmp_path / "run", save_vit(tmp_path / "vit"), save_gpt2(tmp_path / "gpt2"))
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    for settings in (config, config["decoder"]):  # nlpconnect's layout keeps the ids in both
        for key, value in edit.items():
            if value is None:
                settings.pop(key, None)
            else:
                settings[key] = value
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelLoadError) as raised:
        VitGpt2Model.from_pretrained(run)
    assert str(raised.value) == (
        f"{run}: {reason} is not a token id of its decoder's vocabulary [0, 320): set it in config.json"
    )


# Nothing listens on the discard port: a connection there is refused at once.
UNREACHABLE = "http://127.0.0.1:9"
MISSING = "captionkit-tests/no-such-model"


def record_hub_calls(
    monkeypatch: pytest.MonkeyPatch, probe: Callable[..., Any] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The calls captionkit.hub makes into huggingface_hub, in order, each passed on to the real function (the probe
    to ``probe`` instead, when given): ("probe", its url and options) or ("snapshot", its options)."""
    import huggingface_hub

    calls: list[tuple[str, dict[str, Any]]] = []
    real_probe, real_snapshot = probe or huggingface_hub.get_hf_file_metadata, huggingface_hub.snapshot_download

    def get_hf_file_metadata(url: str, **options: Any) -> Any:
        calls.append(("probe", {"url": url, **options}))
        return real_probe(url, **options)

    def snapshot_download(repo_id: str, **options: Any) -> str:
        calls.append(("snapshot", {"repo_id": repo_id, **options}))
        return real_snapshot(repo_id, **options)

    # captionkit.hub imports both from huggingface_hub when called, so patching the package reaches it.
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", get_hf_file_metadata)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache (huggingface_hub reads the setting from its constants when it looks)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_an_unreachable_hub_is_probed_once_then_only_the_cache_is_read(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Why it fails fast: one HEAD request with the short timeout (not the hub client's ~25 s of retries), then the
    # cache alone, without another request.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # huggingface_hub turns HF_ENDPOINT into these at import time.
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", UNREACHABLE + "/{repo_id}/resolve/{revision}/{filename}"
    )
    calls = record_hub_calls(monkeypatch)
    with pytest.raises(ModelLoadError) as raised:
        VitGpt2Model.from_pretrained(MISSING)
    assert str(raised.value) == (
        f"{MISSING}: cannot download from the Hugging Face Hub (offline?); pass a local directory, "
        "or set HF_HUB_OFFLINE=1 with a cached copy"
    )
    url = f"{UNREACHABLE}/{MISSING}/resolve/main/config.json"
    assert [name for name, _ in calls] == ["probe", "snapshot"]
    assert calls[0][1] == {"url": url, "timeout": PROBE_TIMEOUT_S}
    assert calls[1][1]["local_files_only"] is True


@pytest.mark.parametrize(
    ("error", "first_line", "reason"),
    [
        # 404 (or 401 for a private or gated repository): the id is unknown.
        (
            "RepositoryNotFoundError",
            "404 Client Error: {url}",
            "not found on the Hugging Face Hub (private or gated: log in first)",
        ),
        # The repository exists but holds no config.json (GGUF files only, say): 404 with the EntryNotFound code,
        # whose first line names only the status and a request id.
        (
            "RemoteEntryNotFoundError",
            "404 Client Error. (Request ID: Root=1-abc)\n\nEntry Not Found for url: {url}.",
            "has no config.json on the Hugging Face Hub: not a model captionkit loads",
        ),
    ],
    ids=["unknown-id", "no-config-json"],
)
def test_a_refused_probe_is_one_line_and_nothing_more_is_asked(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, error: str, first_line: str, reason: str
) -> None:
    from huggingface_hub import constants, errors

    def refuse(url: str, **_: Any) -> None:
        # The error reads only headers and request of a response: a stand-in for the transport library's (by version).
        raise getattr(errors, error)(first_line.format(url=url), response=SimpleNamespace(headers={}, request=None))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = record_hub_calls(monkeypatch, probe=refuse)
    with pytest.raises(ModelLoadError) as raised:
        VitGpt2Model.from_pretrained(MISSING)
    assert str(raised.value) == f"{MISSING}: {reason}"
    assert [name for name, _ in calls] == ["probe"]


def test_offline_mode_uses_only_the_cache(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    calls = record_hub_calls(monkeypatch)
    with pytest.raises(ModelLoadError) as raised:
        VitGpt2Model.from_pretrained(MISSING)
    assert str(raised.value) == f"{MISSING}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    # No request at all: no probe, and the snapshot is looked up in the cache only.
    assert [name for name, _ in calls] == ["snapshot"]
    assert calls[0][1]["local_files_only"] is True


def test_eager_attention_decodes_like_sdpa(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    # Attention maps (a later issue) need eager attention; decoding must not depend on the implementation.
    model = make_vit_gpt2(seed=5)
    eager = make_vit_gpt2(seed=5)
    eager.ved.set_attn_implementation("eager")
    assert eager.ved.decoder.config._attn_implementation == "eager"
    pixels = make_pixels(3, 5)
    config = DecodingConfig(max_new_tokens=10, num_beams=3, num_return_sequences=3)
    found = generate(model, pixels, config=config)
    assert [[h.token_ids for h in f] for f in generate(eager, pixels, config=config)] == [
        [h.token_ids for h in f] for f in found
    ]


def test_sincos_position_init_encodes_rows_and_columns() -> None:
    from captionkit.models.vit_gpt2 import VitGpt2Model, init_sincos_positions, sincos_2d_table

    table = sincos_2d_table(4, 64)
    assert table.shape == (16, 64)
    # Patches in one row share the row half of the table; patches in one column share the column half.
    assert torch.equal(table[0, :32], table[3, :32]) and not torch.equal(table[0, 32:], table[3, 32:])
    assert torch.equal(table[1, 32:], table[13, 32:]) and not torch.equal(table[1, :32], table[13, :32])
    model = VitGpt2Model.from_config("tiny", bos_token_id=1, eos_token_id=2, pad_token_id=0)
    init_sincos_positions(model)
    positions = model.ved.encoder.embeddings.position_embeddings[0]
    assert torch.equal(positions[1:], table) and not positions[0].any()
