"""row_outputs: every output is its own tensor, whatever pooling, normalization and truncation ask."""

from __future__ import annotations

import pytest
import torch

from ember.model.heads import OutputHeads
from ember.model.pooler import Pooler, RowSpec, row_outputs


@pytest.mark.parametrize("pooling", ["CLS", "MEAN"])
@pytest.mark.parametrize(("normalize", "dimensions"), [(True, None), (False, None), (True, 4), (False, 4)])
def test_pooled_rows_are_new_tensors_with_the_asked_shape_and_norm(pooling, normalize, dimensions):
    """The batch's hidden states are a large buffer the compiled graph returns: an output that were a
    view of it would keep it alive as long as the caller holds the vector."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 8, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    rows = [RowSpec("embed", dimensions, normalize)] * 3
    heads = OutputHeads(classifier=None, multi_label=False, dense=None, sparse=None, multi_vector=None)
    before = hidden.clone()
    out = row_outputs(hidden, mask, torch.zeros(3, 5, dtype=torch.long), rows, Pooler(pooling), heads)
    for i, vector in enumerate(out):
        assert vector.untyped_storage().data_ptr() != hidden.untyped_storage().data_ptr()
        assert vector.shape == (dimensions or 8,)
        pooled = hidden[i, 0] if pooling == "CLS" else hidden[i, mask[i].bool()].mean(0)
        expected = pooled[:dimensions] if dimensions else pooled
        expected = torch.nn.functional.normalize(expected, dim=-1) if normalize else expected
        torch.testing.assert_close(vector, expected)
    torch.testing.assert_close(hidden, before)  # the hidden states are left as they were
