"""What a tower reads: tokens plus the positions that the attention masks are made from.

Every token carries three coordinates:
  * `positions`: its index within its own tower's sequence (rotary phase, causal self-attention);
  * `interleaved_positions`: its index in the one interleaved multimodal sequence that the example
    stands for (cross-attention order: a query sees only other towers' keys strictly before it);
  * `segment_ids`: which packed example it belongs to, 0 for padding (nothing attends across
    segments, and padding is never attended to).
"""
from __future__ import annotations

import flax.struct
import jax.numpy as jnp


@flax.struct.dataclass
class TowerInput:
  tokens: jnp.ndarray  # [batch, length] int32
  positions: jnp.ndarray  # [batch, length] int32
  segment_ids: jnp.ndarray  # [batch, length] int32, 0 = padding
  interleaved_positions: jnp.ndarray  # [batch, length] int32

  @classmethod
  def from_tokens(cls, tokens, *, lengths=None, offset=0) -> TowerInput:
    """A single (unpacked) right-padded sequence per row.

    `lengths` ([batch]) marks the valid prefix of each row (default: all of it); `offset` ([batch]
    or scalar) is where this tower's tokens start in the interleaved sequence, e.g. the number of
    speech tokens that precede the text in an ASR example.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    batch, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    if lengths is None:
      segment_ids = jnp.ones((batch, length), jnp.int32)
    else:
      lengths = jnp.asarray(lengths, jnp.int32)
      segment_ids = (positions < lengths[:, None]).astype(jnp.int32)
    offset = jnp.asarray(offset, jnp.int32)
    interleaved = positions + (offset[:, None] if offset.ndim else offset)
    return cls(tokens, positions, segment_ids, interleaved)

  @property
  def shape(self) -> tuple[int, int]:
    return self.tokens.shape
