"""The Hiera core on its own: shapes, strides, layouts, input rules, position embeddings, training options."""

import pytest
import torch

from hiera_det.modeling import ARCHITECTURES, build_hiera
from hiera_det.modeling.pos_embed import resize_tokens
from hiera_det.modeling.token_layout import (
    GLOBAL,
    MASK_UNIT,
    SpatialLayout,
    SpatialPartition,
    UnrolledLayout,
    UnrolledPartition,
)

TINY = dict(stages=(1, 1, 1, 1), num_classes=0)  # the real tiny model's widths, one block per stage


def test_every_official_name_builds_with_its_published_widths():
    widths = {
        "hiera_tiny_224": 96,
        "hiera_small_224": 96,
        "hiera_base_224": 96,
        "hiera_base_plus_224": 112,
        "hiera_large_224": 144,
        "hiera_huge_224": 256,
    }
    params = {}
    for name in ARCHITECTURES:
        with torch.device("meta"):  # builds the full module tree without allocating weights
            model = build_hiera(name)
        size = name.removeprefix("hiera_").rsplit("_", 1)[0]
        assert model.stage_dims[0] == widths[f"hiera_{size}_224"]
        assert model.stage_dims == [model.stage_dims[0] * 2**i for i in range(4)]
        params[name] = sum(p.numel() for p in model.parameters())
    # published sizes (Hiera paper, Table 2): T 28M, S 35M, B 52M, B+ 70M, L 214M, H 673M
    for name, millions in [("hiera_tiny_224", 28), ("hiera_base_224", 52), ("hiera_huge_224", 673)]:
        assert params[name] / 1e6 == pytest.approx(millions, rel=0.03), name
    assert sum(ARCHITECTURES["hiera_base_224"]["stages"]) == 24
    assert sum(ARCHITECTURES["hiera_large_224"]["stages"]) == 48
    assert ARCHITECTURES["hiera_base_16x224"]["input_size"] == (16, 224, 224)


@pytest.mark.parametrize("size", [(224, 224), (256, 384), (96, 352)])
@pytest.mark.parametrize("attention", ["mask_unit", "window"])
def test_image_stage_shapes_and_strides(size, attention):
    model = build_hiera("hiera_tiny_224", attention=attention, **TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert list(out) == ["stage1", "stage2", "stage3", "stage4"]
    assert model.stage_strides == [4, 8, 16, 32]
    for (name, feat), dim, stride in zip(out.items(), model.stage_dims, model.stage_strides):
        assert feat.shape == (2, dim, size[0] // stride, size[1] // stride), name
        assert torch.isfinite(feat).all()


def test_video_stage_shapes():
    model = build_hiera("hiera_base_16x224", input_size=(4, 64, 64), **TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 4, 64, 64))
    assert [tuple(f.shape) for f in out.values()] == [
        (1, 96, 2, 16, 16),
        (1, 192, 2, 8, 8),
        (1, 384, 2, 4, 4),
        (1, 768, 2, 2, 2),
    ]


def test_logits_on_request_and_clear_error_without_head():
    model = build_hiera("hiera_tiny_224", stages=(1, 1, 1, 1), num_classes=7).eval()
    out = model(torch.randn(2, 3, 64, 64), return_logits=True)
    assert out["logits"].shape == (2, 7)
    features_only = build_hiera("hiera_tiny_224", **TINY)
    with pytest.raises(ValueError, match="num_classes=0"):
        features_only(torch.randn(1, 3, 64, 64), return_logits=True)


@pytest.mark.parametrize("shape", [(1, 3, 100, 224), (1, 3, 224, 33), (1, 3, 224), (1, 1, 224, 224)])
def test_bad_input_gets_a_clear_error(shape):
    model = build_hiera("hiera_tiny_224", **TINY)
    with pytest.raises(ValueError, match="hiera_tiny_224"):
        model(torch.randn(*shape))


def test_size_error_names_the_rule_and_the_fix():
    model = build_hiera("hiera_tiny_224", **TINY)
    with pytest.raises(ValueError, match=r"H%32==0 x W%32==0.*pad"):
        model(torch.randn(1, 3, 100, 224))


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="hiera_base_224"):
        build_hiera("hiera_gigantic_224")
    with pytest.raises(ValueError, match="mask_unit"):
        build_hiera("hiera_tiny_224", attention="swin")
    with pytest.raises(ValueError, match="image models"):
        build_hiera("hiera_base_16x224", attention="window")


