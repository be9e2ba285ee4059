"""The launch scripts' dry runs: what each would run on a TPU slice, a SLURM job, this machine."""

import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REST = ["rest", "--gin_file=configs/demo.gin", "--gin.MODEL_DIR='/shared/run'"]


def _run(script, *args, env=None, check=True):
  proc = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=ROOT,
                        env={**os.environ, **(env or {})}, capture_output=True, text=True,
                        timeout=60)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


@pytest.mark.parametrize("script", ["local_multiprocess.sh", "tpu_pod.sh", "gpu_slurm.sbatch"])
def test_scripts_parse(script):
  assert subprocess.run(["bash", "-n", os.path.join(ROOT, "launch", script)]).returncode == 0


def test_local_dry_run_starts_one_process_per_host():
  out = _run("local_multiprocess.sh", "--dry-run", "-n", "4", "--devices", "2", "--port", "4321",
             "--", *REST).stdout.splitlines()
  assert out[-1] == "wait" and len(out) == 5
  for i, line in enumerate(out[:4]):
    words = shlex.split(line.rstrip(" &"))
    assert words[:5] == ["JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=2",
                         "REST_JAX_COORDINATOR=127.0.0.1:4321", "REST_JAX_NUM_PROCESSES=4",
                         f"REST_JAX_PROCESS_ID={i}"]
    assert words[6:] == ["-m", "rest_jax.main", *REST, "--multihost"]


def test_local_rejects_a_missing_command():
  proc = _run("local_multiprocess.sh", "--dry-run", "-n", "2", check=False)
  assert proc.returncode == 2 and "no rest_jax command" in proc.stderr


def test_tpu_dry_run_creates_installs_and_runs_on_every_worker():
  out = _run("tpu_pod.sh", "--tpu=rest-v4", "--zone=us-central2-b", "--accelerator=v4-32",
             "--spot", "--log=runs/tpu.log", "--dry-run", "--", *REST).stdout.splitlines()
  commands = [shlex.split(line.split(" 2>&1 |")[0]) for line in out if not line.startswith("#")]
  create = commands[0]
  assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert {"rest-v4", "--zone=us-central2-b", "--accelerator-type=v4-32", "--spot"} <= set(create)
  assert commands[1][0] == "tar" and commands[2][4] == "scp" and "--worker=all" in commands[2]
  assert "pip install" in commands[3][-1] and "--worker=all" in commands[3]
  run = commands[4]
  assert run[4] == "ssh" and "--worker=all" in run and out[-1].endswith("| tee runs/tpu.log")
  remote = shlex.split(run[run.index("--command") + 1])
  assert remote[-len(REST) - 1:] == [*REST, "--multihost"]


def test_tpu_needs_a_name_and_zone():
  proc = _run("tpu_pod.sh", "--dry-run", "--", *REST, check=False)
  assert proc.returncode == 2 and "--tpu and --zone are required" in proc.stderr


@pytest.mark.parametrize("per_node,processes,tasks,gpus", [(False, 8, 4, 1), (True, 2, 1, 4)])
def test_slurm_dry_run_takes_the_coordinator_from_the_node_list(per_node, processes, tasks, gpus):
  env = {"SLURM_JOB_NODELIST": "gpu[03-04]", "SLURM_NNODES": "2",
         "SLURM_GPUS_PER_NODE": "a100:4", "PATH": "/usr/bin:/bin"}  # no scontrol here
  args = ["--dry-run", "--port=2345"] + (["--per_node"] if per_node else [])
  words = shlex.split(_run("gpu_slurm.sbatch", *args, "--", *REST, env=env).stdout)
  assert words[:5] == ["srun", "--nodes=2", f"--ntasks-per-node={tasks}",
                       f"--gpus-per-task={gpus}", "--kill-on-bad-exit=1"]
  task = words[-1]
  assert f"REST_JAX_COORDINATOR=gpu03:2345 REST_JAX_NUM_PROCESSES={processes}" in task
  assert "REST_JAX_PROCESS_ID=$SLURM_PROCID" in task
  assert shlex.split(task.split("exec ", 1)[1])[3:] == [*REST, "--multihost"]


def test_slurm_outside_a_job_says_so():
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  proc = subprocess.run(["bash", os.path.join(ROOT, "launch", "gpu_slurm.sbatch"), "--dry-run",
                         "--", *REST], env=env, capture_output=True, text=True)
  assert proc.returncode != 0 and "not inside a SLURM job" in proc.stderr
