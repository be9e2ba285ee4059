"""Every file rest_jax writes or reads under MODEL_DIR goes through here (etils.epath).

So `MODEL_DIR` can be anywhere t5x can write: a local or shared POSIX file system,
or an object store (`gs://`, `s3://`, ...), for checkpoints (orbax takes the same
paths), grown datasets, state files and reports.

A reader (or a re-run after a kill) must see all of a file or none of it:

- on a POSIX file system a file is written under a temporary name beside its final
  one, synced, and renamed into place (rename is atomic there);
- on an object store rename is a copy and a delete, not atomic, but an object
  appears only once its upload is complete: every file is written once, directly
  under its final name, and a collection of files is committed by the one written
  last (a grown dataset's manifest).

TensorFlow writes and reads two kinds of file itself: a grown dataset's TFRecord
shards and TensorBoard summaries. Its own file systems serve local paths and
`gs://` (TF 2.x has no s3/az/hf file system, and its GCS client cannot be pointed
at another endpoint). Where etils.epath reaches an object store another way (gcsfs
or s3fs: `EPATH_USE_TF=false`, or a scheme TF lacks), a shard is written to a local
file and uploaded whole through epath, read back from a local copy, and summaries
go to the log only (`tensorflow_reaches`).
"""

import atexit
import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
import uuid
from typing import Iterator, Optional, Union

from absl import logging
from etils import epath

from rest_jax import faults

TMP_PREFIX = ".tmp-"
PathLike = Union[str, os.PathLike]

# Schemes whose files appear whole or not at all and cannot be renamed atomically.
OBJECT_STORE_SCHEMES = ("gs://", "s3://", "az://", "hf://")
_EXTRA_OBJECT_STORES = []  # e.g. a test's emulated store (`register_object_store`)


def path(p: PathLike) -> epath.Path:
  return p if isinstance(p, epath.Path) else epath.Path(p)


def register_object_store(prefix: str) -> None:
  """Treats paths starting with `prefix` as an object store (write once, no rename)."""
  if prefix not in _EXTRA_OBJECT_STORES:
    _EXTRA_OBJECT_STORES.append(prefix)


def is_object_store(p: PathLike) -> bool:
  text = os.fspath(p)
  return text.startswith(OBJECT_STORE_SCHEMES + tuple(_EXTRA_OBJECT_STORES))


def tensorflow_reaches(p: PathLike) -> bool:
  """Whether TensorFlow's own file system serves `p` the way etils.epath does.

  A local path; or `gs://` while epath uses TensorFlow for it (epath's default
  where TensorFlow is installed; `EPATH_USE_TF=false` makes it use gcsfs).
  """
  text = os.fspath(p)
  if not is_object_store(text):
    return True
  return text.startswith("gs://") and os.environ.get("EPATH_USE_TF", "").lower() not in (
      "false", "no", "f", "0")


