"""Report the environment adet runs in: ``python -m adet.env`` (``--json`` for a dict).

Everything is feature-detected (which distribution provides a module, which attributes a
compiled module has); versions are only reported, never compared.
"""
import argparse
import importlib
import json
import os
import platform
import sys
import warnings

__all__ = ["collect_env", "format_env", "main"]

# Distribution names that can provide the `detectron2` package.
D2_UPSTREAM_DIST = "detectron2"  # built from the git repository, or Facebook's wheels
D2_SDIST_DIST = "pb1-detectron2"  # PyPI sdist built by tools/install_detectron2.sh
# Attributes that only the real detectron2._C has (the placeholder has none of them).
D2_REAL_OPS = ("nms_rotated", "deform_conv_forward", "ROIAlignRotated_forward")


def _metadata():
    try:
        import importlib.metadata as md
    except ImportError:  # pragma: no cover  (python < 3.8)
        return None
    return md


def _dist_version(name):
    md = _metadata()
    try:
        return md.version(name) if md else None
    except Exception:
        return None


def _module_dists(top_level):
    """Names of the installed distributions that provide the top-level package."""
    md = _metadata()
    if md is None:
        return []
    if hasattr(md, "packages_distributions"):  # python >= 3.10
        try:
            return list(dict.fromkeys(md.packages_distributions().get(top_level, [])))
        except Exception:
            pass
    found = []
    for name in (D2_UPSTREAM_DIST, D2_SDIST_DIST):
        try:
            top = md.distribution(name).read_text("top_level.txt") or ""
        except Exception:
            continue
        if top_level in top.split():
            found.append(name)
    return found


def _torch_info():
    info = {"torch": None, "torch_path": None, "torch_cuda_build": None, "cuda_available": False, "gpus": []}
    try:
        import torch
    except ImportError:
        return info
    info["torch"] = torch.__version__
    info["torch_path"] = os.path.dirname(torch.__file__)
    info["torch_cuda_build"] = getattr(torch.version, "cuda", None)
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    return info


def _torchvision_info():
    info = {"torchvision": None, "torchvision_ops": False}
    try:
        import torch
        import torchvision
    except ImportError:
        return info
    info["torchvision"] = torchvision.__version__
    try:  # the compiled ops (nms, roi_align, deform_conv2d) registered by torchvision
        info["torchvision_ops"] = hasattr(torch.ops.torchvision, "nms")
    except Exception:
        info["torchvision_ops"] = False
    return info


def _detectron2_info():
    info = {
        "detectron2": None,
        "detectron2_path": None,
        "detectron2_dist": None,
        "detectron2_source": "not installed",
        "detectron2_C": "missing",
        "detectron2_C_cuda": False,
    }
    try:
        import detectron2
    except ImportError:
        return info
    info["detectron2"] = getattr(detectron2, "__version__", None)
    info["detectron2_path"] = os.path.dirname(os.path.abspath(detectron2.__file__))

    dists = _module_dists("detectron2")
    if D2_SDIST_DIST in dists:
        info["detectron2_dist"] = D2_SDIST_DIST
        info["detectron2_source"] = "pb1-detectron2"
    elif D2_UPSTREAM_DIST in dists:
        info["detectron2_dist"] = D2_UPSTREAM_DIST
        info["detectron2_source"] = "upstream"
    else:
        info["detectron2_dist"] = dists[0] if dists else None
        info["detectron2_source"] = "unknown"

    try:
        import torch  # noqa: F401  (detectron2._C links against libtorch)

        d2_c = importlib.import_module("detectron2._C")
    except ImportError:
        return info
    real = any(hasattr(d2_c, name) for name in D2_REAL_OPS)
    info["detectron2_C"] = "real" if real else "placeholder"
    try:
        info["detectron2_C_cuda"] = bool(real and d2_c.has_cuda())
    except Exception:
        pass
    return info