def test_unroll_and_reroll_are_inverse_permutations():
    layout = UnrolledLayout((2, 2), levels=3)
    grid = torch.arange(2 * 64 * 96 * 5, dtype=torch.float32).reshape(2, 64, 96, 5)
    tokens, coarse = layout.enter(grid)
    assert tokens.shape == (2, 8 * 12, 64, 5) and coarse == (8, 12)
    assert torch.equal(layout.to_grid(tokens, coarse, pooled=0), grid)
    # each row is one 8x8 mask unit of the grid
    unit = tokens[0, 12 + 3]  # mask unit (1, 3)
    expected = grid[0, 8:16, 24:32].reshape(64, 5)
    assert torch.equal(unit.sort(dim=0).values, expected.sort(dim=0).values)
    # one pool takes the max over 2x2 neighbours, and the result is still a grid in order
    pooled = layout.pool(tokens)
    reference = grid.view(2, 32, 2, 48, 2, 5).amax(dim=(2, 4))
    assert torch.equal(layout.to_grid(pooled, coarse, pooled=1), reference)


def test_partition_records_the_cut_and_merge_undoes_it():
    unrolled = UnrolledLayout((2, 2), levels=2)
    tokens = torch.randn(2, 6, 16, 4)
    seqs, partition = unrolled.partition(tokens, MASK_UNIT)
    assert partition == UnrolledPartition(batch=2, units=6, units_per_sequence=1) and seqs.shape == (12, 16, 4)
    seqs, partition = unrolled.partition(tokens, GLOBAL)
    assert partition.units_per_sequence == 6 and seqs.shape == (2, 96, 4)
    assert torch.equal(unrolled.merge(seqs, partition, pooled=False), tokens)

    spatial = SpatialLayout((2, 2))
    grid = torch.randn(2, 10, 6, 4)
    seqs, partition = spatial.partition(grid, 4)  # 10x6 does not divide into 4x4 windows: padded to 12x8
    assert partition == SpatialPartition(2, 10, 6, padded_height=12, padded_width=8, window=4)
    assert seqs.shape == (2 * 3 * 2, 16, 4)
    assert torch.equal(spatial.merge(seqs, partition, pooled=False), grid)
    # pooled queries come back on the pooled grid: 5x3 inside the padded 6x4
    q = spatial.pool_q(seqs.unsqueeze(2), partition)
    assert spatial.merge(q.squeeze(2), partition, pooled=True).shape == (2, 5, 3, 4)


def test_pos_embed_kinds_are_checked_against_the_model():
    with pytest.raises(ValueError, match="choose one of"):
        build_hiera("hiera_tiny_224", pos_embed="rope", **TINY)
    with pytest.raises(ValueError, match="for video models"):
        build_hiera("hiera_tiny_224", pos_embed="separate", **TINY)
    with pytest.raises(ValueError, match="for image models"):
        build_hiera("hiera_base_16x224", pos_embed="absolute_win", **TINY)
    with pytest.raises(ValueError, match="need window_spec"):
        build_hiera("hiera_tiny_224", pos_embed="absolute_win", **TINY)


def test_checkpoint_resizing_keeps_the_dtype_and_is_exact_at_the_same_grid():
    torch.manual_seed(0)
    pe = torch.randn(1, 6 * 4, 8).half()
    assert torch.equal(resize_tokens(pe, (6, 4), (6, 4)), pe)
    resized = resize_tokens(pe, (6, 4), (9, 5))
    assert resized.shape == (1, 45, 8) and resized.dtype == torch.float16


