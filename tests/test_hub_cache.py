"""A hub id served from the local Hugging Face cache, the hub out of reach: the snapshot huggingface_hub stored is
found, loads and captions like the directory it came from; and what a download may fetch (no pickled weights)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import scan_cache_dir
from huggingface_hub.utils import filter_repo_objects

from _data import SHARED_DATA
from _helpers import save_tiny_model
from captionkit import Captioner
from captionkit.hub import SNAPSHOT_PATTERNS, resolve_model_source

pytestmark = pytest.mark.usefixtures("single_thread")

REPO_ID = "captionkit-tests/tiny-captioner"
COMMIT = "4f9b3c2a1d0e8f7a6b5c4d3e2f1a0b9c8d7e6f5a"
PHOTO = SHARED_DATA / "coco" / "val2017" / "000000000139.jpg"
# Nothing listens on the discard port: a connection there is refused at once.
UNREACHABLE = "http://127.0.0.1:9"
# Weights in every pickled format a hub repository may hold: a download must never fetch one.
PICKLES = ("pytorch_model.bin", "model.pt", "model.pth", "tf_model.h5", "flax_model.msgpack", "model.ckpt")
# Stored in git LFS on the hub: huggingface_hub names their blobs by sha256, the others by their git blob sha1.
LFS_SUFFIXES = (".safetensors", ".bin")


def blob_name(name: str, data: bytes) -> str:
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """``files`` (name -> content) as huggingface_hub stores a downloaded snapshot of ``repo_id`` in ``cache``
    (HF_HUB_CACHE): the contents in blobs/, snapshots/<commit>/ linking to them, refs/main naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    for folder in (repo / "blobs", repo / "refs", snapshot):
        folder.mkdir(parents=True)
    for name, data in files.items():
        blob = repo / "blobs" / blob_name(name, data)
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))  # relative links, as huggingface_hub makes
    (repo / "refs" / "main").write_text(COMMIT)  # the bare hash, no newline
    return snapshot


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("saved") / "model")


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of this test's own (resolved: huggingface_hub answers with resolved paths)."""
    from huggingface_hub import constants

    home = tmp_path.resolve() / "hf"
    # huggingface_hub turns the variables into its constants at import time, and reads the constants when it looks.
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    return home / "hub"


