"""Environment report (adet.env) and the loader of the optional extension (adet.layers._ext)."""
import json
import os
import subprocess
import sys
import types

import pytest

from adet import env as adet_env
from adet.layers import _ext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED_KEYS = {
    "python", "platform", "torch", "torch_cuda_build", "cuda_available", "gpus",
    "torchvision", "torchvision_ops", "detectron2", "detectron2_path", "detectron2_dist",
    "detectron2_source", "detectron2_C", "adet", "adet_path", "adet_C", "adet_C_cuda",
    "adet_ops", "packages",
}


@pytest.fixture
def fresh_ext(monkeypatch):
    """Forget the cached extension before and after the test."""
    monkeypatch.delenv("ADET_DISABLE_EXT", raising=False)
    _ext.load_ext.cache_clear()
    yield _ext
    _ext.load_ext.cache_clear()


def _fake_ext(ops=(), cuda=False):
    mod = types.ModuleType("adet._C")
    mod.available_ops = lambda: sorted(ops)
    mod.compiled_with_cuda = lambda: cuda
    mod.op_backends = lambda: {name: ["cpu"] + (["cuda"] if cuda else []) for name in sorted(ops)}
    return mod


def test_collect_env_fields():
    env = adet_env.collect_env()
    assert EXPECTED_KEYS <= set(env)
    json.dumps(env)  # plain data only
    import adet
    import torch

    assert env["torch"] == torch.__version__
    assert env["adet"] == adet.__version__
    assert isinstance(env["cuda_available"], bool)
    assert env["detectron2_source"] in ("pb1-detectron2", "upstream", "unknown")
    assert env["detectron2_C"] in ("real", "placeholder", "missing")
    assert env["adet_C"] == (_ext.load_ext() is not None)
    assert isinstance(env["adet_ops"], dict)


def test_detectron2_source_matches_distribution():
    import importlib.metadata as md

    env = adet_env.collect_env()
    if env["detectron2_source"] == "pb1-detectron2":
        assert md.version("pb1-detectron2")
    elif env["detectron2_source"] == "upstream":
        assert md.version("detectron2")


def test_detectron2_c_feature_detection(monkeypatch):
    import torch  # noqa: F401

    placeholder = types.ModuleType("detectron2._C")
    placeholder.has_cuda = lambda: False
    monkeypatch.setitem(sys.modules, "detectron2._C", placeholder)
    assert adet_env._detectron2_info()["detectron2_C"] == "placeholder"

    real = types.ModuleType("detectron2._C")
    real.nms_rotated = lambda *a: None
    real.has_cuda = lambda: True
    monkeypatch.setitem(sys.modules, "detectron2._C", real)
    info = adet_env._detectron2_info()
    assert info["detectron2_C"] == "real" and info["detectron2_C_cuda"] is True

    monkeypatch.setitem(sys.modules, "detectron2._C", None)  # import fails
    assert adet_env._detectron2_info()["detectron2_C"] == "missing"


def test_format_env_mentions_everything(monkeypatch, fresh_ext):
    monkeypatch.setitem(sys.modules, "adet._C", _fake_ext(ops=("deform_conv",), cuda=True))
    text = adet_env.format_env()
    for label in ("Python", "PyTorch", "torchvision", "CUDA available", "Detectron2 source",
                  "detectron2._C", "adet._C", "adet compiled ops"):
        assert label in text
    assert "built, with CUDA" in text
    assert "deform_conv [cpu/cuda]" in text


def test_python_m_adet_env_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "adet.env"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "Detectron2 source" in proc.stdout
    source = adet_env.collect_env()["detectron2_source"]
    assert adet_env._D2_SOURCE_TEXT[source] in proc.stdout


def test_main_json(capsys):
    assert adet_env.main(["--json"]) == 0
    assert EXPECTED_KEYS <= set(json.loads(capsys.readouterr().out))


def test_load_ext_present(monkeypatch, fresh_ext):
    fake = _fake_ext(ops=("deform_conv",))
    monkeypatch.setitem(sys.modules, "adet._C", fake)
    assert fresh_ext.load_ext() is fake
    assert fresh_ext.load_ext() is fake  # cached
    assert fresh_ext.has_op("deform_conv")
    assert not fresh_ext.has_op("no_such_op")
    assert fresh_ext.available_ops() == ["deform_conv"]
    assert fresh_ext.compiled_with_cuda() is False


def test_load_ext_absent(monkeypatch, fresh_ext):
    monkeypatch.setitem(sys.modules, "adet._C", None)  # makes `import adet._C` raise ImportError
    assert fresh_ext.load_ext() is None
    assert not fresh_ext.has_op("deform_conv")
    assert fresh_ext.available_ops() == []
    assert fresh_ext.compiled_with_cuda() is False
    env = adet_env.collect_env()
    assert env["adet_C"] is False and env["adet_ops"] == {}
    assert "not built" in adet_env.format_env(env)


def test_load_ext_disabled_by_env(monkeypatch, fresh_ext):
    monkeypatch.setitem(sys.modules, "adet._C", _fake_ext(ops=("deform_conv",)))
    monkeypatch.setenv("ADET_DISABLE_EXT", "1")
    assert fresh_ext.load_ext() is None
    assert not fresh_ext.has_op("deform_conv")


def test_real_extension_if_built(fresh_ext):
    """The built adet._C (when there) answers its API; CI builds it (ADET_EXT_REQUIRED=1)."""
    ext = fresh_ext.load_ext()
    if ext is None:
        if os.environ.get("ADET_EXT_REQUIRED") == "1":
            pytest.fail("ADET_EXT_REQUIRED=1 but adet._C does not import")
        pytest.skip("adet._C is not built")
    assert isinstance(ext.compiled_with_cuda(), bool)
    ops = ext.available_ops()
    assert ops == sorted(set(ops))
    assert set(ext.op_backends()) == set(ops)
    for backends in ext.op_backends().values():
        assert set(backends) <= {"cpu", "cuda"}
