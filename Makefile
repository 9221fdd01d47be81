# Two commands on a fresh machine: `make setup`, then `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-ddp test-cuda build-ops bench clean

setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.lock
	# --align: MTCNN weights ship in this wheel; its metadata pins an old torch, so no deps.
	$(BIN)/python -m pip install --no-deps facenet-pytorch==2.6.0
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e .

test:
	$(BIN)/python -m pytest -q

test-ddp:
	$(BIN)/python -m pytest -q -m ddp -p no:cacheprovider

test-cuda:
	$(BIN)/python -m pytest -q -m cuda

build-ops:
	$(BIN)/python -m stylegan2.ops build

bench:
	$(BIN)/python -m bench --preset cpu-small

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# On a machine with a GPU: build the ops, run test-cuda and the GPU benchmarks (< 8 min on one H100);
# writes bench/results/gpu_check.json and .md, partial if interrupted.
.PHONY: gpu-check
gpu-check:
	$(BIN)/python bench/gpu_check.py
