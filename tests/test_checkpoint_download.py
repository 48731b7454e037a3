"""Checkpoint downloads and safe loading, against a local HTTP server on 127.0.0.1 (no
test reaches the internet)."""
import collections
import hashlib
import importlib
import io
import os
import pickle

import numpy as np
import pytest
import torch

from local_http import server  # noqa: F401  (fixture)

from adet.checkpoint import (
    AdetCheckpointer,
    CheckpointLoadError,
    ChecksumError,
    DownloadError,
    UnsafeCheckpointError,
    cache_path,
    default_cache_dir,
    detectron2_url,
    download,
    load_pickle_file,
    load_torch_file,
    resolve_path,
)

download_module = importlib.import_module("adet.checkpoint.download")  # the package exports a function of that name


def _checkpoint_bytes(model=None, **extra) -> bytes:
    model = model or _small_model()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), **extra}, buffer)
    return buffer.getvalue()


def _small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 4))


def _cache_listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_download_then_cache_hit(server, tmp_path):
    data = os.urandom(3_000_000)
    server.files["/models/a.pth"] = (data, "application/octet-stream")
    url = server.url("/models/a.pth?download=true")
    path = download(url, str(tmp_path), progress=False)
    assert path == cache_path(url, str(tmp_path))
    assert path == os.path.join(str(tmp_path), f"127.0.0.1_{server.server_address[1]}", "models", "a.pth")
    assert open(path, "rb").read() == data
    assert len(server.requests) == 1
    assert download(url, str(tmp_path), progress=False) == path  # cache hit: no second request
    assert len(server.requests) == 1
    assert not [f for f in _cache_listing(tmp_path) if f.endswith(".part")]


def test_sha256_checked(server, tmp_path):
    data = b"checkpoint bytes" * 1000
    server.files["/b.pth"] = (data, "application/octet-stream")
    good = hashlib.sha256(data).hexdigest()
    bad = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ChecksumError, match=f"got {good}, expected {bad}"):
        download(server.url("/b.pth"), str(tmp_path), sha256=bad, progress=False)
    assert not os.path.exists(cache_path(server.url("/b.pth"), str(tmp_path)))
    assert not [f for f in _cache_listing(tmp_path) if not f.endswith(".lock")]  # nothing cached, no .part
    path = download(server.url("/b.pth"), str(tmp_path), sha256=good.upper(), progress=False)
    assert open(path, "rb").read() == data


def test_cached_file_with_wrong_sha256_is_fetched_again(server, tmp_path):
    data = b"the real file" * 100
    server.files["/c.pth"] = (data, "application/octet-stream")
    url = server.url("/c.pth")
    dst = cache_path(url, str(tmp_path))
    os.makedirs(os.path.dirname(dst))
    open(dst, "wb").write(b"stale")
    download(url, str(tmp_path), sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert open(dst, "rb").read() == data and len(server.requests) == 1


def test_interrupted_transfer_is_not_cached_and_resumes(server, tmp_path):
    data = os.urandom(500_000)
    server.files["/d.pth"] = (data, "application/octet-stream")
    server.cut["/d.pth"] = 200_000  # the server promises 500000 bytes, sends 200000, closes
    url = server.url("/d.pth")
    with pytest.raises(DownloadError, match="interrupted: 200000 bytes received of 500000"):
        download(url, str(tmp_path), progress=False)
    dst = cache_path(url, str(tmp_path))
    assert not os.path.exists(dst)
    assert os.path.getsize(dst + ".part") == 200_000
    del server.cut["/d.pth"]
    assert download(url, str(tmp_path), sha256=hashlib.sha256(data).hexdigest(), progress=False) == dst
    assert open(dst, "rb").read() == data
    assert server.requests[-1] == ("/d.pth", "bytes=200000-")  # asked only for the rest
    assert not os.path.exists(dst + ".part")


def test_resume_refetches_a_file_that_changed_on_the_server(server, tmp_path):
    old, new = os.urandom(300_000), os.urandom(300_000)
    server.files["/e.pth"], server.etags["/e.pth"] = (old, "application/octet-stream"), '"v1"'
    server.cut["/e.pth"] = 100_000
    url = server.url("/e.pth")
    with pytest.raises(DownloadError, match="interrupted"):
        download(url, str(tmp_path), progress=False)
    del server.cut["/e.pth"]
    server.files["/e.pth"], server.etags["/e.pth"] = (new, "application/octet-stream"), '"v2"'
    path = download(url, str(tmp_path), progress=False)
    assert open(path, "rb").read() == new  # not old[:100000] + new[100000:]
    assert server.requests[-1] == ("/e.pth", "bytes=100000-")
    name = os.path.relpath(path, tmp_path)
    assert _cache_listing(tmp_path) == [name, name + ".lock"]  # no .part, no .validator left


def test_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match=r"Cannot download .*/missing.pth: HTTP 404"):
        download(server.url("/missing.pth"), str(tmp_path), progress=False)
    assert not [f for f in _cache_listing(tmp_path) if not f.endswith(".lock")]