@contextlib.contextmanager
def written_by_tensorflow(target: PathLike) -> Iterator[str]:
  """Yields a path TensorFlow can write for `target`; on success `target` holds it.

  `target` itself where TensorFlow reaches it; otherwise a local file uploaded to
  `target` in one piece through epath after the block (removed either way).
  """
  target = os.fspath(target)
  if tensorflow_reaches(target):
    yield target
    return
  fd, local = tempfile.mkstemp(prefix=temporary_prefix(target))
  os.close(fd)
  try:
    yield local
    with open(local, "rb") as src, path(target).open("wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 22)
  finally:
    os.remove(local)


def readable_by_tensorflow(p: PathLike) -> str:
  """`p`, or a local copy of it where TensorFlow cannot reach `p` (see above).

  Copies are made once per process and file (a grown shard never changes once
  written; its size is part of the key) and deleted when the process exits.
  """
  text = os.fspath(p)
  if tensorflow_reaches(text):
    return text
  key = hashlib.sha256(f"{text}\0{size(text)}".encode()).hexdigest()[:16]
  local = os.path.join(_local_copies(), f"{key}-{os.path.basename(text)}")
  if not os.path.exists(local):
    with path(text).open("rb") as src, committed(local) as tmp, open(tmp, "wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 22)
  return local


@functools.lru_cache(maxsize=1)
def _local_copies() -> str:
  directory = tempfile.mkdtemp(prefix="rest_jax-copies-")
  atexit.register(shutil.rmtree, directory, ignore_errors=True)
  return directory


def summary_writer(logdir: PathLike, is_chief: bool = True):
  """clu's default metric writer for `logdir`: TensorBoard files and the log.

  TensorBoard's files are written by TensorFlow: where it cannot reach `logdir`
  (see above), the metrics go to the log only, and the log says so once.
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  logdir = os.fspath(logdir)
  reachable = tensorflow_reaches(logdir)
  if is_chief and not reachable:
    logging.warning("TensorFlow cannot write %s (its file systems serve local paths and gs://"
                    " through its own client only): metrics go to the log, not to TensorBoard",
                    logdir)
  return metric_writers.create_default_writer(logdir, just_logging=not (is_chief and reachable))


def join(*parts: PathLike) -> str:
  """`os.path.join` for any path (a `gs://` one too), as a string."""
  return os.fspath(path(parts[0]).joinpath(*[os.fspath(p) for p in parts[1:]]))


def absolute(p: PathLike) -> str:
  """An absolute form of `p` (object-store paths are already absolute)."""
  return os.fspath(p) if is_object_store(p) else os.path.abspath(os.fspath(p))


def exists(p: PathLike) -> bool:
  return path(p).exists()


def makedirs(p: PathLike) -> None:
  path(p).mkdir(parents=True, exist_ok=True)


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def read_text(p: PathLike) -> str:
  return path(p).read_text()


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def size(p: PathLike) -> int:
  """Bytes in the file `p`."""
  if is_object_store(p):
    return int(path(p).stat().length)
  return os.path.getsize(os.fspath(p))


def listdir(p: PathLike) -> list:
  """Names (not paths) in the directory `p`, sorted."""
  return sorted(child.name for child in path(p).iterdir())


def remove(p: PathLike) -> None:
  path(p).unlink()


def rmtree(p: PathLike) -> None:
  """Deletes the directory `p` and everything in it (or the file `p`); nothing if it is
  missing."""
  if path(p).is_dir():
    path(p).rmtree()
  elif path(p).exists():
    path(p).unlink()


def temporary_prefix(p: PathLike) -> str:
  """Temporary files for `p` start with this (so a re-run can find a killed run's)."""
  return f"{TMP_PREFIX}{os.path.basename(os.fspath(p))}-"


@contextlib.contextmanager
def committed(final: PathLike, fault_site: Optional[str] = None) -> Iterator[str]:
  """Yields where to write `final`'s content; on success it is in place, whole.

  POSIX: a temporary name beside `final`, renamed into place after the block (and
  removed if the block fails). Object store: `final` itself, written once.
  `fault_site` names the `faults.point` between the write and the commit.
  """
  final = os.fspath(final)
  if is_object_store(final):
    yield final
    if fault_site:
      faults.point(fault_site)
    return
  directory = os.path.dirname(final) or "."
  tmp = os.path.join(directory, f"{temporary_prefix(final)}{uuid.uuid4().hex[:8]}")
  try:
    yield tmp
    if fault_site:
      faults.point(fault_site)
    os.replace(tmp, final)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_text(p: PathLike, text: str, fault_site: Optional[str] = None) -> None:
  """Writes `text` to `p` so that a reader sees all of it or the previous file (see above)."""
  if is_object_store(p):
    with committed(p, fault_site) as target:
      path(target).write_text(text)
    return
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.fspath(p)) or ".",
                             prefix=temporary_prefix(p))
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    if fault_site:
      faults.point(fault_site)
    os.replace(tmp, os.fspath(p))
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_bytes(p: PathLike, data: bytes) -> None:
  with committed(p) as target:
    path(target).write_bytes(data)


def remove_temporaries(directory: PathLike, prefixes) -> list:
  """Deletes the temporary files (named by `prefixes`) a killed run left in `directory`.

  Object stores have none: nothing is written under a temporary name there.
  """
  if is_object_store(directory) or not isdir(directory):
    return []
  removed = []
  for name in listdir(directory):
    if any(name.startswith(prefix) for prefix in prefixes):
      remove(join(directory, name))
      removed.append(name)
  return removed
