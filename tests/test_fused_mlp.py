"""The fused MLP kernels (hiera_det/modeling/fused_mlp.py) compute the MLP's function (erf GELU), and the
model takes them only for 16-bit inference on CUDA."""

import pytest
import torch
import torch.nn.functional as F
from test_window_attention import relative_error
from triton_interpreter import interpreted

from hiera_det.modeling import build_hiera, fused_mlp

# (rows, dim, hidden): Hiera's widths at few rows, then sizes that divide no tile (rows, dim and hidden)
SHAPES = [(200, 96, 384), (72, 192, 768), (40, 384, 1536), (70, 40, 160), (33, 24, 100)]


def mlp_params(rows, dim, hidden, dtype=torch.float32, device="cpu"):
    g = torch.Generator(device=device).manual_seed(rows + dim)
    x = torch.randn(rows, dim, generator=g, device=device)
    w1 = torch.randn(hidden, dim, generator=g, device=device) * dim**-0.5
    b1 = torch.randn(hidden, generator=g, device=device) * 0.5
    w2 = torch.randn(dim, hidden, generator=g, device=device) * hidden**-0.5
    b2 = torch.randn(dim, generator=g, device=device) * 0.5
    return tuple(t.to(dtype) for t in (x, w1, b1, w2, b2))


def unfused(x, w1, b1, w2, b2):
    hidden = F.gelu(F.linear(x, w1, b1))
    return hidden, F.linear(hidden, w2, b2)


def test_kernels_match_the_mlp_in_tritons_cpu_interpreter():
    """Both kernels, run by Triton's CPU interpreter in fp32, at every shape and two tilings (one of them
    with a K and a hidden tile that do not divide the widths), weights as stored and transposed."""
    pytest.importorskip("triton")
    script = (
        "import torch\n"
        "from tests.test_fused_mlp import SHAPES, mlp_params, unfused\n"
        "from hiera_det.modeling.fused_mlp import MLP_MAX_DIM, launch_linear_gelu, launch_mlp\n"
        "worst = 0.0\n"
        "for shape in SHAPES:\n"
        "    x, w1, b1, w2, b2 = mlp_params(*shape)\n"
        "    hidden, out = unfused(x, w1, b1, w2, b2)\n"
        "    for lg, m in (((32, 32, 16, 4, 2), (32, 32, 4, 2)), ((64, 64, 32, 4, 2), (16, 64, 4, 2))):\n"
        "        for w in (w1, w1.t().contiguous().t()):\n"
        "            y = launch_linear_gelu(x, w, b1, lg)\n"
        "            assert y.shape == hidden.shape\n"
        "            worst = max(worst, float((y - hidden).abs().max()))\n"
        "        if shape[1] <= MLP_MAX_DIM:\n"
        "            y = launch_mlp(x, w1, b1, w2, b2, m)\n"
        "            assert y.shape == out.shape\n"
        "            worst = max(worst, float((y - out).abs().max()))\n"
        "assert launch_linear_gelu(x[:0], w1, b1).shape == (0, w1.shape[0])  # no rows: no launch\n"
        "assert launch_mlp(x[:0], w1, b1, w2, b2).shape == (0, x.shape[1])\n"
        "print(worst)\n"
    )
    assert interpreted(script) < 1e-5


def test_both_gelu_forms_are_erf_gelu_to_fp32_precision_in_tritons_cpu_interpreter():
    """The GELU inside the kernels, on a dense grid over [-12, 12] and beyond the rational form's clamp,
    against the fp64 erf GELU: the rational form within 3e-7 of ``max(|x|, 1)`` (libdevice's erf within
    1.5e-7), four orders of magnitude below a 16-bit output's rounding."""
    pytest.importorskip("triton")
    script = (
        "import torch\n"
        "from hiera_det.modeling.fused_mlp import GELU_FORMS, launch_linear_gelu\n"
        "far = torch.tensor([-1e4, -60.0, 1e-30, 60.0, 1e4] * 16)\n"
        "x = torch.cat([torch.linspace(-12, 12, 16 * 20000), far])\n"
        "x = x[: x.numel() // 16 * 16].view(-1, 16)\n"
        "ref = 0.5 * x.double() * (1 + torch.special.erf(x.double() / 2**0.5))\n"
        "errors = []\n"
        "for form in GELU_FORMS:\n"
        "    y = launch_linear_gelu(x, torch.eye(16), torch.zeros(16), (64, 16, 16, 4, 2), form)\n"
        "    errors.append(float(((y.double() - ref).abs() / x.double().abs().clamp(min=1)).max()))\n"
        "assert GELU_FORMS == ('rational', 'erf') and errors[1] < 1.5e-7, errors\n"
        "print(errors[0])\n"
    )
    assert interpreted(script) < 3e-7


def test_the_whole_mlp_kernel_refuses_wide_layers():
    x, w1, b1, w2, b2 = mlp_params(4, fused_mlp.MLP_MAX_DIM + 8, 16)
    with pytest.raises(ValueError, match="at most"):
        fused_mlp.launch_mlp(x, w1, b1, w2, b2)