def test_pos_embed_is_identity_at_stored_grid_and_resizes_smoothly():
    model = build_hiera("hiera_tiny_224", **TINY)
    stored = model.pos_embed.detach().transpose(1, 2).reshape(1, -1, 56, 56)
    assert torch.equal(model.pos_embed_for((56, 56)).detach(), stored)
    resized = model.pos_embed_for((64, 96))
    assert resized.shape == (1, 96, 64, 96)
    window = build_hiera("hiera_tiny_224", attention="window", **TINY)
    assert window.pos_embed_for((25, 30)).shape == (1, 96, 25, 30)  # not a multiple of the 8-window


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = build_hiera("hiera_tiny_224", stages=(1, 1, 2, 1), num_classes=0)
    ckpt = build_hiera("hiera_tiny_224", stages=(1, 1, 2, 1), num_classes=0, activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for model in (plain, ckpt):
        model.train()
        loss = sum(f.square().mean() for f in model(x).values())
        loss.backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_drop_path_is_linear_in_depth_and_off_in_eval():
    model = build_hiera("hiera_tiny_224", stages=(1, 1, 2, 1), num_classes=0, drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "p", 0.0) for b in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert rates == sorted(rates)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x)["stage4"], model(x)["stage4"])


def test_outputs_are_channels_last_in_memory():
    model = build_hiera("hiera_tiny_224", **TINY).eval()
    out = model(torch.randn(1, 3, 64, 64))
    assert out["stage1"].is_contiguous(memory_format=torch.channels_last)


def test_core_and_weight_loader_work_without_detectron2(tmp_path):
    """``hiera_det.modeling`` imports only torch; without detectron2, importing hiera_det still works."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["detectron2"] = None  # as if it were not installed: any import of it fails
import torch, hiera_det
from hiera_det.modeling import build_hiera
from hiera_det.checkpoint import load_checkpoint
m = build_hiera("hiera_tiny_224", stages=(1, 1, 1, 1), num_classes=0)
report = load_checkpoint(m, {"model_state": m.state_dict()})
out = m(torch.randn(1, 3, 64, 64))
assert out["stage4"].shape == (1, 768, 2, 2), out["stage4"].shape
assert not any(k.startswith("detectron2") and sys.modules[k] is not None for k in sys.modules)
print("ok", report.format)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")


def test_conv_stem_gives_the_patch_stems_grids_and_trains():
    patch = build_hiera("hiera_tiny_224", stages=(1, 1, 1, 1), num_classes=0)
    conv = build_hiera("hiera_tiny_224", stages=(1, 1, 1, 1), num_classes=0, stem="conv")
    assert conv.patch_embed.stem is not None and patch.patch_embed.stem is None
    # official checkpoints keep loading into the default stem: its key is unchanged
    assert "patch_embed.proj.weight" in patch.state_dict() and "patch_embed.stem.0.weight" in conv.state_dict()
    x = torch.randn(2, 3, 64, 96)
    out = conv(x)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in patch(x).items()}
    out["stage4"].sum().backward()
    assert conv.patch_embed.stem[0].weight.grad.abs().sum() > 0


def test_conv_stem_refuses_video_other_strides_and_mae():
    from hiera_det.modeling import build_mae

    with pytest.raises(ValueError, match="images at patch stride 4"):
        build_hiera("hiera_base_16x224", stages=(1, 1, 1, 1), stem="conv")
    with pytest.raises(ValueError, match="unknown stem 'deep'"):
        build_hiera("hiera_tiny_224", stem="deep")
    with pytest.raises(ValueError, match="needs stem='patch'"):
        build_mae("hiera_tiny_224", stages=(1, 1, 1, 1), stem="conv")


def test_patch_stem_checkpoint_into_a_conv_stem_trunk_says_which_key_to_set(tmp_path):
    from hiera_det.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "patch_stem.pth"
    torch.save(build_hiera("hiera_tiny_224", stages=(1, 1, 1, 1), num_classes=0).state_dict(), path)
    conv = build_hiera("hiera_tiny_224", stages=(1, 1, 1, 1), num_classes=0, stem="conv")
    with pytest.raises(CheckpointError, match="MODEL.HIERA.STEM patch"):
        load_checkpoint(conv, str(path), strict=False)
