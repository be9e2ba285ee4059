"""Local parallel text: a TSV file, or a pair of line-aligned files, per split.

Every bad line (wrong column count, an empty side, bytes that are not UTF-8, files
of different lengths) is an error naming the file and line, unless the reader is
told to skip bad lines; then each skipped line is counted and logged, never
dropped silently.
"""

import bz2
import collections
import dataclasses
import gzip
import lzma
import os
from typing import Dict, Iterator, Sequence, Tuple

from absl import logging


class ParallelTextError(ValueError):
  """A malformed line or file of a parallel corpus."""


@dataclasses.dataclass
class SkipCounter:
  """Counts of skipped lines, by file and reason."""

  counts: Dict[Tuple[str, str], int] = dataclasses.field(
      default_factory=lambda: collections.defaultdict(int))

  def add(self, path: str, reason: str) -> None:
    self.counts[(path, reason)] += 1

  @property
  def total(self) -> int:
    return sum(self.counts.values())


# Skipped lines of every file read by this process (for `data stats` and logs).
SKIPPED = SkipCounter()


def _decode(raw: bytes, path: str, line_number: int) -> str:
  try:
    return raw.decode("utf-8").rstrip("\r\n")
  except UnicodeDecodeError as e:
    raise ParallelTextError(f"{path}:{line_number}: not valid UTF-8 ({e.reason})") from None


def _check_pair(source: str, target: str, path: str, line_number: int) -> None:
  if not source.strip():
    raise ParallelTextError(f"{path}:{line_number}: empty source side")
  if not target.strip():
    raise ParallelTextError(f"{path}:{line_number}: empty target side")


COMPRESSED = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


def open_text_file(path: str):
  """`path` opened for binary reading; `.gz`, `.xz` and `.bz2` files are decompressed."""
  opener = COMPRESSED.get(os.path.splitext(path)[1], open)
  return opener(path, "rb")


def _tsv_pairs(path: str, columns: Tuple[int, int]) -> Iterator[Tuple[str, str, str, int]]:
  with open_text_file(path) as f:
    for number, raw in enumerate(f, start=1):
      try:
        line = _decode(raw, path, number)
        fields = line.split("\t")
        if len(fields) != 2:
          raise ParallelTextError(
              f"{path}:{number}: expected 2 tab-separated columns, found {len(fields)}")
        source, target = fields[columns[0]], fields[columns[1]]
        _check_pair(source, target, path, number)
        yield source, target, path, number
      except ParallelTextError as e:
        yield e  # handled by the caller (raise or skip)


def _aligned_pairs(source_path: str, target_path: str) -> Iterator[Tuple[str, str, str, int]]:
  with open_text_file(source_path) as fs, open_text_file(target_path) as ft:
    number = 0
    while True:
      number += 1
      raw_s, raw_t = fs.readline(), ft.readline()
      if not raw_s and not raw_t:
        return
      if not raw_s or not raw_t:
        shorter = source_path if not raw_s else target_path
        raise ParallelTextError(
            f"{source_path} and {target_path} are not aligned: {shorter} ends at line"
            f" {number - 1}")
      try:
        source = _decode(raw_s, source_path, number)
        target = _decode(raw_t, target_path, number)
        if not source.strip():
          raise ParallelTextError(f"{source_path}:{number}: empty source side")
        if not target.strip():
          raise ParallelTextError(f"{target_path}:{number}: empty target side")
        yield source, target, source_path, number
      except ParallelTextError as e:
        yield e


def read_parallel_text(
    files: str | Sequence[str],
    skip_bad_lines: bool = False,
    columns: Tuple[int, int] = (0, 1),
    counter: SkipCounter | None = None,
) -> Iterator[Tuple[str, str]]:
  """Yields (source, target) pairs of a TSV file or two aligned files.

  Args:
    files: a TSV path, or `(source_path, target_path)` of line-aligned files.
    skip_bad_lines: skip and count bad lines instead of raising.
    columns: the TSV columns of source and target: (0, 1), or (1, 0) to read a
      file in the other direction.
    counter: where skipped lines are counted (default: the module's `SKIPPED`).

  Raises:
    ParallelTextError: a bad line (naming file and line) when not skipping, a
      missing file, aligned files of different lengths, or no pair at all.
  """
  counter = counter if counter is not None else SKIPPED
  paths = [files] if isinstance(files, str) else list(files)
  for path in paths:
    if not os.path.exists(path):
      raise ParallelTextError(f"parallel text file not found: {path}")
  pairs = _tsv_pairs(paths[0], columns) if len(paths) == 1 else _aligned_pairs(*paths)
  skipped = kept = 0
  for item in pairs:
    if isinstance(item, ParallelTextError):
      if not skip_bad_lines:
        raise item
      skipped += 1
      counter.add(paths[0], str(item).split(": ", 1)[-1])
      logging.warning("skipping bad line: %s", item)
      continue
    kept += 1
    yield item[0], item[1]
  if not kept:
    raise ParallelTextError(
        f"{', '.join(paths)}: no sentence pairs"
        + (f" (all {skipped} lines were bad)" if skipped else " (empty file)"))
  if skipped:
    logging.warning("%s: skipped %d bad lines", ", ".join(paths), skipped)
