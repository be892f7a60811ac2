"""--device names checked against the machine before any weights load: one line, not torch's traceback."""

from __future__ import annotations

import pytest
import torch

from _data import SHARED_DATA, real_photos
from _helpers import run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.devices import resolve_device
from captionkit.errors import InputError

PHOTO = real_photos(1)[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


def test_default_is_the_gpu_when_there_is_one(monkeypatch):
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("tpu", "unknown device 'tpu' (expected cpu, cuda, cuda:N or mps)"),
        ("cuda:x", "unknown device 'cuda:x' (expected cpu, cuda, cuda:N or mps)"),
        ("meta", "meta: captionkit runs on cpu, cuda, cuda:N or mps"),
    ],
)
def test_names_torch_cannot_run_on_are_refused(name, reason):
    with pytest.raises(InputError) as raised:
        resolve_device(name)
    assert (raised.value.source, raised.value.reason) == ("device", reason)


def test_cuda_needs_a_cuda_device_with_that_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"^device: cuda: no CUDA device is available$"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InputError, match=r"^device: cuda:2: this machine has 2 CUDA devices$"):
        resolve_device("cuda:2")


def test_mps_needs_an_apple_gpu(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"^device: mps: no MPS \(Apple GPU\) device is available$"):
        resolve_device("mps")


def test_the_device_is_checked_before_the_weights_load(monkeypatch, model_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("captionkit.api.load_pretrained", lambda *_: pytest.fail("the model was loaded"))
    with pytest.raises(InputError, match="no CUDA device"):
        Captioner.from_pretrained(model_dir, device="cuda")


@pytest.mark.parametrize(
    "command",
    [
        ["caption", str(PHOTO), "--model", "MODEL"],
        ["compare", str(PHOTO), "--model", "a=MODEL", "--model", "b=MODEL"],
        ["evaluate", "--model", "MODEL", "--data", str(SHARED_DATA / "flickr8k" / "captions.txt")],
        ["serve", "--model", "MODEL", "--port", "18999"],
    ],
    ids=["caption", "compare", "evaluate", "serve"],
)
def test_every_command_names_a_missing_device_in_one_line(command, model_dir, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = [part.replace("MODEL", str(model_dir)) for part in command]
    code, _, err = run_cli([*args, "--device", "cuda"], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == "captionkit: error: --device: cuda: no CUDA device is available"
    assert "Traceback" not in err
