"""A t5x-API model class that is not rest_jax's (one PRNG key per batch, like t5x's)."""

from rest_jax.models import model as _model


class EncoderDecoderModel(_model.EncoderDecoderModel):
  PER_SAMPLE_RNGS = False
