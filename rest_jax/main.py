r"""Command line: `python -m rest_jax.main <command> --gin_file=... --gin.KEY=VALUE`.

Commands:
  rest    the whole ReST loop (BC, Grow, Improve, evaluation, report): `rest_jax.rest.rest`.
  grow | improve | eval | infer   one ReST step on a policy checkpoint (gin/runs/steps.gin).
  train   behaviour cloning (the BC policy): `rest_jax.train.train` from gin.
  vocab   train a SentencePiece vocabulary on a seqio task's text.
  ratings        build a ratings file by corrupting a task's references (gin/runs/ratings.gin).
  demo_ratings   build the demo's ratings file from its generator (configs/demo_reward.gin).
  policy_ratings rate a Grow step's samples, to validate a reward model on them
                 (gin/runs/policy_ratings.gin).
  reward_model   train the learned reward model on a ratings file (gin/runs/reward_model.gin).
  plan    `plan --mesh=4x2`: each parameter's sharding, bytes per device (params, optimizer
          state, KV cache, temporaries) and the collectives of the compiled train and
          sample steps (rest_jax/plan.py); the mesh is simulated on the CPU if needed.
  convert `convert --t5x_checkpoint=DIR`: checks a t5x checkpoint's `target` tree against
          the configured model (names, shapes) and, with --output_dir, writes it as a
          rest_jax checkpoint (rest_jax/convert.py).
  data    `data show --task=T --split=S -n 5` prints examples; `data stats --task=T`
          (and/or `--grown_dir=D`) prints counts, length and reward percentiles.
  seeds   `seeds --runs DIR DIR ... [--runs DIR ...]`: per group of finished rest runs
          (seeds), ReST against its controls: every seed's row, mean and spread, a
          t-interval over seeds and a two-level bootstrap (seeds, then sentences) of ReST
          minus the best control, wins, and the reward's flaw accuracy beside the margin
          (rest_jax/seeds.py).

Flags (t5x's):
  --gin_file=PATH         repeatable; looked up as given, then in gin/ and configs/.
  --gin.KEY=VALUE         a gin binding, e.g. --gin.MODEL_DIR="'/tmp/run'".
  --gin_bindings=BINDING  repeatable, a raw gin binding.
  --gin_search_paths=DIR  repeatable; more folders for gin files (e.g. a t5x checkout).
  --dry_run               parse the config, print it, and exit.
  --verbose               a failure prints its traceback (also REST_JAX_VERBOSE=1), and
                          TensorFlow's, absl's and seqio's start-up messages are shown.
  --multihost             start jax.distributed first (one process per host); the
                          coordinator, process count and index come from
                          --coordinator_address / --num_processes / --process_id, else
                          REST_JAX_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID, else JAX's
                          own detection (Cloud TPU, SLURM).
"""

import argparse
import importlib
import logging as py_logging
import os
import sys
from typing import List, Sequence

from absl import logging
import gin

from rest_jax import files

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


_EXTRA_SEARCH_PATHS: List[str] = []


def gin_search_paths() -> List[str]:
  """Folders that gin files and their includes are looked up in.

  Includes name files from the project root (`include 'gin/runs/train.gin'`): a
  source checkout has `gin/` and `configs/` at the top, an installed package
  inside `rest_jax/`. `gin/` and `configs/` themselves are searched too, so
  `--gin_file=models/t5_1_1_base.gin` works as well.
  """
  paths = []
  for root in (os.path.dirname(_PACKAGE_DIR), _PACKAGE_DIR):
    if os.path.isdir(os.path.join(root, "gin")):
      paths += [root, os.path.join(root, "gin"), os.path.join(root, "configs")]
  paths.append(os.getcwd())
  return list(dict.fromkeys(paths + _EXTRA_SEARCH_PATHS))


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str],
              finalize: bool = True) -> None:
  """Parses gin files and bindings with the project's search paths.

  Unless `finalize`, `%gin.REQUIRED` bindings are left for `missing_required` to
  check against the command that runs.

  Raises:
    ValueError: an unknown gin file, or a binding gin rejects (the message names it).
  """
  # Task modules declare gin configurables (corpus sizes, local corpus paths,
  # vocabularies) read when data is loaded; they must exist before gin locks.
  import rest_jax.data.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  for path in gin_search_paths():
    gin.add_config_file_search_path(path)
  for name in gin_files:
    if not any(os.path.exists(os.path.join(p, name)) for p in gin_search_paths()):
      raise ValueError(f"gin file '{name}' not found in {gin_search_paths()}")
  gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)
  if finalize:
    gin.finalize()