def test_html_page_is_refused(server, tmp_path):
    server.files["/file/d/xyz/view"] = (b"<!DOCTYPE html><html>sign in</html>", "text/html; charset=utf-8")
    with pytest.raises(DownloadError, match="HTML page, not a checkpoint.*local path"):
        download(server.url("/file/d/xyz/view"), str(tmp_path), progress=False)
    assert not [f for f in _cache_listing(tmp_path) if not f.endswith((".lock", ".part"))]


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ADET_CACHE", str(tmp_path / "env_cache"))
    assert default_cache_dir() == str(tmp_path / "env_cache")
    assert cache_path("https://huggingface.co/u/r/resolve/main/m.pth?download=true") == str(
        tmp_path / "env_cache" / "huggingface.co" / "u" / "r" / "resolve" / "main" / "m.pth")
    assert cache_path("https://x.org/m.pth", str(tmp_path / "arg")) == str(tmp_path / "arg" / "x.org" / "m.pth")
    monkeypatch.delenv("ADET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "adet" / "checkpoints")


def test_detectron2_urls_map_to_detectron2_host(monkeypatch, tmp_path):
    path = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    url = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    assert detectron2_url(path) == url
    fetched = []
    monkeypatch.setattr(download_module, "download", lambda u, c, **kw: fetched.append((u, c)) or "local")
    assert resolve_path(path, str(tmp_path)) == "local"  # nothing is downloaded here
    assert resolve_path("catalog://ImageNetPretrained/MSRA/R-50", str(tmp_path)) == "local"
    # Detectron2's ModelCatalog names the older Detectron (Caffe2) files
    assert fetched == [(url, str(tmp_path)),
                       ("https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl", str(tmp_path))]
    assert cache_path(url, str(tmp_path)).endswith(os.path.join("ImageNetPretrained", "MSRA", "R-50.pkl"))


def test_local_paths(tmp_path):
    f = tmp_path / "m.pth"
    f.write_bytes(b"abc")
    assert resolve_path(str(f)) == str(f) and resolve_path(f"file://{f}") == str(f)
    with pytest.raises(ChecksumError):
        resolve_path(str(f), sha256="0" * 64)
    assert f.exists()  # a user's own file is never deleted
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        resolve_path(str(tmp_path / "nothere.pth"))


def test_checkpointer_loads_from_url(server, tmp_path):
    source = _small_model()
    server.files["/m.pth"] = (_checkpoint_bytes(source, iteration=7), "application/octet-stream")
    target = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 4))
    extra = AdetCheckpointer(target, cache_dir=str(tmp_path), progress=False).load(server.url("/m.pth"))
    assert extra == {"iteration": 7}
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    AdetCheckpointer(target, cache_dir=str(tmp_path)).load(server.url("/m.pth"))
    assert len(server.requests) == 1


# ------------------------------------------------------------------------- safe loading

RAN = []


def _record_call():
    RAN.append("code from the checkpoint ran")
    return {}


class _Payload:
    def __reduce__(self):
        return (_record_call, ())


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "extra": _Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="allow_unsafe=True.*ADET_ALLOW_UNSAFE_PICKLE=1"):
        load_torch_file(str(path))
    with pytest.raises(UnsafeCheckpointError):
        AdetCheckpointer(torch.nn.Linear(1, 2)).load(str(path))
    assert RAN == []
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"blobs": _Payload()}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="_record_call"):
        load_pickle_file(str(pkl))
    with pytest.raises(UnsafeCheckpointError):
        AdetCheckpointer(torch.nn.Linear(1, 2)).load(str(pkl))
    assert RAN == []


def test_unsafe_loading_when_allowed(tmp_path, monkeypatch):
    path = tmp_path / "legacy.pth"
    torch.save({"model": {"w": torch.ones(2)}, "meta": collections.defaultdict(list)}, path)
    with pytest.raises(UnsafeCheckpointError, match="defaultdict"):
        load_torch_file(str(path))
    assert isinstance(load_torch_file(str(path), allow_unsafe=True)["meta"], collections.defaultdict)
    monkeypatch.setenv("ADET_ALLOW_UNSAFE_PICKLE", "1")
    assert isinstance(load_torch_file(str(path))["meta"], collections.defaultdict)
    model = torch.nn.Module()
    model.register_buffer("w", torch.zeros(2))
    AdetCheckpointer(model).load(str(path))
    assert torch.equal(model.w, torch.ones(2))


def test_data_only_files_load_safely(tmp_path):
    path = tmp_path / "numpy_scalars.pth"
    torch.save({"model": {"w": torch.ones(2)}, "iteration": np.int64(9), "lr": np.float32(0.1),
                "arr": np.arange(3)}, path)
    loaded = load_torch_file(str(path))
    assert loaded["iteration"] == 9 and np.array_equal(loaded["arr"], np.arange(3))
    pkl = tmp_path / "R-18.pkl"  # a Detectron2 model-zoo style pickle: arrays by name
    pkl.write_bytes(pickle.dumps({"model": {"w": np.ones((2, 2), np.float32)}, "__author__": "test"}, protocol=2))
    assert load_pickle_file(str(pkl))["model"]["w"].shape == (2, 2)
    model = torch.nn.Module()
    model.register_buffer("w", torch.zeros(2, 2))
    AdetCheckpointer(model).load(str(pkl))
    assert torch.equal(model.w, torch.ones(2, 2))


def test_truncated_download_target_is_a_load_error(tmp_path):
    path = tmp_path / "cut.pth"
    path.write_bytes(_checkpoint_bytes()[:500])
    with pytest.raises(CheckpointLoadError, match="truncated"):
        AdetCheckpointer(_small_model()).load(str(path))
