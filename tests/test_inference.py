"""``hiera_det.inference.CudaGraphRunner``: compiled inference replayed from CUDA graphs."""

import pytest
import torch

from hiera_det.inference import CudaGraphRunner
from hiera_det.modeling import build_hiera

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_without_cuda_the_runner_says_to_call_the_model_directly():
    with pytest.raises(RuntimeError, match="no CUDA device; call the model directly"):
        CudaGraphRunner(torch.nn.Linear(2, 2).eval())


@pytest.mark.gpu
@gpu
def test_replays_equal_the_compiled_model_and_short_batches_reuse_a_larger_graph():
    torch.manual_seed(0)
    model = build_hiera("hiera_tiny_224", num_classes=0, input_size=(64, 64)).cuda().eval()
    with pytest.raises(ValueError, match="call .eval"):
        CudaGraphRunner(build_hiera("hiera_tiny_224", num_classes=0, input_size=(64, 64)))
    runner = CudaGraphRunner(model, max_graphs=2)
    x = torch.randn(4, 3, 64, 64, device="cuda")
    y = torch.randn(4, 3, 64, 64, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        expected_x = {k: v.clone() for k, v in torch.compile(model, dynamic=False)(x).items()}
        expected_y = {k: v.clone() for k, v in model(y).items()}
        out = runner(x)
        kept = {k: v.clone() for k, v in out.items()}
        again = runner(y.cpu())  # same shape from host memory: copied in, same graph
        assert again["stage4"].data_ptr() == out["stage4"].data_ptr()  # the next call overwrote out
        again = {k: v.clone() for k, v in again.items()}
        short = runner(x[:3])  # padded to the captured batch of 4, cut back to 3
        assert runner.num_graphs == 1 and short["stage1"].shape[0] == 3
        kept_short = short["stage4"].clone()
        wide = runner(torch.randn(2, 3, 128, 128, device="cuda"))  # a second shape: a second graph
        assert runner.num_graphs == 2 and wide["stage4"].shape[-1] == 4
        with pytest.raises(RuntimeError, match="already holds 2 graphs.*raise max_graphs"):
            runner(torch.randn(2, 3, 96, 96, device="cuda"))
    for name, value in expected_x.items():  # the same kernels; cuBLAS may pick others while capturing
        assert relative_error(kept[name], value) < 1e-2, name
    assert relative_error(kept_short, expected_x["stage4"][:3]) < 1e-2
    assert relative_error(again["stage4"], expected_y["stage4"]) < 2e-2  # compiled against eager, bf16


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.gpu
@gpu
def test_eager_capture_under_autocast_does_not_read_autocasts_weight_cache():
    """``compile=False`` captures eager calls; autocast's cache of bf16 weight copies is emptied after each
    call, so the graph must hold its own casts: replays after the cache is gone give the eager outputs."""
    torch.manual_seed(0)
    model = (
        torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8)).cuda().eval()
    )
    runner = CudaGraphRunner(model, compile=False)
    x = torch.randn(16, 64, device="cuda")
    with torch.no_grad():
        with torch.autocast("cuda", torch.bfloat16):
            expected = model(x)
            runner(x)
        torch.cuda.empty_cache()
        torch.randn(1 << 22, device="cuda").mul_(3)  # reuse whatever was freed
        with torch.autocast("cuda", torch.bfloat16):
            out = runner(x).clone()
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
