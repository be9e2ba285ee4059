# The two commands of the README. Each creates the virtual environment if it is
# missing, installs the project into it, and runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A handful of simulated devices lets the sharding tests build real meshes on CPU.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 TF_CPP_MIN_LOG_LEVEL=3

.PHONY: demo test lint bench clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m rest_jax.main rest \
	  --gin_file=configs/demo.gin --gin.MODEL_DIR="'runs/demo'"

lint: $(STAMP)
	$(BIN)/ruff check rest_jax tests benchmarks

test: lint
	$(TEST_ENV) $(BIN)/python -m pytest -n 2 -q tests

bench: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m benchmarks.decode
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m benchmarks.train
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m benchmarks.rewards

clean:
	rm -rf $(VENV) runs build *.egg-info
