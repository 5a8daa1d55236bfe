"""The jitted steps: one optimizer step on a batch, one evaluation of a batch.

Pure functions of pytrees, free of any input pipeline, so that the trainer, the benchmarks and
any other loop share them. Frozen towers are split off the parameters before differentiation
(`freezing.partition`): they get no gradient, no optimizer state and no update.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax

from zipper_jax import freezing, losses
from zipper_jax.models import Model


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: dict  # trainable parameters; None where frozen
  frozen: dict  # frozen parameters; None where trainable
  opt_state: optax.OptState

  @property
  def all_params(self):
    return freezing.combine(self.params, self.frozen)


def train_step(state: TrainState, batch, *, model: Model, optimizer: optax.GradientTransformation,
               num_microbatches: int = 1, dropout_seed: int = 0):
  """One optimizer step on `batch`, its gradient accumulated over `num_microbatches` slices.

  The loss is the token-weighted mean over the whole batch, so the accumulated gradient equals
  the gradient of one pass over the batch. Dropout masks are a function of `dropout_seed`, the
  step and the microbatch: a resumed run draws the ones it would have drawn.
  """
  micro = jax.tree.map(lambda x: x.reshape(num_microbatches, -1, *x.shape[1:]), batch)
  step_rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)

  def weighted_sums(params, microbatch, dropout_rng):
    """(the microbatch's objective summed over its tokens, its metric sums)."""
    objective, metrics = model.loss(freezing.combine(params, state.frozen), microbatch,
                                    dropout_rng)
    return objective, losses.metric_sums(metrics)

  def accumulate(carry, xs):
    microbatch, index = xs
    (_, sums), grads = jax.value_and_grad(weighted_sums, has_aux=True)(
        state.params, microbatch, jax.random.fold_in(step_rng, index))
    return jax.tree.map(jnp.add, carry, (grads, sums)), None

  zeros = (jax.tree.map(jnp.zeros_like, state.params), losses.zero_sums(model.towers))
  (grads, sums), _ = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(num_microbatches)))
  total_weight = sum(sums[f'{t}/weight'] for t in model.towers)
  grads = jax.tree.map(lambda g: g / jnp.maximum(total_weight, 1e-8), grads)

  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = losses.metric_means(sums)
  metrics['grad_norm'] = optax.global_norm(grads)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch, *, model: Model):
  return losses.metric_sums(model.loss(params, batch)[1])

