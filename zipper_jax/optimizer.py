"""AdamW with warm-up and a decay schedule, gradient clipping; every knob a gin binding."""
from __future__ import annotations

import gin
import jax
import optax

SCHEDULES = ('cosine', 'rsqrt', 'constant')


@gin.configurable
def learning_rate_schedule(peak: float = 1e-3, warmup_steps: int = 100, decay: str = 'cosine',
                           total_steps: int = gin.REQUIRED, final_fraction: float = 0.1):
  """Linear warm-up to `peak`, then cosine decay to `final_fraction * peak` at `total_steps`,
  or rsqrt decay (peak * sqrt(warmup / step)), or constant."""
  if decay not in SCHEDULES:
    raise ValueError(f'decay={decay!r}; expected one of {SCHEDULES}')
  warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
  if decay == 'cosine':
    after = optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps, 1), final_fraction)
  elif decay == 'rsqrt':
    after = lambda step: peak * (max(warmup_steps, 1) / (step + max(warmup_steps, 1))) ** 0.5
  else:
    after = optax.constant_schedule(peak)
  return optax.join_schedules([warmup, after], [warmup_steps])


@gin.configurable
def adamw(learning_rate=gin.REQUIRED, b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8,
          weight_decay: float = 0.01, clip_norm: float | None = 1.0, mu_dtype: str | None = None):
  """Global-norm clipping, then AdamW. Decoupled weight decay skips norms, gates and biases
  (parameters of rank < 2). `mu_dtype` ('bfloat16') stores the first moment in less memory."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  chain.append(optax.adamw(learning_rate, b1, b2, eps, mu_dtype=mu_dtype,
                           weight_decay=weight_decay, mask=decay_mask))
  return optax.chain(*chain)