def _bindings_of(scopes: Sequence[str], selector: str):
  """A configurable's bindings as gin applies them in `scopes` (outer scopes first)."""
  config = gin.config._CONFIG  # pylint: disable=protected-access
  out = {}
  for depth in range(len(scopes) + 1):
    out.update(config.get(("/".join(scopes[:depth]), selector), {}))
  return out


def missing_required(configurable) -> List[str]:
  """The `%gin.REQUIRED` bindings that calling `configurable` would reach, unbound.

  gin's own check (at finalisation) covers every REQUIRED binding of every file
  parsed, also those of another command (`convert` does not need `BC_STEPS`); this
  one follows only the references the command uses.
  """
  required = gin.REQUIRED
  missing, seen = [], set()

  def visit(scopes, selector):
    if (tuple(scopes), selector) in seen:
      return
    seen.add((tuple(scopes), selector))
    for name, value in _bindings_of(scopes, selector).items():
      for leaf in gin.config._iterate_flattened_values(value):  # pylint: disable=protected-access
        if not isinstance(leaf, gin.config.ConfigurableReference):
          continue
        target = leaf.configurable.selector
        if target == "gin.constant" and leaf.scoped_configurable_fn() is required:
          key = "/".join(scopes + [selector.rsplit(".", 1)[-1]]) + "." + name
          missing.append(scopes[-1] if selector == "gin.macro" else key)
        else:
          visit(list(leaf.scopes), target)

  name = f"{configurable.__module__}.{configurable.__name__}"
  match = gin.config._REGISTRY.get_match(name)  # pylint: disable=protected-access
  if match is not None:
    visit([], match.selector)
  return sorted(set(missing))


def finalize_gin() -> None:
  """gin's finalisation without its global REQUIRED check (`missing_required` does it)."""
  hooks = gin.config._FINALIZE_HOOKS  # pylint: disable=protected-access
  saved = list(hooks)
  hooks[:] = [h for h in hooks if h is not gin.config.find_missing_overrides_hook]
  try:
    gin.finalize()
  finally:
    hooks[:] = saved


def _split_args(argv: Sequence[str]):
  parser = argparse.ArgumentParser(prog="rest_jax.main", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("command", choices=sorted(COMMANDS) + ["data", "convert", "seeds"])
  parser.add_argument("action", nargs="?", choices=["show", "stats"])
  parser.add_argument("--task")
  parser.add_argument("--split", default="validation")
  parser.add_argument("-n", type=int, default=5)
  parser.add_argument("--grown_dir")
  parser.add_argument("--max_examples", type=int)
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--gin_bindings", action="append", default=[])
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="more folders for gin files and includes (e.g. a t5x checkout)")
  parser.add_argument("--dry_run", action="store_true")
  parser.add_argument("--verbose", action="store_true")
  parser.add_argument("--multihost", action="store_true")
  parser.add_argument("--coordinator_address", help="multihost: host:port of process 0")
  parser.add_argument("--num_processes", type=int, help="multihost: number of processes")
  parser.add_argument("--process_id", type=int, help="multihost: this process's index")
  parser.add_argument("--mesh", help="plan: DATAxMODEL, e.g. 4x2")
  parser.add_argument("--t5x_checkpoint", help="convert: a t5x checkpoint_<step> directory")
  parser.add_argument("--output_dir", help="convert: write the converted checkpoint here")
  parser.add_argument("--runs", nargs="+", action="append",
                      help="seeds: finished rest MODEL_DIRs (one group; repeat for another)")
  args, rest = parser.parse_known_args(argv)
  bindings = list(args.gin_bindings)
  for arg in rest:
    if not arg.startswith("--gin.") or "=" not in arg:
      parser.error(f"unrecognized argument {arg!r} (gin bindings are --gin.KEY=VALUE)")
    key, value = arg[len("--gin."):].split("=", 1)
    bindings.append(f"{key} = {value}")
  return args, bindings


