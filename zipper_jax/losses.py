"""Next-token cross-entropy per tower, weighted per token by the task."""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax


def token_log_likelihoods(logits, targets, weights):
  """[batch, length]: each target's weighted log-probability under `logits`."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return -losses * weights.astype(jnp.float32)


def _is_top(logits, targets):
  """[batch, length]: whether each target has the largest logit. `argmax`'s hit but for ties, at
  the cost of a max: XLA:CPU's argmax (a reduction over values and indices) took some 4% of the
  demo Zipper's training step."""
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return target_logits >= jnp.max(logits, axis=-1)


def weighted_cross_entropy(logits, targets, weights):
  """Returns (sum of weighted token losses, sum of weights) for one tower."""
  return -jnp.sum(token_log_likelihoods(logits, targets, weights)), jnp.sum(
      weights.astype(jnp.float32))


def weighted_uniform_cross_entropy(logits, weights, vocab_size: int):
  """Sum of the weighted cross-entropies against a uniform target over the first `vocab_size`
  ids (logsumexp - their mean logit; padded ids have the lowest float: `Tower.logits`), with no
  [batch, length, vocab] one-hot."""
  logits = logits.astype(jnp.float32)
  uniform = jax.nn.logsumexp(logits, axis=-1) - jnp.mean(logits[..., :vocab_size], axis=-1)
  return jnp.sum(uniform * weights.astype(jnp.float32))


def zipper_loss(logits: Mapping[str, jnp.ndarray], targets: Mapping[str, jnp.ndarray],
                weights: Mapping[str, jnp.ndarray], *, label_smoothing: float = 0.0,
                vocab_sizes: Mapping[str, int] | None = None):
  """The objective summed over all towers' weighted tokens (t5x's, with no normalising factor:
  callers divide by the tokens' total weight, over all microbatches), and per-tower loss,
  accuracy and weight.

  Towers with no weighted tokens in a batch (e.g. the speech tower in an ASR batch) count for
  nothing; their per-tower loss is reported as 0 with weight 0. `label_smoothing` (t5x's): the
  objective's targets spread that much probability evenly over each tower's vocabulary
  (`vocab_sizes`, default the logits' width); the per-tower `loss` stays the cross-entropy of the
  targets themselves, so that evaluation losses and perplexities mean the same whatever the run
  trained with.
  """
  metrics, total = {}, 0.0
  for name in targets:
    loss, weight = weighted_cross_entropy(logits[name], targets[name], weights[name])
    objective = loss
    if label_smoothing:
      vocab_size = (vocab_sizes or {}).get(name, logits[name].shape[-1])
      objective = ((1 - label_smoothing) * loss + label_smoothing *
                   weighted_uniform_cross_entropy(logits[name], weights[name], vocab_size))
    hits = _is_top(logits[name], targets[name]) * weights[name]
    metrics[f'{name}/loss'] = loss / jnp.maximum(weight, 1e-8)
    metrics[f'{name}/accuracy'] = jnp.sum(hits) / jnp.maximum(weight, 1e-8)
    metrics[f'{name}/weight'] = weight
    total += objective
  return total, metrics


METRICS = ('loss', 'accuracy', 'weight')


def zero_sums(towers) -> dict:
  """`metric_sums` of nothing: where accumulation starts."""
  return {f'{t}/{m}': jnp.zeros((), jnp.float32) for t in towers for m in METRICS}


def _weight_key(key: str) -> str:
  return f'{key.split("/")[0]}/weight'


def metric_sums(metrics: Mapping[str, jnp.ndarray]) -> dict:
  """Per-tower means -> token-weighted sums, which add across microbatches and batches."""
  return {k: v if k.endswith('/weight') else v * metrics[_weight_key(k)]
          for k, v in metrics.items()}


def metric_means(sums: Mapping[str, jnp.ndarray]) -> dict:
  """Inverse of `metric_sums`, plus `loss`: the token-weighted mean over all towers."""
  means = {k: v if k.endswith('/weight') else v / jnp.maximum(sums[_weight_key(k)], 1e-8)
           for k, v in sums.items()}
  total_weight = sum(v for k, v in sums.items() if k.endswith('/weight'))
  means['loss'] = sum(v for k, v in sums.items() if k.endswith('/loss')) / jnp.maximum(
      total_weight, 1e-8)
  return means
