"""Scores cached on disk, so a resumed or repeated Grow step never scores a row twice.

    REWARD = @rewards.Cached()
    rewards.Cached.reward = @rewards.get()
    rewards.get.name = 'chrf'

The key is (the reward's `identity` (what its scores depend on: MetricX's checkpoint and
input length; its name for a reward without one) and `version`, source, hypothesis, and
the reference when the reward reads one), hashed; the store is one SQLite file per reward under
`directory` (default `$REST_JAX_CACHE/rewards`, on the local disk of each host: SQLite
locks do not work on every network file system). Bump `version` when the reward
changes (a retrained model) to start a fresh cache. Cache the expensive reward inside
the cheap guards (`Guarded(Cached(model))`), so that the guards' counts cover every row.
"""

import hashlib
import json
import os
import sqlite3
from typing import Optional

import numpy as np

from rest_jax.rewards.base import Reward


def default_directory() -> str:
  root = os.environ.get("REST_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "rest_jax")
  return os.path.join(root, "rewards")


class Cached(Reward):
  """`reward`, with each (source, hypothesis, reference) scored once and kept on disk.

  Attributes:
    hits, misses: rows found in the cache and rows scored, over this object's life.
  """

  def __init__(self, reward: Reward, directory: Optional[str] = None, version: str = "1"):
    self.reward = reward
    self.version = str(version)
    self.name = reward.name
    self.range = reward.range
    self.needs_reference = reward.needs_reference
    directory = directory or default_directory()
    os.makedirs(directory, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in reward.name)
    self.path = os.path.join(directory, f"{safe}.sqlite")
    self._db = sqlite3.connect(self.path, timeout=60)
    self._db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, score REAL)")
    self._db.commit()
    self.hits = self.misses = 0

  @property
  def identity(self) -> str:
    return self.reward.identity

  def _key(self, source: str, hypothesis: str, reference: str) -> str:
    parts = [self.reward.identity, self.version, source, hypothesis,
             reference if self.needs_reference else ""]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()

  def score(self, sources, hypotheses, references):
    keys = [self._key(s, h, r) for s, h, r in zip(sources, hypotheses, references)]
    found = {}
    for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
      chunk = sorted(set(keys[start:start + 500]))
      rows = self._db.execute(
          f"SELECT key, score FROM scores WHERE key IN ({','.join('?' * len(chunk))})", chunk)
      found.update(rows.fetchall())
    todo, seen = [], set()
    for i, key in enumerate(keys):  # a row repeated within the batch is scored once
      if key not in found and key not in seen:
        seen.add(key)
        todo.append(i)
    if todo:
      scores = self.reward([sources[i] for i in todo], [hypotheses[i] for i in todo],
                           [references[i] for i in todo])
      new = {keys[i]: float(v) for i, v in zip(todo, scores)}
      self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?)", new.items())
      self._db.commit()
      found.update(new)
    self.hits += len(keys) - len(todo)
    self.misses += len(todo)
    return np.array([found[k] for k in keys], np.float64)