def _write_config(model_dir: str | None) -> None:
  if not model_dir:
    return
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_index() == 0:
    files.makedirs(model_dir)
    files.atomic_write_text(files.join(model_dir, "config.gin"), gin.config_str())


def _macro(name: str):
  try:
    return gin.query_parameter(f"%{name}")
  except ValueError:
    return None


# command -> (module, gin-configured function, writes MODEL_DIR/config.gin)
COMMANDS = {
    "rest": ("rest_jax.rest", "rest", True),
    "grow": ("rest_jax.commands", "grow_command", False),
    "improve": ("rest_jax.commands", "improve_command", False),
    "eval": ("rest_jax.commands", "eval_command", False),
    "infer": ("rest_jax.commands", "infer_command", False),
    "train": ("rest_jax.train", "train", True),
    "plan": ("rest_jax.plan", "plan", False),
    "vocab": ("rest_jax.data.vocab_command", "build_vocabulary", False),
    "ratings": ("rest_jax.rewards.ratings", "build_ratings_file", False),
    "demo_ratings": ("rest_jax.rewards.ratings", "build_demo_ratings_file", False),
    "reward_model": ("rest_jax.rewards.learned", "train_reward_model", False),
    "policy_ratings": ("rest_jax.rewards.ratings", "build_policy_ratings_file", False),
}


# The run file that configures each command (an experiment config includes one).
RUN_FILES = {"rest": "gin/runs/rest.gin", "train": "gin/runs/train.gin",
             "grow": "gin/runs/steps.gin", "improve": "gin/runs/steps.gin",
             "eval": "gin/runs/steps.gin", "infer": "gin/runs/steps.gin",
             "plan": "gin/runs/rest.gin", "vocab": "gin/runs/vocab.gin",
             "ratings": "gin/runs/ratings.gin", "demo_ratings": "configs/demo_reward.gin",
             "reward_model": "gin/runs/reward_model.gin",
             "policy_ratings": "gin/runs/policy_ratings.gin"}


def _command_target(command: str):
  """The gin-configured function a command calls (None: data, which takes flags only)."""
  if command == "convert":
    from rest_jax import convert  # pylint: disable=g-import-not-at-top

    return convert.convert
  if command not in COMMANDS:
    return None
  module_name, function, _ = COMMANDS[command]
  return getattr(importlib.import_module(module_name), function)


def _configured_task():
  """MIXTURE_OR_TASK_NAME of the gin config, if any; a `parallel_corpus()` is registered."""
  value = _macro("MIXTURE_OR_TASK_NAME")
  if isinstance(value, gin.config.ConfigurableReference):
    value = value.scoped_configurable_fn() if value.evaluate else None
  return value if isinstance(value, str) else None


def _data_command(args) -> None:
  from rest_jax.data import inspect as data_inspect  # pylint: disable=g-import-not-at-top

  task = _configured_task() if args.gin_file else None
  task = args.task or task
  if args.action == "show":
    if not task:
      raise SystemExit("data show needs --task (or a --gin_file that sets MIXTURE_OR_TASK_NAME)")
    data_inspect.show(task, args.split, args.n, sys.stdout)
  elif args.action == "stats":
    if not (task or args.grown_dir):
      raise SystemExit("data stats needs --task and/or --grown_dir (or a --gin_file that sets"
                       " MIXTURE_OR_TASK_NAME)")
    data_inspect.stats(task, args.split, sys.stdout, args.grown_dir, args.max_examples)
  else:
    raise SystemExit("data needs an action: show or stats")


