"""t5x-style decode functions: record every call, check one key per batch, then decode."""

import os

from rest_jax import decoding as _decoding


def _record(name, rng):
  if rng is not None and getattr(rng, "shape", (2,)) != (2,):
    raise AssertionError(f"{name}: a t5x model takes one PRNG key per batch, got {rng.shape}")
  log = os.environ.get("FAKE_T5X_LOG")
  if log:
    with open(log, "a") as f:
      f.write(f"{name}\n")


def temperature_sample(tokens_to_logits, cache, *, rng=None, phase_bounds=None, **kwargs):
  _record("temperature_sample", rng)
  return _decoding.temperature_sample(tokens_to_logits, cache, rng=rng,
                                      phase_bounds=phase_bounds, **kwargs)


def beam_search(tokens_to_logits, cache, *, phase_bounds=None, **kwargs):
  _record("beam_search", None)
  return _decoding.beam_search(tokens_to_logits, cache, phase_bounds=phase_bounds, **kwargs)
