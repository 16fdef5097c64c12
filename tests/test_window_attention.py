"""The small-window attention kernel (hiera_det/modeling/window_attention.py) computes SDPA's function,
and the model takes it only for inference on CUDA."""

import pytest
import torch
import torch.nn.functional as F
from triton_interpreter import interpreted

from hiera_det.modeling import build_hiera
from hiera_det.modeling.hiera import conv2d_as_gemm
from hiera_det.modeling.window_attention import (
    exporting,
    kernel_applies,
    register_kernel,
    static_shapes,
    window_attention,
)

# (windows, queries, keys, heads, head dim): Hiera-B's four small-window shapes, then Hiera-L's head dim,
# a 7x7 window (49 keys) and sizes that are no power of two anywhere
SHAPES = [(6, 64, 64, 1, 96), (5, 16, 64, 2, 96), (7, 16, 16, 2, 96), (9, 4, 16, 4, 96), (3, 16, 64, 2, 72),
          (4, 49, 49, 2, 64), (2, 3, 5, 3, 24)]  # fmt: skip


def qkv_views(windows, q_len, k_len, heads, d, dtype=torch.float32, device="cpu"):
    """q, k, v as the model hands them over: views of one qkv tensor, queries max-pooled when fewer."""
    g = torch.Generator(device=device).manual_seed(windows)
    q, k, v = torch.randn(windows, k_len, 3, heads, d, generator=g, device=device).to(dtype).unbind(2)
    if q_len < k_len:
        q = q[:, : (k_len // q_len) * q_len].reshape(windows, k_len // q_len, q_len, heads, d).amax(1)
    return q, k, v


def sdpa(q, k, v):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def test_on_the_cpu_it_is_sdpa_and_the_model_output_does_not_depend_on_the_flags():
    q, k, v = qkv_views(*SHAPES[1])
    assert not kernel_applies(q, k, v)
    torch.testing.assert_close(window_attention(q, k, v), sdpa(q, k, v), atol=0, rtol=0)
    torch.manual_seed(0)
    model = build_hiera("hiera_tiny_224", num_classes=0, input_size=(64, 64)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        after = model.set_inference_kernels(window_kernel=False, gelu_epilogue=True)(x)
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_video_patch_convolution_by_frames_is_the_3d_convolution():
    """What CUDA video inference runs instead of ``Conv3d`` (cuDNN's 3-D kernels are slow for 3 channels)."""
    torch.manual_seed(0)
    trunk = build_hiera("hiera_base_16x224", num_classes=0, input_size=(4, 32, 32), stages=(1, 1, 1, 1))
    patch_embed = trunk.patch_embed
    with torch.no_grad():
        for shape in [(2, 3, 8, 64, 64), (1, 3, 6, 32, 48)]:
            x = torch.randn(*shape)
            by_frames, conv3d = patch_embed.video_by_frames(x), patch_embed.proj(x)
            torch.testing.assert_close(by_frames, conv3d, atol=1e-5, rtol=1e-5)


def test_patch_convolution_as_one_gemm_is_the_convolution():
    """What 16-bit CUDA inference runs for the patch embedding (image, and video by frames: 9 channels),
    here in fp32 on the CPU at sizes the stride does not divide, with and without a bias."""
    torch.manual_seed(0)
    cases = [((2, 3, 64, 64), (96, 3, 7, 7), 4, 3), ((1, 3, 37, 45), (8, 3, 7, 7), 4, 3),
             ((3, 9, 30, 22), (16, 9, 7, 7), 4, 3),
             ((1, 4, 16, 16), (8, 4, 3, 3), (2, 1), (1, 0))]  # fmt: skip
    for x_shape, w_shape, stride, padding in cases:
        x, w, b = torch.randn(*x_shape), torch.randn(*w_shape), torch.randn(w_shape[0])
        for bias in (b, None):
            ours = conv2d_as_gemm(x, w, bias, stride, padding)
            assert ours.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(ours, F.conv2d(x, w, bias, stride, padding), atol=1e-4, rtol=1e-4)


def test_kernel_matches_sdpa_in_tritons_cpu_interpreter():
    """The Triton kernel itself, run by Triton's CPU interpreter (a fresh process: the interpreter is chosen
    when the kernel is defined), in fp32, at every shape, one and three windows x heads per program."""
    pytest.importorskip("triton")
    script = (
        "import torch\n"
        "from tests.test_window_attention import SHAPES, qkv_views, sdpa\n"
        "from hiera_det.modeling.window_attention import launch\n"
        "worst = 0.0\n"
        "for shape in SHAPES:\n"
        "    q, k, v = qkv_views(*shape)\n"
        "    for per_program in (1, 3):\n"
        "        out = launch(q, k, v, per_program=per_program)\n"
        "        assert out.shape == q.shape and out.is_contiguous()\n"
        "        worst = max(worst, float((out - sdpa(q, k, v)).abs().max()))\n"
        "print(worst)\n"
    )
    assert interpreted(script) < 1e-5


def test_the_export_guard_is_off_under_torch_compile_and_on_under_torch_export():
    """torch.compile keeps the kernel, torch.export drops it (torch 2.11's dynamo answered
    ``torch.compiler.is_exporting()`` with True under torch.compile: every compiled model lost the kernel)."""

    class Guard(torch.nn.Module):
        def forward(self, x):
            return x + 1 if exporting() else x - 1

    x = torch.zeros(2)
    assert not exporting()
    assert torch.compile(Guard(), backend="eager", fullgraph=True)(x).eq(-1).all()
    exported = torch.export.export(Guard(), (x,))
    assert exported.module()(x).eq(1).all()


def test_with_symbolic_sizes_every_kernel_op_computes_with_the_plain_ops():
    """Dynamic shapes give the ops' bodies symbolic sizes, which cannot be Triton constants (on the GPU one
    failed inside the window kernel's launch, session 11): each body then runs the plain ops, here on fake
    tensors with symbolic sizes (a launch would fail on the CPU), and plain sizes are static."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    from hiera_det.modeling import fused_mlp, residual_norm
    from hiera_det.modeling.window_attention import _window_attention_op

    mode = FakeTensorMode(shape_env=ShapeEnv())

    def symbolic(*shape):
        context = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * len(shape))
        return mode.from_tensor(torch.zeros(*shape, dtype=torch.bfloat16), symbolic_context=context)

    q, k = symbolic(6, 16, 2, 32), symbolic(6, 64, 2, 32)
    x, w1, b1, w2, b2 = symbolic(10, 96), symbolic(384, 96), symbolic(384), symbolic(96, 384), symbolic(96)
    assert static_shapes(torch.zeros(3, 4).t()) and not static_shapes(q)
    with mode:
        assert _window_attention_op(q, k, k).shape == q.shape
        assert fused_mlp._linear_gelu_op(x, w1, b1, "rational").shape == (x.shape[0], 384)
        assert fused_mlp._mlp_op(x, w1, b1, w2, b2, "rational").shape == x.shape
        total, normed = residual_norm._add_layer_norm_op(x, x, b2, b2, 1e-6, torch.bfloat16)
    assert total.shape == normed.shape == x.shape and normed.dtype == torch.bfloat16


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
def test_a_model_compiled_with_dynamic_shapes_runs_the_plain_ops():
    """A symbolic size (``torch.compile(dynamic=True)``, ``mark_dynamic``, or dynamo's automatic dynamic
    shapes after a second input size): every inference kernel stands aside, and the outputs are the eager
    model's. Only the batch size is symbolic here: with symbolic heights and widths dynamo alone takes
    minutes over Hiera's layout arithmetic, and a symbolic batch reaches every kernel op just the same."""
    torch.manual_seed(0)
    model = build_hiera("hiera_tiny_224", num_classes=0, input_size=(64, 64)).cuda().eval()
    compiled = torch.compile(model)
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        for batch in (2, 3):
            x = torch.randn(batch, 3, 64, 64, device="cuda")
            torch._dynamo.mark_dynamic(x, 0)
            out, expected = compiled(x)["stage4"].float(), model(x)["stage4"].float()
            assert float((out - expected).norm() / expected.norm()) < 2e-2, batch


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_sdpa_on_the_gpu(shape, dtype, atol):
    q, k, v = qkv_views(*shape, dtype=dtype, device="cuda")
    assert register_kernel()  # a model wanting the kernel registers it; here no model is built
    assert kernel_applies(q, k, v)
    out = window_attention(q, k, v)
    expected = sdpa(*(t.double() for t in (q, k, v)))
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=0)
    # no worse than SDPA itself in this dtype
    assert (out.double() - expected).abs().max() <= 2 * (sdpa(q, k, v).double() - expected).abs().max() + 1e-6


def relative_error(out: dict, ref: dict) -> float:
    return max(float((out[k].float() - ref[k]).abs().max() / ref[k].abs().max()) for k in ref)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_model_with_the_kernel_is_as_close_to_fp32_as_sdpa_and_training_keeps_sdpa(mode):
    """bf16 under torch.compile (and CUDA graphs) with the kernel lands as close to the fp32 SDPA model as
    eager bf16 SDPA does; with autograd on, the kernel stands aside."""
    torch.manual_seed(0)
    model = build_hiera("hiera_tiny_224", num_classes=0, input_size=(224, 224)).cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = model.set_inference_kernels(window_kernel=False)(x)
        with torch.autocast("cuda", torch.bfloat16):
            sdpa_error = relative_error(model(x), ref)
            compiled = torch.compile(model.set_inference_kernels(window_kernel=True), mode=mode, dynamic=False)
            for _ in range(3):  # CUDA graphs record on a later call
                out = compiled(x)
    kernel_error = relative_error(out, ref)
    assert kernel_error <= 2 * sdpa_error + 1e-3, (kernel_error, sdpa_error)
    q, k, v = qkv_views(*SHAPES[0], device="cuda")
    assert not kernel_applies(q.requires_grad_(), k, v)  # autograd on: SDPA, which has a backward


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_torch_compile_launches_the_kernel(mode):
    """The compiled graph holds the op (not SDPA), and its output is the eager kernel's within bf16 rounding
    (the compiled launch is specialized differently: on an H100, 1 element in 15,360 differed by one ulp)."""
    assert register_kernel()
    q, k, v = qkv_views(*SHAPES[1], dtype=torch.bfloat16, device="cuda")
    targets = []

    def recording_backend(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes)
        return torch._inductor.compile(gm, example_inputs)

    with torch.no_grad():
        compiled = torch.compile(window_attention, backend=recording_backend, fullgraph=True, dynamic=False)
        out = compiled(q, k, v)
        graphed = torch.compile(window_attention, mode=mode, fullgraph=True, dynamic=False)
        for _ in range(3):  # CUDA graphs record on a later call
            graphed_out = graphed(q, k, v)
    assert any("window_attention" in t for t in targets), targets
    assert not any("scaled_dot_product" in t for t in targets), targets
    eager = window_attention(q, k, v)
    torch.testing.assert_close(out, eager)  # bf16 defaults: rtol 1.6e-2, atol 1e-5
    torch.testing.assert_close(graphed_out, eager)


@pytest.mark.gpu
@gpu
def test_tanh_gelu_epilogue_is_bf16_only_and_lands_as_close_to_fp32_as_erf():
    torch.manual_seed(0)
    model = build_hiera("hiera_tiny_224", num_classes=0, input_size=(224, 224)).cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = model(x)
        tanh_fp32 = model.set_inference_kernels(gelu_epilogue=True)(x)  # fp32: the flag stands aside
        with torch.autocast("cuda", torch.bfloat16):
            tanh_error = relative_error(model(x), ref)
            erf_error = relative_error(model.set_inference_kernels(gelu_epilogue=False)(x), ref)
    for name in ref:
        torch.testing.assert_close(tanh_fp32[name], ref[name], atol=1e-6, rtol=1e-6)
    assert tanh_error <= 2 * erf_error, (tanh_error, erf_error)