def test_route_takes_the_sweeps_fastest_path_and_no_badly_padded_whole_mlp_tile():
    """Hiera-B's widths take what the H100 sweep measured fastest; Hiera-L's 144 would pad the whole-MLP
    kernel's tile to 256 columns, so it takes fc1 + GELU."""
    assert [fused_mlp.route(d, 4 * d) for d in (96, 192, 384, 768)] == [
        "mlp",
        "mlp",
        "linear_gelu",
        "unfused",
    ]
    assert fused_mlp.route(144, 576) == "linear_gelu"


def test_eager_calls_launch_the_kernels_only_for_large_hidden_tensors_compiled_code_always():
    """An eager launch costs host time (Mask R-CNN on one 1024 image ran slower fused); compiled code launches
    the kernels as cheaply as its own."""
    assert not fused_mlp.worth_launching(65536, 384)  # one 1024 image, stage 1
    assert fused_mlp.worth_launching(128 * 3136, 384)  # Hiera-B 224 at batch 128, stage 1

    def launched(x):
        return x + 1 if fused_mlp.worth_launching(1, 1) else x - 1

    assert torch.compile(launched, backend="eager", fullgraph=True)(torch.zeros(1)).item() == 1


def test_gelu_form_is_checked_and_set_on_every_block():
    model = build_hiera("hiera_tiny_224", num_classes=0, input_size=(64, 64))
    assert {block.mlp.gelu_form for block in model.blocks} == {fused_mlp.GELU_FORM}
    model.set_inference_kernels(gelu_form="erf")
    assert {block.mlp.gelu_form for block in model.blocks} == {"erf"}
    with pytest.raises(ValueError, match="unknown gelu_form 'tanh'; choose one of rational, erf"):
        model.set_inference_kernels(gelu_form="tanh")


def test_on_the_cpu_the_mlp_is_unfused_and_the_flag_does_not_change_outputs():
    x, *params = mlp_params(8, 96, 384)
    assert not fused_mlp.kernel_applies(x, *params)
    torch.manual_seed(0)
    model = build_hiera("hiera_tiny_224", num_classes=0, input_size=(64, 64)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
        after = model.set_inference_kernels(fused_mlp=False)(images)
    for name in before:
        assert torch.equal(before[name], after[name]), name


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("form", fused_mlp.GELU_FORMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES + [(128 * 196, 384, 1536)])
def test_kernels_are_as_close_to_fp32_as_the_unfused_mlp_on_the_gpu(shape, dtype, form):
    assert fused_mlp.register_kernels()  # a model wanting the kernels registers them; here none is built
    params = mlp_params(*shape, dtype=dtype, device="cuda")
    assert fused_mlp.kernel_applies(*params)
    hidden_ref, out_ref = unfused(*(p.double() for p in params))
    with torch.no_grad():
        hidden_16, out_16 = unfused(*params)
        hidden = torch.ops.hiera_det.linear_gelu(*params[:3], form)
        assert hidden.dtype == dtype and hidden.shape == hidden_ref.shape
        err, err_16 = ((h.double() - hidden_ref).abs().max() for h in (hidden, hidden_16))
        assert err <= 1.5 * err_16 + 1e-3, (err, err_16)
        if shape[1] <= fused_mlp.MLP_MAX_DIM:
            out = torch.ops.hiera_det.mlp(*params, form)
            err, err_16 = ((o.double() - out_ref).abs().max() for o in (out, out_16))
            assert err <= 1.5 * err_16 + 1e-3, (err, err_16)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_model_runs_both_kernels_as_close_to_fp32_as_unfused_and_training_keeps_the_modules(mode):
    """Hiera-T (widths 96-768: the whole-MLP kernel in stages 1-2, fc1 + GELU in 3-4) under torch.compile
    (and CUDA graphs): the graph holds both ops, and bf16 lands as close to the fp32 model as unfused bf16."""
    torch.manual_seed(0)
    model = build_hiera("hiera_tiny_224", num_classes=0, input_size=(224, 224)).cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    targets = []

    def recording_backend(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes)
        return torch._inductor.compile(gm, example_inputs)

    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = model(x)  # fp32: the kernels stand aside
        with torch.autocast("cuda", torch.bfloat16):
            unfused_error = relative_error(model.set_inference_kernels(fused_mlp=False)(x), ref)
            model.set_inference_kernels(fused_mlp=True)
            # static shapes: after other tests compiled Hiera at other sizes, dynamo's automatic dynamic
            # shapes would give the ops symbolic sizes, and their bodies would run the plain ops
            torch.compile(model, backend=recording_backend, dynamic=False)(x)
            compiled = torch.compile(model, mode=mode, dynamic=False)
            for _ in range(3):  # CUDA graphs record on a later call
                out = compiled(x)
    assert any("hiera_det.mlp" in t for t in targets) and any("linear_gelu" in t for t in targets), targets
    fused_error = relative_error(out, ref)
    assert fused_error <= 1.5 * unfused_error + 1e-3, (fused_error, unfused_error)
    with torch.autocast("cuda", torch.bfloat16):
        y = model(x[:1])["stage4"]
    assert y.requires_grad  # autograd on: the plain modules, which have a backward
