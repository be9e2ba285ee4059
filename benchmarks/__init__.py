"""Speed and memory benchmarks: `python -m benchmarks.<name>` (see each module's doc)."""

# The allocator as `python -m rest_jax.main` sets it (rest_jax/host_memory.py), before a
# benchmark imports JAX: the figures are the command line's.
from rest_jax import host_memory

host_memory.tune()