def _mesh_shape(mesh: str):
  try:
    data, model = (int(x) for x in mesh.lower().split("x"))
  except ValueError:
    raise SystemExit(f"--mesh={mesh}: expected DATAxMODEL, e.g. 4x2") from None
  return data, model


def _mesh_binding(mesh: str) -> str:
  """`--mesh=4x2` -> the MESH_SHAPE binding."""
  data, model = _mesh_shape(mesh)
  return f"MESH_SHAPE = ({data}, {model})"


def simulate_plan_mesh(argv: Sequence[str]) -> None:
  """`plan --mesh=DxM` on a machine without D x M accelerators: simulate them on the CPU.

  XLA reads its flags when the first backend starts, so this runs before anything
  touches a device (importing jax is fine). The plan is made on the CPU backend
  unless the user chose JAX_PLATFORMS (e.g. to plan on a slice they are on); an
  XLA_FLAGS that already forces a device count is replaced, so the plan's mesh is
  the one asked for.
  """
  args = list(argv)
  if not args or args[0] != "plan" or "JAX_PLATFORMS" in os.environ:
    return
  mesh = next((a.split("=", 1)[1] for a in args if a.startswith("--mesh=")), None)
  if mesh is None and "--mesh" in args[:-1]:
    mesh = args[args.index("--mesh") + 1]
  if mesh is None:
    return
  data, model = _mesh_shape(mesh)
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(
      flags + [f"--xla_force_host_platform_device_count={data * model}"])
  os.environ["JAX_PLATFORMS"] = "cpu"


def main(argv: Sequence[str]) -> int:
  args, bindings = _split_args(argv)
  from rest_jax import faults  # pylint: disable=g-import-not-at-top

  faults.check_environment()
  for path in args.gin_search_paths:
    _EXTRA_SEARCH_PATHS.extend(p for p in path.split(",") if p and p not in _EXTRA_SEARCH_PATHS)
  if args.mesh:
    if args.command != "plan":
      raise SystemExit("--mesh is for plan; other commands take --gin.MESH_SHAPE")
    bindings.append(_mesh_binding(args.mesh))
  logging.set_verbosity(logging.WARNING)  # orbax and seqio are chatty at INFO
  if args.multihost:
    from rest_jax import partitioning  # pylint: disable=g-import-not-at-top

    partitioning.initialize_multihost(args.coordinator_address, args.num_processes,
                                      args.process_id)
  if args.command == "seeds":
    from rest_jax import seeds  # pylint: disable=g-import-not-at-top

    if not args.runs:
      raise SystemExit("seeds needs --runs DIR [DIR ...] (finished rest runs)")
    if args.dry_run:  # parse and exit, as for every command
      print(f"seeds: {len(args.runs)} group(s): {args.runs}")
      return 0
    seeds.seeds_command(args.runs)
    return 0
  parse_gin(args.gin_file, bindings, finalize=False)
  target = _command_target(args.command)
  if target is not None:
    missing = missing_required(target)
    if missing:
      raise SystemExit(
          f"{args.command}: the config leaves {', '.join(missing)} as %gin.REQUIRED; bind"
          f" {'them' if len(missing) > 1 else 'it'} (e.g. --gin.{missing[0]}=...), in a gin"
          " file after the project's own (gin/runs/*.gin) or on the command line")
  finalize_gin()
  if args.command == "data":
    _data_command(args)
    return 0
  if args.command == "convert":
    from rest_jax import convert  # pylint: disable=g-import-not-at-top

    if not args.t5x_checkpoint:
      raise SystemExit("convert needs --t5x_checkpoint=DIR")
    try:
      report = gin.get_configurable(convert.convert)(t5x_checkpoint=args.t5x_checkpoint,
                                                     output_dir=args.output_dir)
    except convert.ConversionError as e:
      raise SystemExit(f"convert: {e}") from e
    print(report.format())
    return 0 if report.ok else 1
  module_name, function, writes_config = COMMANDS[args.command]
  try:
    configured = gin.get_configurable(getattr(importlib.import_module(module_name), function))
  except ValueError:
    raise SystemExit(f"{args.command}: no gin file configures {module_name}.{function}; include"
                     f" {RUN_FILES.get(args.command, 'its run file')} (directly or through an"
                     " experiment config)") from None
  if args.dry_run:
    print(gin.config_str())
    return 0
  if writes_config:
    _write_config(_macro("MODEL_DIR"))
  result = configured()
  if args.command == "train":
    _print_history(result)
  elif args.command not in ("rest", "plan"):
    print(result)
  return 0


