#!/usr/bin/env bash
# Install Detectron2 into the active Python environment.
#
# Route 1 (upstream): if `detectron2` already imports (e.g. installed from its git
# repository by a user with internet), it is kept as is.
# Route 2 (registry-only machines): build the PyPI sdist `pb1-detectron2==0.6`, which is
# upstream v0.6's Python source without `detectron2/layers/csrc`. We add a placeholder
# `csrc/vision.cpp` (only the three version helpers that collect_env uses), move the
# model-zoo configs where setup.py packages them, and apply the small source fixes v0.6
# needs on NumPy 2, Pillow >= 10 and setuptools >= 81. adet never calls detectron2._C.
set -euo pipefail

PY=${PYTHON:-python}
SDIST_VERSION=0.6
SDIST_SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29

if "$PY" -c "import detectron2" 2>/dev/null; then
    echo "[install_detectron2] detectron2 already installed: $("$PY" -c 'import detectron2,os;print(os.path.dirname(detectron2.__file__))')"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# pip >= 24.1 refuses the sdist's metadata (a direct-URL extra, panopticapi @ URL), so
# download it with pip 24.0 run from its wheel: the environment's own pip is left alone.
download() { "$@" download -q --no-deps --no-build-isolation "pb1-detectron2==${SDIST_VERSION}" -d .; }
if ! download "$PY" -m pip 2>/dev/null; then
    echo "[install_detectron2] this pip refuses the sdist's metadata; downloading it with pip 24.0"
    "$PY" -m pip download -q --no-deps "pip==24.0" -d "$work/pip24"
    download "$PY" "$work/pip24/pip-24.0-py3-none-any.whl/pip"
fi
echo "${SDIST_SHA256}  pb1-detectron2-${SDIST_VERSION}.tar.gz" | sha256sum -c -
tar xzf "pb1-detectron2-${SDIST_VERSION}.tar.gz"
src="$work/pb1-detectron2-${SDIST_VERSION}"
cd "$src"

# (1) placeholder extension: only what detectron2.utils.collect_env / default_setup call.
mkdir -p detectron2/layers/csrc
cat > detectron2/layers/csrc/vision.cpp <<'CPP'
// Placeholder for Detectron2's compiled ops, which the PyPI sdist does not ship.
// pybind11 alone (not torch/extension.h): it compiles in seconds.
#include <pybind11/pybind11.h>
#include <string>
namespace {
std::string get_compiler_version() { return "placeholder (no detectron2 kernels)"; }
std::string get_cuda_version() { return "not built"; }
bool has_cuda() { return false; }
}  // namespace
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("get_compiler_version", &get_compiler_version);
  m.def("get_cuda_version", &get_cuda_version);
  m.def("has_cuda", &has_cuda);
}
CPP

# (2) model-zoo configs at the top level, where setup.py packages them from.
if [ -d detectron2/model_zoo/configs ] && [ ! -L detectron2/model_zoo/configs ]; then
    mv detectron2/model_zoo/configs configs
fi

# (3) source fixes for today's NumPy, Pillow and setuptools.
"$PY" - <<'PYFIX'
import pathlib, re
root = pathlib.Path("detectron2")
# Pillow >= 10 removed Image.LINEAR (read at import time).
p = root / "data/transforms/transform.py"
p.write_text(p.read_text().replace("Image.LINEAR", "Image.BILINEAR"))
# setuptools >= 81 removed pkg_resources: locate configs next to the module instead.
p = root / "model_zoo/model_zoo.py"
t = p.read_text().replace("import pkg_resources\n", "")
t = re.sub(r'pkg_resources\.resource_filename\(\s*"detectron2\.model_zoo",\s*os\.path\.join\("configs", config_path\)\s*\)',
           'os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)', t)
assert "pkg_resources" not in t
p.write_text(t)
# NumPy 2 removed the aliases np.bool / np.int / np.float / np.str.
alias = re.compile(r"\bnp\.(bool|int|float|str)\b(?!_)")
for f in root.rglob("*.py"):
    t = f.read_text()
    n = alias.sub(lambda m: {"bool": "bool", "int": "int", "float": "float", "str": "str"}[m.group(1)], t)
    if n != t:
        f.write_text(n)
PYFIX

# (4) drop the direct-URL extra (panopticapi @ https://...) that newer pips refuse.
sed -i '/panopticapi @ /d' setup.py

"$PY" -m pip install -q --no-build-isolation "$src"
echo "[install_detectron2] built detectron2 from pb1-detectron2==${SDIST_VERSION}"
