"""One decoding-options table (captionkit.decoding.options): the CLI, the Python API and the server build the same
DecodingConfig from the same request, and refuse the same bad value with the same reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from _helpers import run_cli
from _hub_models import hub_layout
from _serve import image_bytes, save_tiny_model
from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig
from captionkit.errors import InputError
from captionkit.serve.errors import ApiError
from captionkit.serve.models import ServedModel
from captionkit.serve.params import parse_params
from captionkit.serve.settings import ServeSettings

pytestmark = pytest.mark.usefixtures("single_thread")

# Each option as the CLI (flag), the Python API (DecodingConfig's field, or the option's own name) and the server
# (its field) name it.
NAMES = {
    "beams": ("--beams", "num_beams", "num_beams"),
    "max_length": ("--max-length", "max_new_tokens", "max_length"),
    "n_best": ("--n-best", "num_return_sequences", "n_best"),
    "length_penalty": ("--length-penalty", "length_penalty", "length_penalty"),
    "sample": ("--sample", "do_sample", "do_sample"),
    "temperature": ("--temperature", "temperature", "temperature"),
    "top_k": ("--top-k", "top_k", "top_k"),
    "top_p": ("--top-p", "top_p", "top_p"),
    "seed": ("--seed", "seed", "seed"),
    "style": ("--style", "style", "style"),
    "prompt": ("--prompt", "prompt", "prompt"),
}

REQUESTS = [
    ({}, DecodingConfig(num_beams=4, max_new_tokens=20)),
    ({"sample": True}, DecodingConfig(do_sample=True)),
    (
        {"sample": True, "n_best": 3, "seed": 5, "temperature": 0.7, "top_k": 10, "top_p": 0.9},
        DecodingConfig(do_sample=True, num_return_sequences=3, seed=5, temperature=0.7, top_k=10, top_p=0.9),
    ),
    (
        {"beams": 2, "max_length": 7, "n_best": 2, "length_penalty": 0.5},
        DecodingConfig(num_beams=2, max_new_tokens=7, num_return_sequences=2, length_penalty=0.5),
    ),
    ({"beams": 1, "style": "neutral"}, DecodingConfig(num_beams=1)),
    ({"sample": True, "temperature": 1e-4}, DecodingConfig(do_sample=True, temperature=1e-4)),  # the bounds are in
    ({"length_penalty": -1}, DecodingConfig(num_beams=4, max_new_tokens=20, length_penalty=-1.0)),
    ({"length_penalty": 5}, DecodingConfig(num_beams=4, max_new_tokens=20, length_penalty=5.0)),
]
# Sampling divides float32 log-probs by the temperature: below 1e-4 the quotient may overflow to inf and nan.
TOO_COLD = "must be >= 0.0001, got {} (a smaller temperature is greedy decoding in effect: decode without sampling)"
BAD = [
    ({"beams": 0}, "beams", "must be in [1, 64], got 0"),
    ({"max_length": 0}, "max_length", "must be in [1, 1024], got 0"),
    ({"sample": True, "top_p": 1.5}, "top_p", "must be in (0, 1], got 1.5"),
    ({"sample": True, "top_p": 0}, "top_p", "must be in (0, 1], got 0"),
    ({"sample": True, "top_k": -1}, "top_k", "must be >= 0, got -1"),
    ({"sample": True, "temperature": 0}, "temperature", TOO_COLD.format(0)),
    ({"sample": True, "temperature": 1e-30}, "temperature", TOO_COLD.format("1e-30")),
    ({"length_penalty": 6}, "length_penalty", "must be in [-1, 5], got 6"),
    ({"length_penalty": -2}, "length_penalty", "must be in [-1, 5], got -2"),
    ({"n_best": 5}, "n_best", "beam search returns at most 4 captions per image, got 5 (use more beams, or sample)"),
    ({"beams": 2, "sample": True}, "beams", "beam sampling is not supported: sample with 1 beam (the default)"),
    ({"temperature": 0.5}, "temperature", "only used when sampling; got 0.5 without sampling"),
    ({"seed": 3}, "seed", "only used when sampling; got 3 without sampling"),
    ({"beams": 1, "seed": 0}, "seed", "only used when sampling; got 0 without sampling"),
    ({"style": "happy"}, "style", "unknown style 'happy' (known: neutral, positive, negative)"),
    ({"style": "positive"}, "style", "MODEL was trained without styles: it cannot write positive captions"),
    ({"prompt": "a photo of"}, "prompt", "MODEL is a vit-gpt2 model: it takes no text prompt (blip does)"),
    ({"max_length": 100}, "max_length", "must be at most 64 for this model, got 100"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", seed=0)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "photo.jpg"
    path.write_bytes(image_bytes())
    return path


class Spy:
    """Records every DecodingConfig a Captioner resolves (the CLI's job, the API and the server all resolve one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.configs: list[DecodingConfig] = []
        resolve = Captioner.resolve_decoding

        def recording(captioner: Captioner, *args: Any, **kwargs: Any) -> DecodingConfig:
            config = resolve(captioner, *args, **kwargs)
            self.configs.append(config)
            return config

        monkeypatch.setattr(Captioner, "resolve_decoding", recording)


def cli_args(request: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for option, value in request.items():
        flag = NAMES[option][0]
        args += [flag] if value is True else [flag, str(value)]
    return args


def via_cli(model_dir: Path, photo: Path, request: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's one-line error (``captionkit: error: FLAG: REASON``), or "" when it captioned."""
    code, _, err = run_cli(["caption", photo, "--model", model_dir, *cli_args(request)], capsys)
    assert code in (0, 1), err
    return "" if code == 0 else err.strip().splitlines()[-1]


def via_api(captioner: Captioner, photo: Path, request: dict[str, Any]) -> None:
    captioner.caption(photo, **{NAMES[option][1]: value for option, value in request.items()})


def via_server(captioner: Captioner, request: dict[str, Any], settings: ServeSettings | None = None) -> None:
    # Form fields arrive as strings: the server converts them, then the table checks them.
    raw = {NAMES[o][2]: str(v).lower() if isinstance(v, bool) else str(v) for o, v in request.items()}
    parse_params(raw, {"tiny": ServedModel("tiny", captioner)}, settings or ServeSettings(max_new_tokens=1024))


@pytest.mark.parametrize(("request_", "expected"), REQUESTS, ids=[str(r) for r, _ in REQUESTS])
def test_cli_api_and_server_build_the_same_config(
    model_dir: Path,
    photo: Path,
    request_: dict[str, Any],
    expected: DecodingConfig,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spy = Spy(monkeypatch)
    assert via_cli(model_dir, photo, request_, capsys) == ""
    captioner = Captioner.from_pretrained(model_dir, device="cpu")
    via_api(captioner, photo, request_)
    via_server(captioner, request_)
    cli, api, server = spy.configs
    assert cli == api == server == expected


@pytest.mark.parametrize(("request_", "option", "reason"), BAD, ids=[str(r) for r, _, _ in BAD])
def test_cli_api_and_server_refuse_a_bad_value_with_the_same_reason(
    model_dir: Path,
    photo: Path,
    request_: dict[str, Any],
    option: str,
    reason: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each names the option its own way (--beams, num_beams) and gives the same reason; MODEL stands for how each
    names the model (its directory; the served name)."""
    cli_flag, api_name, server_field = NAMES[option]
    captioner = Captioner.from_pretrained(model_dir, device="cpu")
    assert via_cli(model_dir, photo, request_, capsys) == f"captionkit: error: {cli_flag}: " + reason.replace(
        "MODEL", str(model_dir)
    )
    with pytest.raises(InputError) as raised:
        via_api(captioner, photo, request_)
    assert (raised.value.source, raised.value.reason) == (api_name, reason.replace("MODEL", str(model_dir)))
    with pytest.raises(ApiError) as refused:
        via_server(captioner, request_)
    assert refused.value.status == 422
    assert refused.value.detail == f"{server_field}: " + reason.replace("MODEL", "model 'tiny'")


def test_the_server_limits_come_after_the_tables_checks(model_dir: Path) -> None:
    captioner = Captioner.from_pretrained(model_dir, device="cpu")
    with pytest.raises(ApiError) as refused:
        via_server(captioner, {"beams": 9}, ServeSettings())
    assert refused.value.detail == "num_beams: must be at most 8 on this server, got 9"
    captioner.caption(image_bytes(), num_beams=9, max_new_tokens=2)  # the API has no server limits


def test_a_blip_prompt_is_the_same_option_everywhere(
    tmp_path: Path, photo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hub_layout("blip", tmp_path / "blip")
    spy = Spy(monkeypatch)
    request = {"prompt": "a picture of", "beams": 2, "max_length": 5}
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(
        ["caption", photo, "--model", tmp_path / "blip", "--output", out, *cli_args(request)], capsys
    )
    assert code == 0, err
    captioner = Captioner.from_pretrained(tmp_path / "blip", device="cpu")
    (api,) = captioner.caption(photo, prompt="a picture of", num_beams=2, max_new_tokens=5)
    via_server(captioner, request)
    cli_config, api_config, server_config = spy.configs
    assert cli_config == api_config == server_config
    assert cli_config.prompt_ids == tuple(captioner.tokenizer.encode("a picture of")) != ()
    assert f'"caption": "{api.caption}"' in out.read_text()


def test_a_tighter_bound_lowers_the_defaults_it_is_below() -> None:
    from captionkit.decoding.options import decoding_request

    limits = {"num_beams": 2, "max_length": 6, "n_best": 2}
    lowered = decoding_request(limits).config
    assert (lowered.num_beams, lowered.max_new_tokens) == (2, 6)  # the table's 4 and 20 would be over the bounds
    assert decoding_request(limits, beams=1, max_length=3).config.num_beams == 1  # given values stay as given
    assert decoding_request(limits, sample=True).config.num_beams == 1  # sampling's default is below the bound
    roomy = decoding_request({"num_beams": 8, "max_length": 64}).config
    assert (roomy.num_beams, roomy.max_new_tokens) == (4, 20)  # bounds above the defaults change nothing
