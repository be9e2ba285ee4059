# The two commands of the README. Each creates the virtual environment if it is
# missing, installs the project into it, and runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A handful of simulated devices lets the sharding tests build real meshes on CPU.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 TF_CPP_MIN_LOG_LEVEL=3
# t5x is not on the package index. Point T5X_WHEELS at a folder holding its wheels (t5x,
# airio, jestimator; .ci/run uses ../shared/wheels) and the test environment installs them,
# so that the `t5x` tests run against the real t5x; without it they are skipped.
T5X_WHEELS ?=
T5X_STAMP := $(VENV)/.t5x-installed
# t5x's own dependencies that the index has (the wheels are installed without theirs).
T5X_DEPS := cloudpickle portpicker grain fiddle cached-property jaxtyping chex

.PHONY: demo demo-reward demo-seeds demo-colour-seeds test lint bench clean

$(T5X_STAMP): $(STAMP) | $(BIN)/uv
	$(UV) --no-deps $(wildcard $(T5X_WHEELS)/t5x-*.whl) \
	  $(wildcard $(T5X_WHEELS)/airio-*.whl) $(wildcard $(T5X_WHEELS)/jestimator-*.whl)
	$(UV) $(T5X_DEPS)
	touch $@

# The environment is installed by uv, from the package index (uv reads no pip.conf or PIP_*
# settings: a mirror is UV_DEFAULT_INDEX), into the venv, whose own pip stays for the user: the
# same releases as pip, in 16-24 s from a fresh clone against pip's 71-81 s
# (docs/measurements.md).
UV = $(BIN)/uv pip install --quiet --python $(BIN)/python
$(BIN)/uv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv

$(STAMP): setup.py | $(BIN)/uv
	$(UV) -e '.[test,bench]'
	touch $(STAMP)

# The demo's reward model first (configs/demo_reward.gin, SEED 0), then ReST.
DEMO_RUN := TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m rest_jax.main
DEMO_SEEDS ?= 0 1 2 3 4
BLIND_SEEDS ?= 0 1 2
# One reward model per seed: its ratings draw, init and data order follow the run's seed.
reward_flags = --gin.SEED=$(1) --gin.RATINGS_FILE="'runs/demo_reward_seed$(1)/ratings.tsv'" \
  --gin.REWARD_MODEL_DIR="'runs/demo_reward_seed$(1)/model'"

demo-reward: $(STAMP)
	$(DEMO_RUN) demo_ratings --gin_file=configs/demo_reward.gin
	$(DEMO_RUN) reward_model --gin_file=configs/demo_reward.gin

demo: demo-reward
	$(DEMO_RUN) rest --gin_file=configs/demo.gin --gin.MODEL_DIR="'runs/demo'"

# The demo over DEMO_SEEDS (each: its own ratings and reward model, BC init, data order,
# sampling), then the same corpus with a reward that cannot see the flaw (BLIND_SEEDS), then
# the colour corpus (configs/demo_colour.gin) over the same seeds, then `seeds` over all three.
colour_flags = --gin.SEED=$(1) \
  --gin.RATINGS_FILE="'runs/demo_colour_reward_seed$(1)/ratings.tsv'" \
  --gin.REWARD_MODEL_DIR="'runs/demo_colour_reward_seed$(1)/model'"

demo-seeds: $(STAMP)
	for seed in $(DEMO_SEEDS); do \
	  $(DEMO_RUN) demo_ratings --gin_file=configs/demo_reward.gin $(call reward_flags,$$seed) && \
	  $(DEMO_RUN) reward_model --gin_file=configs/demo_reward.gin $(call reward_flags,$$seed) && \
	  $(DEMO_RUN) rest --gin_file=configs/demo.gin --gin.SEED=$$seed \
	    --gin.DEMO_REWARD_MODEL_DIR="'runs/demo_reward_seed$$seed/model'" \
	    --gin.MODEL_DIR="'runs/demo_seed$$seed'" || exit 1; done
	for seed in $(BLIND_SEEDS); do $(DEMO_RUN) rest --gin_file=configs/demo_blind.gin \
	  --gin.SEED=$$seed --gin.MODEL_DIR="'runs/demo_blind_seed$$seed'" || exit 1; done
	$(MAKE) demo-colour-seeds
	$(DEMO_RUN) seeds --runs $(foreach seed,$(DEMO_SEEDS),runs/demo_seed$(seed)) \
	  --runs $(foreach seed,$(BLIND_SEEDS),runs/demo_blind_seed$(seed)) \
	  --runs $(foreach seed,$(DEMO_SEEDS),runs/demo_colour_seed$(seed))

# The colour corpus alone over DEMO_SEEDS (N = 16, G = 2), each seed with its own reward.
demo-colour-seeds: $(STAMP)
	for seed in $(DEMO_SEEDS); do \
	  $(DEMO_RUN) demo_ratings --gin_file=configs/demo_colour_reward.gin $(call colour_flags,$$seed) && \
	  $(DEMO_RUN) reward_model --gin_file=configs/demo_colour_reward.gin $(call colour_flags,$$seed) && \
	  $(DEMO_RUN) rest --gin_file=configs/demo_colour.gin --gin.SEED=$$seed \
	    --gin.DEMO_REWARD_MODEL_DIR="'runs/demo_colour_reward_seed$$seed/model'" \
	    --gin.MODEL_DIR="'runs/demo_colour_seed$$seed'" || exit 1; done
	$(DEMO_RUN) seeds --runs $(foreach seed,$(DEMO_SEEDS),runs/demo_colour_seed$(seed))

lint: $(STAMP)
	$(BIN)/ruff check rest_jax tests benchmarks

# Three workers on 2 cores, each given whole test files (a module's fixture, e.g. the
# preemption reference run, is built once) in the order tests/conftest.py gives them: the
# longest files first. The tests wait on their subprocesses, checkpoint threads and input
# pipelines much of the time (with two workers: 41 min of user CPU in 34 min), so a third
# worker fills the gaps.
test: lint $(if $(T5X_WHEELS),$(T5X_STAMP))
	$(TEST_ENV) $(BIN)/python -m pytest -n 3 --dist loadfile --no-loadscope-reorder -q -rs --durations=20 tests

bench: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m benchmarks.decode
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m benchmarks.train
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m benchmarks.rewards

clean:
	rm -rf $(VENV) runs build *.egg-info
