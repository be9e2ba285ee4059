"""What decides a task's examples and a vocabulary's ids, as plain data for step records.

A `rest` step is reused on a re-run only if its record is unchanged
(`rest_jax/records.py`); a task's name says nothing about its rows, so a record holds
`task(name)`: the source's identity (the files' digests of a local corpus, the TFDS
name, version and folder, the demo corpus's gin-bound sizes and flaws), the
preprocessors, and each feature's vocabulary (`vocabulary`: the SentencePiece model's
digest, not its path). A data source or dataset function may say what decides its rows
itself with an `identity` attribute (a value, or a callable returning one).
"""

import functools
import hashlib
import os
from typing import Any, Dict

import seqio

from rest_jax import files

_CHUNK = 1 << 22


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
  del size, mtime_ns  # the cache key: a rewritten file is read again
  digest = hashlib.sha256()
  with files.path(path).open("rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()[:16]


def file_digest(path: str) -> Dict[str, Any]:
  """A file's name and the sha256 of its bytes (read once per process while unchanged)."""
  p = files.path(path)
  if not p.exists():
    return {"file": os.path.basename(path), "missing": True}
  stat = p.stat()
  return {"file": os.path.basename(path),
          "sha256": _digest(str(path), int(stat.length), int(stat.mtime * 1e9))}


def vocabulary(vocab: seqio.Vocabulary) -> Dict[str, Any]:
  """A vocabulary by what decides its ids: its SentencePiece model's bytes, extra ids."""
  resolved = getattr(vocab, "_vocab", vocab)  # a DeferredVocabulary: what it names now
  out: Dict[str, Any] = {"type": type(resolved).__name__,
                         "extra_ids": int(getattr(resolved, "extra_ids", 0) or 0)}
  if isinstance(resolved, seqio.SentencePieceVocabulary):
    out["sentencepiece_sha256"] = hashlib.sha256(resolved.sp_model).hexdigest()[:16]
  else:
    out["size"] = int(resolved.vocab_size)
  return out


def _source(source: seqio.DataSource) -> Any:
  from rest_jax import records  # pylint: disable=g-import-not-at-top

  own = getattr(source, "identity", None) or getattr(
      getattr(source, "_dataset_fn", None), "identity", None)
  if own is not None:
    return records.describe(own() if callable(own) else own)
  if isinstance(source, seqio.TfdsDataSource):
    loader = source.tfds_dataset
    return {"tfds": loader.name, "data_dir": loader.data_dir,
            "split_map": records.describe(getattr(loader, "split_map", None))}
  if isinstance(source, seqio.FileDataSource):  # every file it reads, by content
    return {split: [file_digest(p) for p in sorted(source.list_shards(split))]
            for split in sorted(source.splits)}
  return {"dataset_fn": records.describe(getattr(source, "_dataset_fn", None)),
          "type": type(source).__name__}


def task(name: str) -> Dict[str, Any]:
  """The registered task or mixture `name` as what decides its examples."""
  from rest_jax import records  # pylint: disable=g-import-not-at-top

  provider = seqio.get_mixture_or_task(name)
  if isinstance(provider, seqio.Mixture):
    return {"mixture": name, "tasks": {t.name: {"rate": provider.get_rate(t), **task(t.name)}
                                       for t in provider.tasks}}
  return {"task": name, "source": _source(provider.source),
          "preprocessors": records.describe(list(provider.preprocessors)),
          "features": {key: {"vocabulary": vocabulary(f.vocabulary), "add_eos": f.add_eos,
                             "dtype": str(f.dtype)}
                       for key, f in sorted(provider.output_features.items())}}

