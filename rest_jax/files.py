"""Writing files so that a reader (or a re-run after a kill) sees all of one or none of it."""

import os
import tempfile
from typing import Optional

from rest_jax import faults

TMP_PREFIX = ".tmp-"


def temporary_prefix(path: str) -> str:
  """Temporary files for `path` start with this (so a re-run can find a killed run's)."""
  return f"{TMP_PREFIX}{os.path.basename(path)}-"


def atomic_write_text(path: str, text: str, fault_site: Optional[str] = None) -> None:
  """Writes `text` to a temporary file beside `path`, syncs it, and renames it into place.

  `fault_site` names the `faults.point` between the write and the rename. On an
  error the temporary file is removed and `path` is left as it was.
  """
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=temporary_prefix(path))
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    if fault_site:
      faults.point(fault_site)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
