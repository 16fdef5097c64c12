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


@pytest.mark.parametrize("attention,size", [("mask_unit", (64, 64)), ("window", (128, 128))])
def test_a_trunk_with_the_residual_norm_blocks_computes_the_same_function(attention, size):
    """Off CUDA ``add_layer_norm`` runs the plain ops, so the patched blocks give the model's outputs exactly
    (q-pooling, widening and windowed blocks included); a trunk with drop path is refused."""
    torch.manual_seed(0)
    model = build_hiera("hiera_tiny_224", num_classes=0, input_size=size, attention=attention).eval()
    x = torch.randn(2, 3, *size)
    fast = with_fast_kernels(model, residual_norm=True)
    with torch.no_grad():
        expected, out = model(x), fast(x)
    for name in expected:
        assert torch.equal(out[name], expected[name]), name
    assert "forward" in vars(fast.blocks[0]) and "forward" not in vars(model.blocks[0])
    with pytest.raises(ValueError, match="without drop_path"):
        with_fast_kernels(
            build_hiera("hiera_tiny_224", num_classes=0, drop_path_rate=0.1), residual_norm=True
        )


def test_the_residual_norm_kernel_matches_add_and_layer_norm_in_tritons_cpu_interpreter():
    """The kernel itself in fp32 through Triton's interpreter: Hiera's widths and one that divides no tile,
    row counts that divide no block."""
    pytest.importorskip("triton")
    from triton_interpreter import interpreted

    script = (
        "import torch\n"
        "import torch.nn.functional as F\n"
        "from benchmarks.trunk_kernels import launch_add_layer_norm\n"
        "worst = 0.0\n"
        "for rows, dim in [(37, 96), (9, 192), (5, 384), (70, 40)]:\n"
        "    g = torch.Generator().manual_seed(dim)\n"
        "    x, y = torch.randn(2, rows, dim, generator=g), torch.randn(2, rows, dim, generator=g)\n"
        "    w, b = torch.randn(dim, generator=g), torch.randn(dim, generator=g)\n"
        "    total, norm = launch_add_layer_norm(x, y, w, b, 1e-6, torch.float32)\n"
        "    assert torch.equal(total, x + y)\n"
        "    worst = max(worst, float((norm - F.layer_norm(x + y, (dim,), w, b, 1e-6)).abs().max()))\n"
        "print(worst)\n"
    )
    assert interpreted(script) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("stream_dtype", [torch.float32, torch.bfloat16])
def test_the_residual_norm_op_on_the_gpu_is_the_plain_add_and_norm(stream_dtype):
    """bf16 branch, stream in bf16 (bf16 weights) or fp32 (autocast): the sum exactly, the norm within bf16
    rounding of the plain path's, eager and compiled."""
    from benchmarks.trunk_kernels import add_layer_norm, register_add_layer_norm

    assert register_add_layer_norm()
    g = torch.Generator(device="cuda").manual_seed(0)
    norm = torch.nn.LayerNorm(192, eps=1e-6).cuda()
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
        x = torch.randn(64, 49, 192, device="cuda", generator=g).to(stream_dtype)
        y = torch.randn(64, 49, 192, device="cuda", generator=g).to(torch.bfloat16)
        with torch.autocast("cuda", torch.bfloat16, enabled=stream_dtype == torch.float32):
            if stream_dtype == torch.bfloat16:
                norm = norm.to(torch.bfloat16)
            for fn in (add_layer_norm, torch.compile(add_layer_norm)):
                total, normed = fn(x, y, norm)
                assert torch.equal(total, x + y)
                assert normed.dtype == torch.bfloat16
                torch.testing.assert_close(normed, norm(x + y).to(torch.bfloat16), atol=2e-2, rtol=2e-2)
