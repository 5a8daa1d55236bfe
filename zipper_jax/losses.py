"""Next-token cross-entropy per tower, weighted per token by the task."""
from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import optax


def weighted_cross_entropy(logits, targets, weights):
  """Returns (sum of weighted token losses, sum of weights) for one tower."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  weights = weights.astype(jnp.float32)
  return jnp.sum(losses * weights), jnp.sum(weights)


def zipper_loss(logits: Mapping[str, jnp.ndarray], targets: Mapping[str, jnp.ndarray],
                weights: Mapping[str, jnp.ndarray]):
  """Token-weighted mean loss over all towers, and per-tower metrics.

  Towers with no weighted tokens in a batch (e.g. the speech tower in an ASR batch) count for
  nothing; their per-tower loss is reported as 0 with weight 0.
  """
  metrics, total, total_weight = {}, 0.0, 0.0
  for name in targets:
    loss, weight = weighted_cross_entropy(logits[name], targets[name], weights[name])
    metrics[f'{name}/loss'] = loss / jnp.maximum(weight, 1e-8)
    metrics[f'{name}/weight'] = weight
    total, total_weight = total + loss, total_weight + weight
  return total / jnp.maximum(total_weight, 1e-8), metrics
