"""A stand-in for an installed t5x: a model class from another library, with t5x's habits.

Its model takes one PRNG key per batch (not per sample) and its decode functions live
in `<library>.decoding`, as t5x's do. `tests/t5x_model_test.py` runs the ReST loop on
it through gin, as a t5x user would, and checks rest_jax handled it as a foreign model.
"""