def _adet_info():
    info = {"adet": None, "adet_path": None, "adet_C": False, "adet_C_cuda": False, "adet_ops": {}}
    try:
        import adet
    except ImportError:
        return info
    info["adet"] = getattr(adet, "__version__", None) or _dist_version("adet")
    info["adet_path"] = os.path.dirname(os.path.abspath(adet.__file__))
    from adet.layers._ext import load_ext

    ext = load_ext()
    if ext is None:
        return info
    info["adet_C"] = True
    info["adet_C_cuda"] = bool(ext.compiled_with_cuda())
    if hasattr(ext, "op_backends"):
        info["adet_ops"] = {name: list(backends) for name, backends in sorted(ext.op_backends().items())}
    else:
        info["adet_ops"] = {name: [] for name in ext.available_ops()}
    return info


def _other_info():
    info = {}
    for mod in ("numpy", "pycocotools", "faster_coco_eval", "cv2", "fvcore"):
        try:
            m = importlib.import_module(mod)
            info[mod] = getattr(m, "__version__", "installed")
        except Exception:
            info[mod] = None
    return info


def collect_env():
    """The environment as a flat dict (JSON-serializable)."""
    with warnings.catch_warnings():  # import-time deprecation noise of dependencies
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return _collect_env()


def _collect_env():
    env = {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
    }
    env.update(_torch_info())
    env.update(_torchvision_info())
    env.update(_detectron2_info())
    env.update(_adet_info())
    env["packages"] = _other_info()
    return env


_D2_SOURCE_TEXT = {
    "pb1-detectron2": "pb1-detectron2 sdist build (registry-only machines)",
    "upstream": "upstream (detectron2 distribution)",
    "unknown": "unknown (no detectron2 distribution metadata)",
    "not installed": "not installed",
}
_D2_C_TEXT = {
    "real": "real compiled ops",
    "placeholder": "placeholder (no detectron2 kernels; adet uses its own or torchvision's ops)",
    "missing": "missing",
}


def format_env(env=None):
    """Human-readable table of :func:`collect_env`."""
    env = collect_env() if env is None else env

    def yes(flag):
        return "yes" if flag else "no"

    cuda = yes(env["cuda_available"])
    if env["gpus"]:
        cuda += " (" + ", ".join(env["gpus"]) + ")"
    if env["adet_C"]:
        ops = env["adet_ops"]
        ops_text = ", ".join(f"{n} [{'/'.join(b) or '?'}]" for n, b in ops.items()) if ops else "none compiled in"
        adet_c = "built, with CUDA" if env["adet_C_cuda"] else "built, CPU only"
    else:
        adet_c, ops_text = "not built (pure-PyTorch ops)", "none"
    d2_c = _D2_C_TEXT.get(env["detectron2_C"], env["detectron2_C"])
    if env["detectron2_C"] == "real":
        d2_c += ", with CUDA" if env["detectron2_C_cuda"] else ", CPU only"
    rows = [
        ("Python", f"{env['python']} ({env['python_executable']})"),
        ("Platform", env["platform"]),
        ("PyTorch", f"{env['torch']} @ {env['torch_path']}" if env["torch"] else "not installed"),
        ("PyTorch CUDA build", env["torch_cuda_build"] or "none (CPU build)"),
        ("CUDA available", cuda),
        ("torchvision", env["torchvision"] or "not installed"),
        ("torchvision ops", yes(env["torchvision_ops"])),
        ("Detectron2", f"{env['detectron2']} @ {env['detectron2_path']}" if env["detectron2_path"] else "not installed"),
        ("Detectron2 source", _D2_SOURCE_TEXT.get(env["detectron2_source"], env["detectron2_source"])),
        ("detectron2._C", d2_c),
        ("adet", f"{env['adet']} @ {env['adet_path']}" if env["adet_path"] else "not installed"),
        ("adet._C", adet_c),
        ("adet compiled ops", ops_text),
    ]
    rows += [(name, version or "not installed") for name, version in env["packages"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m adet.env", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print collect_env() as JSON")
    args = parser.parse_args(argv)
    env = collect_env()
    print(json.dumps(env, indent=2, sort_keys=True) if args.json else format_env(env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
