"""Hugging Face T5 / mT5 checkpoints without torch: tensor names, shapes, seeded random weights.

numpy only (and safetensors, imported when writing), so that the script that computes
MetricX's reference scores with the published PyTorch code (tests/fixtures/metricx/)
can load this file by path in an environment without JAX.
"""

import json
import os
from typing import Any, Dict, Mapping, Tuple

import numpy as np


def shapes_of(hf_config: Mapping[str, Any]) -> Dict[str, Tuple[int, ...]]:
  """The Hugging Face tensor names and shapes of an mT5 `config.json` (MT5ForRegression's)."""
  d, kv, ff = hf_config["d_model"], hf_config["num_heads"] * hf_config["d_kv"], hf_config["d_ff"]
  buckets, heads = hf_config.get("relative_attention_num_buckets", 32), hf_config["num_heads"]
  out = {"shared.weight": (hf_config["vocab_size"], d), "lm_head.weight": (hf_config["vocab_size"], d),
         "encoder.final_layer_norm.weight": (d,), "decoder.final_layer_norm.weight": (d,)}
  for stack, layers, parts in (
      ("encoder", hf_config["num_layers"], ("SelfAttention",)),
      ("decoder", hf_config.get("num_decoder_layers") or hf_config["num_layers"],
       ("SelfAttention", "EncDecAttention"))):
    out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (buckets, heads)
    for i in range(layers):
      for j, part in enumerate(parts):
        out[f"{stack}.block.{i}.layer.{j}.layer_norm.weight"] = (d,)
        for n in "qkv":
          out[f"{stack}.block.{i}.layer.{j}.{part}.{n}.weight"] = (kv, d)
        out[f"{stack}.block.{i}.layer.{j}.{part}.o.weight"] = (d, kv)
      j = len(parts)
      out[f"{stack}.block.{i}.layer.{j}.layer_norm.weight"] = (d,)
      out[f"{stack}.block.{i}.layer.{j}.DenseReluDense.wi_0.weight"] = (ff, d)
      out[f"{stack}.block.{i}.layer.{j}.DenseReluDense.wi_1.weight"] = (ff, d)
      out[f"{stack}.block.{i}.layer.{j}.DenseReluDense.wo.weight"] = (d, ff)
  return out


def random_checkpoint(directory: str, hf_config: Mapping[str, Any], seed: int = 0,
                      scale: float = 0.5, scales: Mapping[str, float] | None = None) -> None:
  """Writes a checkpoint of `hf_config`'s architecture with seeded random weights.

  For tests and benchmarks: the same `seed` gives the same weights bit for bit on
  any machine (numpy's PCG64), so a test can rebuild the checkpoint a reference
  score was computed on instead of storing it. A linear layer's weights have
  standard deviation `scale / sqrt(fan_in)` (`scales` by tensor name overrides it),
  layer-norm scales `1 + 0.1 N(0, 1)`.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  rng = np.random.Generator(np.random.PCG64(seed))
  tensors = {}
  for name, shape in sorted(shapes_of(hf_config).items()):
    if name.endswith("layer_norm.weight"):
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    else:
      value = (scales or {}).get(name, scale) * rng.standard_normal(shape) / np.sqrt(shape[-1])
    tensors[name] = value.astype(np.float32)
  os.makedirs(directory, exist_ok=True)
  # As Hugging Face writes them (its loaders check the format tag).
  save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(dict(hf_config), f, indent=2)
