"""Attention masks: one rule for self- and cross-attention, read off the tokens' coordinates."""


def attention_mask(query_positions, query_segments, key_positions, key_segments, *, strict: bool):
  """[batch, 1, queries, keys] boolean mask.

  A query may attend to a key of the same (non-padding) segment whose position is earlier
  (`strict`, cross-attention over interleaved positions) or not later (self-attention over the
  tower's own positions, where a token sees itself).
  """
  q_pos = query_positions[:, :, None]
  k_pos = key_positions[:, None, :]
  order = k_pos < q_pos if strict else k_pos <= q_pos
  same_segment = query_segments[:, :, None] == key_segments[:, None, :]
  not_padding = key_segments[:, None, :] != 0
  return (order & same_segment & not_padding)[:, None]
