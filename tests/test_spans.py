"""Device-side span helpers: masks, per-type sums and counts."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sad_jax.objective import _spans as spans
from sad_jax.objective._spans import NUM_SPAN_TYPES, SpanType

SPAN_IDS = np.array([[1, 2, 2, 3, 4, 0], [2, 3, 3, 5, 0, 0]], np.int32)
VALUES = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]], np.float32)


def test_span_type_values_are_pinned():
  assert [(t.name, int(t)) for t in SpanType] == [
      ("PAD", 0), ("PROMPT", 1), ("REASONING", 2), ("ACTION", 3), ("OBSERVATION", 4), ("OTHER", 5)]
  assert NUM_SPAN_TYPES == 6 and spans.SPAN_NAMES[2] == "reasoning"


def test_span_masks_one_hot():
  masks = spans.span_masks(SPAN_IDS)
  assert masks.shape == (2, 6, NUM_SPAN_TYPES) and masks.dtype == jnp.bool_
  np.testing.assert_array_equal(masks.sum(-1), 1)
  np.testing.assert_array_equal(jnp.argmax(masks, -1), SPAN_IDS)
  assert not spans.span_masks(jnp.array([7, -1])).any()


def test_span_mask_of_one_or_several_types():
  np.testing.assert_array_equal(spans.span_mask(SPAN_IDS, SpanType.ACTION), SPAN_IDS == 3)
  np.testing.assert_array_equal(
      spans.span_mask(SPAN_IDS, [SpanType.REASONING, SpanType.ACTION]), np.isin(SPAN_IDS, [2, 3]))
  with pytest.raises(ValueError):
    spans.span_mask(SPAN_IDS, 9)


def test_span_sums_global_and_per_row():
  total = spans.span_sums(VALUES, SPAN_IDS)
  assert total.shape == (NUM_SPAN_TYPES,) and total.dtype == jnp.float32
  np.testing.assert_allclose(total, [6 + 50 + 60, 1, 2 + 3 + 10, 4 + 20 + 30, 5, 40])
  per_row = spans.span_sums(VALUES, SPAN_IDS, per_row=True)
  assert per_row.shape == (2, NUM_SPAN_TYPES)
  np.testing.assert_allclose(per_row.sum(0), total)
  np.testing.assert_allclose(per_row[1], [110, 0, 10, 50, 0, 40])


def test_span_sums_nan_in_other_types_does_not_leak():
  values = VALUES.copy()
  values[0, 5] = np.nan  # a PAD position
  values[1, 3] = np.inf  # an OTHER position
  total = spans.span_sums(values, SPAN_IDS)
  assert np.isfinite(np.asarray(total)[[1, 2, 3, 4]]).all()
  np.testing.assert_allclose(total[SpanType.ACTION], 54.0)


def test_span_counts_with_where_and_under_jit():
  np.testing.assert_allclose(spans.span_counts(SPAN_IDS), [3, 1, 3, 3, 1, 1])
  where = SPAN_IDS != 0
  np.testing.assert_allclose(spans.span_counts(SPAN_IDS, where=where), [0, 1, 3, 3, 1, 1])
  per_row = jax.jit(lambda s: spans.span_counts(s, per_row=True))(SPAN_IDS)
  np.testing.assert_allclose(per_row, [[1, 1, 2, 1, 1, 0], [2, 0, 1, 2, 0, 1]])


def test_span_helpers_match_host_side_counts():
  from sad_jax.data import trajectories as tj
  np.testing.assert_allclose(spans.span_counts(SPAN_IDS, per_row=True), tj.span_token_counts(SPAN_IDS))


def test_span_helper_errors():
  with pytest.raises(TypeError, match="span_ids must be an integer array"):
    spans.span_masks(jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"values shape \(2, 5\) must equal span_ids shape \(2, 6\)"):
    spans.span_sums(VALUES[:, :5], SPAN_IDS)
