"""The residual add + LayerNorm kernel (``hiera_det.modeling.residual_norm``) is the block's add and norm2."""

import pytest
import torch
import torch.nn.functional as F

from hiera_det.modeling import build_hiera
from hiera_det.modeling import residual_norm

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("attention,size", [("mask_unit", (64, 64)), ("window", (128, 128))])
def test_the_flag_changes_nothing_off_the_kernels_path(attention, size):
    """Eager, on the CPU, in training: the plain add and norm run, so outputs are bit-equal with the flag
    on and off (q-pooling, widening and windowed blocks included), and drop path still drops in training."""
    torch.manual_seed(0)
    model = build_hiera("hiera_tiny_224", num_classes=0, input_size=size, attention=attention).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        on = model(x)
        off = model.set_inference_kernels(residual_norm=False)(x)
    assert not any(block.residual_norm for block in model.blocks)
    for name in on:
        assert torch.equal(on[name], off[name]), name
    torch.manual_seed(0)
    dropping = build_hiera("hiera_tiny_224", num_classes=0, input_size=(64, 64), drop_path_rate=0.5).train()
    torch.manual_seed(1)
    a = dropping(x[:, :, :64, :64])["stage4"]
    torch.manual_seed(2)
    b = dropping(x[:, :, :64, :64])["stage4"]
    assert not torch.equal(a, b)  # training: the residual branches are dropped at random


def test_add_layer_norm_runs_the_plain_ops_in_eager_code():
    """The kernel only fixes compiled code (eager code stores the stream anyway): outside torch.compile the
    op is never called, on any device."""
    norm = torch.nn.LayerNorm(96, eps=1e-6)
    x, y = torch.randn(3, 5, 96), torch.randn(3, 5, 96)
    assert not residual_norm.kernel_applies(x, y.bfloat16(), torch.bfloat16)
    total, normed = residual_norm.add_layer_norm(x, y, norm)
    assert torch.equal(total, x + y) and torch.equal(normed, norm(x + y))


def test_the_kernel_matches_add_and_layer_norm_in_tritons_cpu_interpreter():
    """The kernel itself through Triton's interpreter: fp32 and a bf16 stream (the sum rounded to it before
    the norm, as eager code does; the interpreter's bf16 casts truncate, so there within an ulp, and exact on
    the GPU), Hiera's widths and one that divides no tile, row counts that divide no block."""
    pytest.importorskip("triton")
    from triton_interpreter import interpreted

    script = (
        "import torch\n"
        "import torch.nn.functional as F\n"
        "from hiera_det.modeling.residual_norm import launch\n"
        "worst = 0.0\n"
        "for rows, dim in [(37, 96), (9, 192), (5, 384), (70, 40)]:\n"
        "    g = torch.Generator().manual_seed(dim)\n"
        "    x, y = torch.randn(2, rows, dim, generator=g), torch.randn(2, rows, dim, generator=g)\n"
        "    w, b = torch.randn(dim, generator=g), torch.randn(dim, generator=g)\n"
        "    total, norm = launch(x, y, w, b, 1e-6, torch.float32)\n"
        "    assert torch.equal(total, x + y)\n"
        "    worst = max(worst, float((norm - F.layer_norm(x + y, (dim,), w, b, 1e-6)).abs().max()))\n"
        "    xb, yb = x.bfloat16(), y.bfloat16()\n"
        "    total, norm = launch(xb, yb, w.bfloat16(), b.bfloat16(), 1e-6, torch.bfloat16)\n"
        "    s = xb + yb\n"
        "    torch.testing.assert_close(total, s, atol=0, rtol=2**-6)  # its bf16 casts truncate\n"
        "    ref = F.layer_norm(s.float(), (dim,), w.bfloat16().float(), b.bfloat16().float(), 1e-6)\n"
        "    assert float((norm.float() - ref).abs().max()) <= 0.125, dim  # two bf16 ulps at |values| < 16\n"
        "print(worst)\n"
    )
    assert interpreted(script) < 1e-5


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("stream_dtype", [torch.float32, torch.bfloat16])
def test_the_op_on_the_gpu_is_the_plain_add_and_norm(stream_dtype):
    """bf16 branch, stream in bf16 (bf16 weights) or fp32 (autocast): the sum exactly, the norm within bf16
    rounding of the plain path's."""
    assert residual_norm.register_kernel()
    g = torch.Generator(device="cuda").manual_seed(0)
    norm = torch.nn.LayerNorm(192, eps=1e-6).cuda()
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
        x = torch.randn(64, 49, 192, device="cuda", generator=g).to(stream_dtype)
        y = torch.randn(64, 49, 192, device="cuda", generator=g).to(torch.bfloat16)
        w, b = norm.weight.bfloat16(), norm.bias.bfloat16()
        total, normed = torch.ops.hiera_det.add_layer_norm(x, y, w, b, norm.eps, torch.bfloat16)
    assert torch.equal(total, x + y)
    assert normed.dtype == torch.bfloat16
    ref = F.layer_norm((x + y).float(), (192,), w.float(), b.float(), norm.eps)
    torch.testing.assert_close(normed.float(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("weights", ["autocast", "bf16"])
def test_the_compiled_model_runs_the_op_and_stays_as_close_to_fp32(weights):
    """Hiera-T compiled, 16-bit: the generated code launches the kernel, and the outputs land as close to
    the fp32 model as without it (bf16 weights store a bf16 stream, as eager code does)."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = build_hiera("hiera_tiny_224", num_classes=0, input_size=(224, 224)).cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad():
        ref = model(x)["stage4"].float()
        if weights == "bf16":
            model, x = model.bfloat16(), x.bfloat16()
        errors, codes = {}, {}
        for flag in (False, True):
            model.set_inference_kernels(residual_norm=flag)
            torch._dynamo.reset()
            with torch.autocast("cuda", torch.bfloat16, enabled=weights == "autocast"):
                out, code = run_and_get_code(torch.compile(model, dynamic=False), x)
            errors[flag] = float((out["stage4"].float() - ref).abs().max() / ref.abs().max())
            codes[flag] = "\n".join(code)
    assert "add_layer_norm" in codes[True] and "add_layer_norm" not in codes[False]
    assert errors[True] <= 1.5 * errors[False] + 1e-3, errors
