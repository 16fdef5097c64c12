"""MAE pre-training model: parity with the official ``hiera_mae`` and the masking invariants."""

from __future__ import annotations

import math

import pytest
import torch

from hiera_det.modeling.mae import MaskedAutoencoderHiera

TOLERANCE = 1e-5
TINY = dict(embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), decoder_embed_dim=16, decoder_depth=1,
            decoder_num_heads=2, q_pool=2)
VIDEO = dict(input_size=(4, 64, 64), q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7),
             patch_stride=(2, 4, 4), patch_padding=(1, 3, 3))


def tiny_mae(video: bool, **kw) -> MaskedAutoencoderHiera:
    if video:
        return MaskedAutoencoderHiera(**TINY, **{**VIDEO, **kw}, pos_embed="separate")
    return MaskedAutoencoderHiera(**TINY, **{"input_size": (64, 64), **kw})


@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
def test_parity_with_official_hiera_mae(video):
    official = pytest.importorskip("hiera.hiera_mae")
    torch.manual_seed(0)
    if video:
        ref = official.MaskedAutoencoderHiera(**TINY, **VIDEO, sep_pos_embed=True)
    else:
        ref = official.MaskedAutoencoderHiera(**TINY, input_size=(64, 64))
    ours = tiny_mae(video)
    ours.load_state_dict(ref.state_dict(), strict=True)  # the official layout, decoder included
    ref.eval(), ours.eval()
    x = torch.randn(2, 3, *ours.input_size)
    torch.manual_seed(1)
    ref_mask = ref.get_random_mask(x, 0.5)
    torch.manual_seed(1)
    our_mask = ours.random_mask(2, 0.5)
    assert torch.equal(ref_mask, our_mask), "the same seed must draw the same mask"
    with torch.no_grad():
        loss, pred, label, _ = ref(x, mask=ref_mask)
        out = ours(x, visible=our_mask)
    hidden = ~out.token_visible
    assert abs(loss.item() - out.loss.item()) <= TOLERANCE
    assert (pred - out.pred[hidden]).abs().max().item() <= TOLERANCE
    assert (label - out.target[hidden]).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
def test_masking_invariants(video):
    model = tiny_mae(video, input_size=(8, 64, 64)) if video else tiny_mae(False)
    assert model.mask_ratio == (0.9 if video else 0.6)
    visible = model.random_mask(3, generator=torch.Generator().manual_seed(0))
    keep = int(model.num_units * (1 - model.mask_ratio))
    assert keep >= 1 and visible.shape == (3, model.num_units) and (visible.sum(1) == keep).all()

    # the blocks receive the visible units only: [B, keep, tokens per unit, C], no zeroed hidden units
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    x = torch.randn(3, 3, *model.input_size)
    model.eval()
    with torch.no_grad():
        out = model(x, visible=visible)
    unit_tokens = math.prod(model.unit_size)
    assert seen[0][:3] == (3, keep, unit_tokens)
    final_unit_tokens = math.prod(model.final_unit_size)
    assert out.token_visible.sum(1).tolist() == [keep * final_unit_tokens] * 3

    # units are whole: every pixel of a hidden unit is hidden, so changing those pixels leaves the encoder
    # output unchanged (the overlapping patch kernel included), and every visible pixel matters
    pixel_visible = model.token_mask(visible, [u * p for u, p in zip(model.unit_size, model.patch_stride)])
    assert pixel_visible.shape[1:] == model.input_size
    assert pixel_visible.float().mean().item() == pytest.approx(keep / model.num_units)
    changed = x + (~pixel_visible).unsqueeze(1).float() * 5.0
    with torch.no_grad():
        torch.testing.assert_close(model.forward_encoder(x, visible), model.forward_encoder(changed, visible))


def test_bad_mask_ratio_and_mask():
    for ratio in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="mask_ratio must be strictly between 0 and 1"):
            tiny_mae(False, mask_ratio=ratio)
    model = tiny_mae(False)
    with pytest.raises(ValueError, match="hides all"):
        model.random_mask(1, 0.99)
    with pytest.raises(ValueError, match="same, non-zero number"):
        model(torch.randn(2, 3, 64, 64), visible=torch.tensor([[True] * 4, [True] * 2 + [False] * 2]))
    with pytest.raises(ValueError, match="bool tensor"):
        model(torch.randn(1, 3, 64, 64), visible=torch.ones(1, 3, dtype=torch.bool))


def test_windowed_layout_is_refused():
    with pytest.raises(ValueError, match="mask-unit layout"):
        MaskedAutoencoderHiera(**TINY, input_size=(64, 64), attention="window", window_spec=(8, 4, 4, 2))


def test_unpatchify_inverts_targets():
    model = tiny_mae(False, norm_pix_loss=False)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model.unpatchify(model.pixel_targets(x)), x)


def test_official_mae_checkpoint_loads_with_decoder_and_trains(tmp_path):
    from hiera_det.checkpoint import load_checkpoint

    official = pytest.importorskip("hiera.hiera_mae")
    torch.manual_seed(0)
    ref = official.MaskedAutoencoderHiera(**TINY, input_size=(64, 64))
    path = tmp_path / "mae_hiera_tiny.pth"
    torch.save({"model_state": ref.state_dict()}, path)  # the layout of the released mae_hiera_* files
    ours = tiny_mae(False)
    report = load_checkpoint(ours, str(path), strict=True)
    assert not report.dropped and not report.missing_keys and not report.unexpected_keys
    assert "decoder_pred.weight" in report.loaded_keys and "mask_token" in report.loaded_keys
    x = torch.randn(2, 3, 64, 64)
    visible = ours.random_mask(2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert abs(ours(x, visible).loss.item() - ref(x, mask=visible)[0].item()) <= TOLERANCE
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.05)
    first = ours(x, visible).loss
    first.backward()
    optimizer.step()
    assert ours(x, visible).loss.item() < first.item()


@pytest.mark.parametrize("target", ["image", "image_window", "video"])
def test_our_mae_checkpoint_loads_into_trunks_dropping_the_decoder(target):
    from hiera_det.checkpoint import load_checkpoint
    from hiera_det.modeling import Hiera

    video = target == "video"
    mae = tiny_mae(video)
    written = {"model": {f"mae.{k}": v for k, v in mae.state_dict().items()}, "iteration": 10}
    trunk_args = dict(embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), num_classes=0)
    if video:
        geometry = {**VIDEO, "input_size": (8, 64, 64)}
        trunk = Hiera(**trunk_args, **geometry, pos_embed="separate")
    elif target == "image_window":
        trunk = Hiera(**trunk_args, input_size=(64, 64), attention="window", window_spec=(8, 4, 4, 2))
    else:
        trunk = Hiera(**trunk_args, input_size=(64, 64))
    report = load_checkpoint(trunk, written, strict=True)
    dropped = report.dropped["MAE decoder, mask token, fusion heads and encoder_norm"]
    assert "decoder_pred.weight" in dropped and "mask_token" in dropped and "encoder_norm.weight" in dropped
    assert "MAE decoder" in str(report)
    torch.testing.assert_close(trunk.blocks[1].attn.qkv.weight, mae.blocks[1].attn.qkv.weight)
