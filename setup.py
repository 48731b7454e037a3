"""Build and install adet.

The pinned dependencies live in requirements.txt (tools/setup_env.sh installs them);
install_requires below only names what adet itself imports.

The extension adet._C is optional: every op has a pure-PyTorch path. It is built from
adet/layers/csrc/**/*.cpp, plus **/*.cu when CUDA is usable, whenever a C++ compiler is
found. Environment variables:
    ADET_NO_EXT=1         do not build adet._C
    ADET_EXT_REQUIRED=1   fail the install if adet._C does not build (CI, `make cuda-check`)
    FORCE_CUDA=1          build the CUDA sources even without a visible GPU
                          (needs CUDA_HOME / nvcc and a CUDA build of torch)
    TORCH_CUDA_ARCH_LIST  as for any PyTorch extension
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext as _setuptools_build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("adet", "layers", "csrc")


def _version():
    scope = {}
    with open(os.path.join(HERE, "adet", "__init__.py")) as f:
        for line in f:
            if line.startswith("__version__"):
                exec(line, scope)
    return scope.get("__version__", "0.0.0")


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _log(msg):
    print(f"[adet setup] {msg}", file=sys.stderr)


def _has_cxx_compiler():
    cxx = os.environ.get("CXX", "c++").split()[0]
    return any(shutil.which(c) for c in (cxx, "c++", "g++", "clang++"))


def _sources(pattern):
    # setuptools wants paths relative to setup.py
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, CSRC, "**", pattern), recursive=True))


def _find_cuda_home():
    """Set CUDA_HOME for torch when it is unset and `nvcc` on PATH is a wrapper or link.

    torch takes dirname(dirname(which nvcc)), which is wrong for e.g. /usr/local/bin/nvcc
    that execs /usr/local/cuda-X/bin/nvcc. Look for a folder holding the CUDA headers.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")) and os.path.isfile(
            os.path.join(home, "bin", "nvcc")
        ):
            os.environ["CUDA_HOME"] = home
            return


def _pip_cuda_include_dirs():
    """Header folders of the pip CUDA packages that torch depends on (nvidia/*/include).

    A minimal CUDA toolkit (nvcc and the runtime only) lacks e.g. cusparse.h, which
    ATen/cuda/CUDAContext.h includes; the nvidia-* wheels installed with torch have them.
    They are searched after the toolkit's own headers (-isystem).
    """
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for base in getattr(nvidia, "__path__", []):
        dirs += sorted(d for d in glob.glob(os.path.join(base, "*", "include")) if os.path.isdir(d))
    return dirs


def _skip(reason):
    if _flag("ADET_EXT_REQUIRED"):
        raise RuntimeError(f"ADET_EXT_REQUIRED=1 but adet._C cannot be built: {reason}")
    _log(f"{reason}: adet._C is not built")
    return [], None


def get_extensions():
    if _flag("ADET_NO_EXT"):
        _log("ADET_NO_EXT is set: adet._C is not built")
        return [], None
    _find_cuda_home()
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return _skip("torch is not importable at build time "
                     "(install torch first and use `pip install --no-build-isolation`)")
    if not _has_cxx_compiler():
        return _skip("no C++ compiler found")

    sources = _sources("*.cpp")
    if not sources:
        return [], None
    cuda_sources = _sources("*.cu")
    use_cuda = (
        cpp_extension.CUDA_HOME is not None
        and torch.version.cuda is not None
        and (torch.cuda.is_available() or _flag("FORCE_CUDA"))
    )
    if _flag("FORCE_CUDA") and not use_cuda:
        msg = "FORCE_CUDA=1 but CUDA_HOME/nvcc or a CUDA build of torch is missing"
        if _flag("ADET_EXT_REQUIRED"):
            raise RuntimeError(msg)
        _log(msg + ": building the CPU-only extension")

    # -O3: from -O3 on GCC vectorises loops whose trip count is known only at run time
    # (at -O2 its "very cheap" cost model leaves them scalar); the CPU blender relies on it.
    extra_compile_args = {"cxx": ["-O3"]}
    define_macros = []
    if use_cuda:
        extension = cpp_extension.CUDAExtension
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        system_includes = [arg for d in _pip_cuda_include_dirs() for arg in ("-isystem", d)]
        extra_compile_args["cxx"] += system_includes
        extra_compile_args["nvcc"] = system_includes + [
            "-O2",
            "-DCUDA_HAS_FP16=1",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
        ]
    else:
        extension = cpp_extension.CppExtension
    _log(f"building adet._C ({'CUDA' if use_cuda else 'CPU'}) from {len(sources)} source file(s)")
    ext = extension(
        "adet._C",
        sources,
        include_dirs=[os.path.join(HERE, CSRC)],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
    )
    return [ext], cpp_extension.BuildExtension


def make_build_ext(base):
    """build_ext that leaves the extension out, with a warning, when it fails to build."""
    base = base or _setuptools_build_ext

    class OptionalBuildExt(base):
        def run(self):
            try:
                super().run()
            except Exception as e:  # compiler errors surface as various exception types
                self._give_up(e)

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:
                self._give_up(e)

        def _give_up(self, err):
            if _flag("ADET_EXT_REQUIRED"):
                raise err
            _log(f"WARNING: adet._C failed to build ({type(err).__name__}: {err}); "
                 "installing without it (pure-PyTorch ops are used). "
                 "Set ADET_EXT_REQUIRED=1 to make this an error.")

    return OptionalBuildExt


ext_modules, build_ext_base = get_extensions()

setup(
    name="adet",
    version=_version(),
    description="Single-shot instance segmentation (FCOS, BlendMask, CondInst, SOLOv2, SparseInst) on Detectron2",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "configs.*", "tools", "tools.*")),
    python_requires=">=3.9",
    # torch, torchvision and Detectron2 are installed by tools/setup_env.sh (Detectron2 is
    # not on PyPI); pinned versions of everything are in requirements.txt.
    install_requires=["numpy", "pycocotools", "fvcore", "pyyaml"],
    ext_modules=ext_modules,
    cmdclass={"build_ext": make_build_ext(build_ext_base)},
    zip_safe=False,
)
