"""Unpad / pad helpers against plain boolean-mask indexing."""

from __future__ import annotations

import pytest
import torch

from myfla.layers.utils import (IndexFirstAxis, get_unpad_data, index_first_axis, index_put_first_axis,
                                pad_input, unpad_input)


def _mask():
    return torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])


def test_get_unpad_data():
    mask = _mask()
    indices, cu_seqlens, max_len = get_unpad_data(mask)
    assert indices.tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 14]
    assert cu_seqlens.tolist() == [0, 3, 8, 9] and cu_seqlens.dtype == torch.int32
    assert max_len == 5 and isinstance(max_len, int)
    assert get_unpad_data(mask)[0] is indices  # @tensor_cache: same mask object, same result


def test_index_first_axis_and_pad_roundtrip_with_grads():
    mask = _mask()
    x = torch.randn(3, 5, 2, 4, requires_grad=True)
    indices, _, _ = get_unpad_data(mask)
    flat = x.reshape(15, 2, 4)
    rows = index_first_axis(flat, indices)
    torch.testing.assert_close(rows, x[mask.bool()])
    back = pad_input(rows * 2, indices, 3, 5)
    assert back.shape == (3, 5, 2, 4)
    torch.testing.assert_close(back, 2 * x * mask[..., None, None])
    g = torch.randn_like(back)
    back.backward(g)
    torch.testing.assert_close(x.grad, 2 * g * mask[..., None, None])


def test_index_put_first_axis_backward():
    x = torch.randn(4, 3, requires_grad=True)
    idx = torch.tensor([5, 0, 2, 7])
    y = index_put_first_axis(x, idx, 8)
    assert y.shape == (8, 3) and (y[[1, 3, 4, 6]] == 0).all()
    g = torch.randn(8, 3)
    y.backward(g)
    torch.testing.assert_close(x.grad, g[idx])
    with pytest.raises(AssertionError):
        IndexFirstAxis.apply(torch.randn(4), torch.tensor([0]))


def test_unpad_input_prefill_and_decode():
    mask = _mask()
    q = torch.randn(3, 5, 6)
    k = torch.randn(3, 5, 6)
    q_u, (k_u,), idx_q, (cu_q, cu_k), (mq, mk) = unpad_input(q, (k,), mask, q_len=5)
    torch.testing.assert_close(q_u, q[mask.bool()])
    torch.testing.assert_close(k_u, k[mask.bool()])
    assert cu_q is cu_k and mq == mk == 5
    q1 = torch.randn(3, 1, 6)
    q_u, (k_u,), idx_q, (cu_q, cu_k), (mq, mk) = unpad_input(q1, (k,), mask, q_len=1, keepdim=True)
    assert q_u.shape == (1, 3, 6) and k_u.shape == (1, 9, 6)
    assert cu_q.tolist() == [0, 1, 2, 3] and idx_q.tolist() == [0, 1, 2] and mq == 1
    with pytest.raises(NotImplementedError, match="We only support either q_len == k_len"):
        unpad_input(torch.randn(3, 2, 6), (k,), mask, q_len=2)