def _print_history(history) -> None:
  if not history:
    return
  keys = [k for k in ("loss", "accuracy", "bleu", "chrf") if k in history[0]]
  print("\n" + " | ".join(["step"] + keys))
  for row in history:
    print(" | ".join([f"{row['step']}"] + [f"{row[k]:.4f}" for k in keys]))


# Bad input rather than a bug: a missing or malformed file, a bad binding or value, a
# checkpoint or grown dataset that cannot be used. Matched by name (importing the
# modules that define them would import JAX before it is needed).
USER_ERRORS = ("FileNotFoundError", "NotADirectoryError", "IsADirectoryError",
               "PermissionError", "ValueError", "NotFoundError", "GrownDatasetError",
               "CheckpointError", "RewardError", "ParseError", "SyntaxError")


def _is_user_error(error: BaseException) -> bool:
  return any(cls.__name__ in USER_ERRORS for cls in type(error).__mro__)


def _short_message(error: BaseException) -> str:
  """The error's own lines, without gin's "In call to configurable" / "In file" context."""
  if isinstance(error, SyntaxError) and error.text:  # a gin binding or file that does not parse
    where = f"{error.filename}, line {error.lineno}" if error.filename else "a gin binding"
    return f"{error.msg} ({where}): {error.text.strip()}"
  lines = [line for line in str(error).splitlines()
           if line.strip() and not line.lstrip().startswith(("In call to configurable",
                                                              "In file", "In bindings"))]
  return "\n".join(lines[:4]) or type(error).__name__


def verbose(argv: Sequence[str] = ()) -> bool:
  return "--verbose" in argv or os.environ.get("REST_JAX_VERBOSE", "") not in ("", "0")


class _StartupFilter(py_logging.Filter):
  """Drops seqio's advice to cache a task, printed for every local-file task."""

  def filter(self, record):
    return "uncached FunctionDataset" not in record.getMessage()


def _quiet_startup() -> None:
  """TensorFlow's and XLA's C++ start-up lines (CUDA probing, absl::InitializeLog) go to
  /dev/null while they are imported; Python errors still surface."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  logging.get_absl_logger().addFilter(_StartupFilter())
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as devnull:
      os.dup2(devnull.fileno(), 2)
      try:
        import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
        import jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
      finally:
        os.dup2(saved, 2)
  finally:
    os.close(saved)


def run() -> None:
  argv = sys.argv[1:]
  simulate_plan_mesh(argv)  # first: the allocator setting is off on a simulated mesh
  # Before TensorFlow or JAX start a thread: how XLA's CPU buffers are allocated.
  from rest_jax import host_memory  # pylint: disable=g-import-not-at-top

  host_memory.tune()
  if not verbose(argv):
    _quiet_startup()
  from rest_jax import preemption  # pylint: disable=g-import-not-at-top

  preemption.install()
  try:
    sys.exit(main(argv))
  except preemption.Preempted as e:
    print(f"{e} (exit code {preemption.EXIT_CODE})", file=sys.stderr)
    sys.exit(preemption.EXIT_CODE)
  except Exception as e:  # pylint: disable=broad-except
    if verbose(argv) or not _is_user_error(e):
      raise
    print(f"rest_jax: {_short_message(e)}\n(run with --verbose or REST_JAX_VERBOSE=1 for the"
          " traceback)", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  run()
