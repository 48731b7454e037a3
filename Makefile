# adet: set up, test, train.  `make help` lists the targets.
#
# Every target that runs Python first runs tools/setup_env.sh, which creates $(VENV) when
# it is missing and reinstalls only when requirements.txt, setup.py, the install scripts
# or the compiled sources changed (fingerprint in $(VENV)/.adet-installed).

VENV         ?= .venv
PYTHON       ?= python3
PY           := $(VENV)/bin/python
TRAIN_CONFIG ?= configs/Synthetic/condinst.yaml
# output/<config folder>_<config name>, e.g. output/Synthetic_condinst
OUTPUT_DIR   ?= output/$(notdir $(patsubst %/,%,$(dir $(TRAIN_CONFIG))))_$(basename $(notdir $(TRAIN_CONFIG)))
TRAIN_ARGS   ?=
PYTEST_ARGS  ?=
TESTS        ?= tests
# CUDA architectures for `make cuda-check` (a compile check, not a build to run)
CUDA_CHECK_ARCH ?= 9.0

export VENV PYTHON

.PHONY: help setup test test-fast test-e2e train env cuda-check gpu-check clean distclean

help:
	@echo "make setup       create/update $(VENV) (tools/setup_env.sh)"
	@echo "make test        all tests, end-to-end ones included: pytest -q tests"
	@echo "make test-fast   tests not marked e2e or slow"
	@echo "make test-e2e    only the end-to-end tests"
	@echo "make train       train $(TRAIN_CONFIG) into $(OUTPUT_DIR)"
	@echo "make env         python -m adet.env"
	@echo "make cuda-check  compile the CUDA sources (FORCE_CUDA=1) in a temp dir"
	@echo "make gpu-check   on a GPU machine: build the CUDA kernels, GPU tests, latency (tools/gpu_check.sh)"
	@echo "make clean       build outputs, adet/_C*.so, caches (keeps $(VENV))"
	@echo "make distclean   clean, and remove $(VENV)"
	@echo "variables: VENV PYTHON TORCH_SPEC TRAIN_CONFIG OUTPUT_DIR TRAIN_ARGS TESTS PYTEST_ARGS CUDA_CHECK_ARCH GPU_CHECK_ARGS"

setup:
	@bash tools/setup_env.sh "$(VENV)"

test: setup
	$(PY) -m pytest -q $(TESTS) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q $(TESTS) -m "not e2e and not slow" $(PYTEST_ARGS)

test-e2e: setup
	$(PY) -m pytest -q $(TESTS) -m e2e $(PYTEST_ARGS)

train: setup
	$(PY) tools/train_net.py --config-file $(TRAIN_CONFIG) $(TRAIN_ARGS) OUTPUT_DIR $(OUTPUT_DIR)

env: setup
	@$(PY) -W ignore::FutureWarning -m adet.env

# Compiles adet._C with its CUDA sources into a temporary folder (the tree and the venv
# are left as they are), fails on any compile error, and checks that the module loads.
# Needs nvcc; no GPU.
cuda-check: setup
	@command -v nvcc >/dev/null || { echo "cuda-check: nvcc is not on PATH"; exit 1; }
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && start=$$(date +%s) && \
	FORCE_CUDA=1 ADET_EXT_REQUIRED=1 TORCH_CUDA_ARCH_LIST="$(CUDA_CHECK_ARCH)" \
	  $(PY) setup.py -q build_ext --build-temp "$$tmp/temp" --build-lib "$$tmp/lib" && \
	$(PY) -W ignore -c "import glob, importlib.util, sys, torch; \
	  path = glob.glob(sys.argv[1] + '/adet/_C*.so')[0]; \
	  spec = importlib.util.spec_from_file_location('adet._C', path); \
	  m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); \
	  assert m.compiled_with_cuda(), 'not built with CUDA'; \
	  print('cuda-check: ok, ops:', m.op_backends())" "$$tmp/lib" && \
	echo "cuda-check: $$(( $$(date +%s) - start ))s"

# On a GPU machine: CUDA build in place, the kernel tests on the GPU, the blender and
# per-method latency against Mask R-CNN; under 8 minutes. GPU_CHECK_ARGS=--dry-run checks
# the plan anywhere. It sets up its own Python (see tools/gpu_check.sh): no `setup` here.
gpu-check:
	@bash tools/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf build .pytest_cache adet.egg-info
	find adet tests tools -name '__pycache__' -type d -prune -exec rm -rf {} +
	find adet -name '_C*.so' -delete
	rm -f "$(VENV)/.adet-installed"  # the next setup rebuilds adet._C

distclean: clean
	rm -rf "$(VENV)"
