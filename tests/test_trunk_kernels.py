"""The experimental trunk kernels of benchmarks/trunk_kernels.py compute the model's function."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.trunk_kernels import packed_attention, with_fast_kernels
from hiera_det.modeling import build_hiera


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
@pytest.mark.parametrize(
    "windows,q_len,k_len", [(13, 16, 16), (10, 4, 16), (7, 16, 64), (5, 64, 64), (1, 16, 16)]
)  # fmt: skip
def test_packed_windows_attend_only_inside_themselves(kernel, windows, q_len, k_len):
    """Packing (with zero windows padding the last pack, and pooled queries) changes nothing."""
    g = torch.Generator().manual_seed(windows)
    q = torch.randn(windows, q_len, 2, 8, generator=g)
    k, v = (torch.randn(windows, k_len, 2, 8, generator=g) for _ in range(2))
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = packed_attention(q, k, v, 128, kernel)
    assert out.shape == q.shape
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_packed_attention_names_an_unknown_kernel():
    q = torch.randn(2, 4, 1, 8)
    with pytest.raises(ValueError, match="unknown packed attention kernel 'triton'"):
        packed_attention(q, q, q, 128, "triton")
    with pytest.raises(ValueError, match="unknown pack_kernel"):
        with_fast_kernels(torch.nn.Linear(1, 1), pack_keys=128, pack_kernel="triton")


@pytest.mark.parametrize("attention,size", [("mask_unit", (64, 64)), ("window", (128, 128))])
def test_a_trunk_with_the_fast_kernels_keeps_fp32_parity(attention, size):
    """On the CPU the fused GELU stands aside and the packed attention runs: same outputs in fp32, and
    the original model is left as it was."""
    torch.manual_seed(0)
    model = build_hiera("hiera_tiny_224", num_classes=0, input_size=size, attention=attention).eval()
    x = torch.randn(3, 3, *size)
    fast = with_fast_kernels(model, fused_gelu=True, pack_keys=128, pack_kernel="sdpa")
    with torch.no_grad():
        expected, out = model(x), fast(x)
    for name in expected:
        torch.testing.assert_close(out[name], expected[name], atol=2e-5, rtol=1e-4)
    assert "forward" not in vars(model.blocks[0].attn)  # the copy was patched, not the model
