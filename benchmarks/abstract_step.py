"""A model's train step compiled on abstract shapes: nothing is allocated or run, so the compile
time and XLA's memory accounting of a step come out even where its state would not fit."""
from __future__ import annotations

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from zipper_jax import batch as batch_lib, freezing, steps


def compile_train_step(model, lengths, batch_size: int, frozen=()):
  """(compiled step, seconds to lower and compile) on a batch of `lengths` ({tower: tokens})."""
  batch = batch_lib.dummy_batch(model.towers, lengths, batch_size)
  params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), batch)))
  trainable, frozen_params = freezing.partition(params, freezing.trainable_mask(params, frozen))
  tx = optax.adamw(1e-4)
  state = steps.TrainState(jax.ShapeDtypeStruct((), jnp.int32), trainable, frozen_params,
                           jax.eval_shape(tx.init, trainable))
  step = jax.jit(functools.partial(steps.train_step, model=model, optimizer=tx), donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  return compiled, time.perf_counter() - start
