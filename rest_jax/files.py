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
"""

import contextlib
import os
import tempfile
import uuid
from typing import Iterator, Optional, Union

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
  """Deletes the directory `p` and everything in it; nothing if it is missing."""
  if path(p).exists():
    path(p).rmtree()


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