@pytest.fixture(params=["offline", "unreachable"])
def no_hub(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub out of reach, both ways that leave only the cache: switched off (HF_HUB_OFFLINE=1), or refusing
    connections (HF_ENDPOINT on a closed port, HF_HUB_OFFLINE unset)."""
    from huggingface_hub import constants

    if request.param == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        return
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", UNREACHABLE + "/{repo_id}/resolve/{revision}/{filename}"
    )


def downloaded(saved: Path) -> dict[str, bytes]:
    """What a snapshot download of ``saved`` would have stored: the files SNAPSHOT_PATTERNS let through (as
    huggingface_hub filters them), and a stray pickle (left by another tool's full download) that would fail loudly
    if it were ever opened."""
    names = filter_repo_objects(sorted(path.name for path in saved.iterdir()), allow_patterns=list(SNAPSHOT_PATTERNS))
    return {name: (saved / name).read_bytes() for name in names} | {"pytorch_model.bin": b"not a pickle"}


@pytest.mark.usefixtures("no_hub")
def test_a_cached_hub_id_resolves_to_its_snapshot(saved: Path, hub_cache: Path) -> None:
    snapshot = cache_snapshot(hub_cache, REPO_ID, downloaded(saved))
    # The layout is huggingface_hub's own: its cache scanner reads it as one revision, main, without a complaint.
    scanned = scan_cache_dir(hub_cache)
    [repo] = scanned.repos
    [revision] = repo.revisions
    assert (repo.repo_id, revision.commit_hash, revision.refs, scanned.warnings) == (REPO_ID, COMMIT, {"main"}, [])
    assert resolve_model_source(REPO_ID) == snapshot


@pytest.mark.usefixtures("no_hub")
def test_a_cached_hub_id_captions_like_its_directory(saved: Path, hub_cache: Path) -> None:
    cache_snapshot(hub_cache, REPO_ID, downloaded(saved))
    cached = Captioner.from_pretrained(REPO_ID, device="cpu")
    assert cached.name == REPO_ID
    found = cached.caption([PHOTO], num_beams=2, max_new_tokens=6)
    expected = Captioner.from_pretrained(saved, device="cpu").caption([PHOTO], num_beams=2, max_new_tokens=6)
    assert len(found) == 1 and found[0].captions[0].token_ids  # a caption of the photo, not an empty hypothesis
    assert [r.captions[0].token_ids for r in found] == [r.captions[0].token_ids for r in expected]


def test_a_download_fetches_safetensors_and_configs_but_no_pickles(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    folder = hub_cache / "fetched"
    downloads: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **options: Any) -> str:
        downloads.append({"repo_id": repo_id, **options})
        return str(folder)

    # Online: the probe finds the repository (no request is made), then the snapshot is downloaded.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *_, **__: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert resolve_model_source(REPO_ID) == folder
    assert len(downloads) == 1
    assert (downloads[0]["repo_id"], downloads[0]["local_files_only"]) == (REPO_ID, False)
    wanted = ("config.json", "generation_config.json", "model.safetensors", "model-00001-of-00002.safetensors")
    # Filtered as huggingface_hub filters a repository's files by allow_patterns.
    fetched = filter_repo_objects([*PICKLES, *wanted], allow_patterns=downloads[0]["allow_patterns"])
    assert list(fetched) == list(wanted)


@pytest.mark.usefixtures("no_hub")
@pytest.mark.parametrize("family", ["blip", "git"])
def test_load_model_takes_a_cached_hub_id_of_any_family(family: str, hub_cache: Path, tmp_path: Path) -> None:
    """A hub id's family is read from its snapshot's config.json, as a directory's is (it was taken for vit-gpt2)."""
    from _hub_models import hub_layout
    from captionkit.models.registry import load_model

    source = tmp_path / "source"
    model = hub_layout(family, source)
    cache_snapshot(hub_cache, REPO_ID, downloaded(source))
    loaded = load_model(REPO_ID)
    assert loaded.family == family
    expected, found = model.state_dict(), loaded.state_dict()
    assert set(found) == set(expected) and all(torch.equal(found[name], expected[name]) for name in expected)


def test_building_from_hub_parts_probes_each_hub_id_once(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each hub id is looked up once per process: a part's config, weights, preprocessing and tokenizer, and a
    second captioner from the same part, reuse its snapshot (each probe may take PROBE_TIMEOUT_S on a lossy network)."""
    import huggingface_hub
    from huggingface_hub import constants, hf_hub_url

    from _hub_parts import save_clip, save_gpt2, save_vit
    from captionkit.models.registry import create_model
    from captionkit.text import CaptionTokenizer

    vit, clip, gpt2 = "captionkit-tests/vit", "captionkit-tests/clip", "captionkit-tests/gpt2"
    folders = {vit: save_vit(tmp_path / "vit"), clip: save_clip(tmp_path / "clip"), gpt2: save_gpt2(tmp_path / "gpt2")}
    probes: list[str] = []
    downloads: list[str] = []

    def probe(url: str, **_: Any) -> None:
        probes.append(url)

    def snapshot_download(repo_id: str, **_: Any) -> str:
        downloads.append(repo_id)
        return str(folders[repo_id])

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", probe)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert create_model("vit-gpt2", encoder=vit, decoder=gpt2).family == "vit-gpt2"
    assert create_model("prefix-gpt2", encoder=clip, decoder=gpt2).family == "prefix-gpt2"
    assert CaptionTokenizer.load(gpt2).vocab_size > 0  # a recipe's tokenizer: the decoder part's own
    assert sorted(downloads) == sorted(folders)
    assert sorted(probes) == sorted(hf_hub_url(repo_id, "config.json") for repo_id in folders)


def test_a_failed_hub_lookup_is_tried_again(hub_cache: Path, saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a snapshot found is kept: a hub id that failed (offline, not cached) resolves once it is cached."""
    from huggingface_hub import constants

    from captionkit.errors import ModelLoadError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        resolve_model_source(REPO_ID)
    snapshot = cache_snapshot(hub_cache, REPO_ID, downloaded(saved))
    assert resolve_model_source(REPO_ID) == snapshot
