"""The documented commands, run as README.md and docs/*.md write them (their exact flags).

Every `python -m rest_jax.main ...` line of their shell blocks is parsed with
--dry_run (or run, for `data`) by `rest_jax.main.main` on the line's argv, in this
process (one start-up of TF and JAX instead of one per line); lines that need a user's
own files (`$T5X`, `my_configs/`, a copied `my_corpus.gin`, a grown dataset at
`/path/...`) are left out. The single-step commands then run for real as subprocesses
(`python -m rest_jax.main`), in order, at small sizes: train -> grow -> improve -> eval
-> infer, with only size bindings and directories added to the README's flags.
"""

import contextlib
import glob
import io
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Lines that need a user's own files: t5x's checkout, their configs, their data.
PLACEHOLDERS = ("$T5X", "my_configs/", "my_corpus.gin")


def documented_files():
  """README.md, then the docs/ pages it links to, in name order."""
  return [os.path.join(ROOT, "README.md"),
          *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def readme_commands():
  """[(line, argv after `python -m rest_jax.main`)] of README.md's and docs/*.md's shell
  blocks, in that order."""
  text = ""
  for path in documented_files():
    with open(path) as f:
      text += f.read() + "\n"
  out = []
  for block in re.findall(r"```sh\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split("  #")[0].strip()
      if line.startswith("python -m rest_jax.main"):
        out.append((line, shlex.split(line)[3:]))
  return out


def user_environment():
  """A user's shell: none of the suite's XLA_FLAGS (its 8 simulated devices) or caches."""
  return {k: v for k, v in os.environ.items()
          if k not in ("XLA_FLAGS", "JAX_PLATFORMS", "JAX_COMPILATION_CACHE_DIR")}


def _run(argv, tmp_path, timeout=600):
  env = user_environment()
  return subprocess.run([sys.executable, "-m", "rest_jax.main", *argv], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_every_readme_command_parses_as_written(monkeypatch):
  import gin  # pylint: disable=g-import-not-at-top

  from rest_jax import main  # pylint: disable=g-import-not-at-top

  commands = [(line, argv) for line, argv in readme_commands()
              if not any(p in line for p in PLACEHOLDERS)
              and not (argv[0] == "data" and "/path/" in line)]  # data runs for real
  names = {argv[0] for _, argv in commands}
  assert {"rest", "train", "vocab", "data", "grow", "improve", "eval", "infer", "plan",
          "policy_ratings", "reward_model"} <= names
  monkeypatch.chdir(ROOT)
  failed = []
  for line, argv in commands:
    gin.clear_config()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      try:
        code = main.main(argv if argv[0] == "data" else [*argv, "--dry_run"])
      except SystemExit as e:
        code = e.code
    if code != 0:
      failed.append(f"{line}\n  -> {err.getvalue().strip()[-500:]}")
  gin.clear_config()
  assert not failed, "\n".join(failed)


def _readme_line(command):
  """The first documented line of `command` that needs none of a user's own files."""
  return next(argv for line, argv in readme_commands()
              if argv[0] == command and not any(p in line for p in PLACEHOLDERS))


def _replace(argv, **values):
  """The README's argv with some --gin.KEY values replaced (the rest exactly as written)."""
  out = []
  for arg in argv:
    key = arg[len("--gin."):].split("=")[0] if arg.startswith("--gin.") else None
    out.append(f"--gin.{key}={values.pop(key)}" if key in values else arg)
  return out + [f"--gin.{k}={v}" for k, v in values.items()]


@pytest.mark.slow
def test_single_step_commands_run_as_the_readme_writes_them(tmp_path):
  small = {"BATCH_SIZE": "8", "EVAL_MAX_EXAMPLES": "8", "GROW_MAX_SOURCES": "16",
           "NUM_SAMPLES": "2", "BEST_OF_N": "2", "GROW_BATCH_SIZE": "8",
           "tasks.demo_corpus_sizes.train_size": "400",
           "tasks.demo_corpus_sizes.validation_size": "16",
           "tasks.demo_corpus_sizes.test_size": "16",
           # chrF: the demo's learned reward needs `make demo-reward` first.
           "REWARD": "@rewards.get()"}
  policy = tmp_path / "policy"
  train = _replace(_readme_line("train"), MODEL_DIR=f"'{policy}'", TRAIN_STEPS="4",
                   EVAL_PERIOD="4", CHECKPOINT_PERIOD="4", BATCH_SIZE="8",
                   **{"tasks.demo_corpus_sizes.train_size": "400",
                      "tasks.demo_corpus_sizes.validation_size": "16",
                      "tasks.demo_corpus_sizes.test_size": "16"})
  proc = _run(train, ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  grow = tmp_path / "grow"
  improve = tmp_path / "improve"
  (tmp_path / "in.txt").write_text("The old man laughs.\nA small dog sees the teacher.\n")
  steps = [
      ("grow", dict(POLICY_DIR=f"'{policy}'", OUTPUT_DIR=f"'{grow}'")),
      ("improve", dict(POLICY_DIR=f"'{policy}'", GROWN_DIR=f"'{grow}'", THRESHOLD="0.0",
                       OUTPUT_DIR=f"'{improve}'", IMPROVE_STEPS="2")),
      ("eval", dict(POLICY_DIR=f"'{improve}'")),
      ("infer", dict(POLICY_DIR=f"'{improve}'", INPUT_FILE=f"'{tmp_path / 'in.txt'}'",
                     OUTPUT_FILE=f"'{tmp_path / 'out.txt'}'")),
  ]
  for command, values in steps:
    proc = _run(_replace(_readme_line(command), **values, **small), ROOT)
    assert proc.returncode == 0, f"{command}: {proc.stderr[-3000:]}"
  assert (grow / "manifest.json").exists()
  assert len((tmp_path / "out.txt").read_text().splitlines()) == 2


def test_readme_plan_line_runs_in_a_users_shell(tmp_path):
  """The README's `plan ... --mesh=4x2` in a shell without XLA_FLAGS: plan simulates the
  8 devices itself. Only the model is shrunk (T5.1.1 base takes minutes to compile) and the
  vocabulary pointed at a file that exists."""
  small = {"VOCAB_FILE": "'tests/fixtures/metricx/spiece.model'",
           "network.T5Config.num_encoder_layers": "1", "network.T5Config.num_decoder_layers": "1",
           "network.T5Config.emb_dim": "32", "network.T5Config.mlp_dim": "64",
           "network.T5Config.num_heads": "2", "network.T5Config.head_dim": "16",
           "NUM_EMBEDDINGS": "512", "TASK_FEATURE_LENGTHS": "{'inputs': 8, 'targets': 8}",
           "BATCH_SIZE": "8", "GROW_BATCH_SIZE": "8"}
  argv = _replace(_readme_line("plan"), **small)
  assert "--mesh=4x2" in argv
  assert "XLA_FLAGS" not in user_environment()
  proc = _run(argv, ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "collectives in train_step" in proc.stdout
  assert "all-reduce" in proc.stdout  # 4-way data parallelism sums gradients
