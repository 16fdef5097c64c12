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


def test_encoder_init_trunk_keeps_hieras_initialisation():
    """``encoder_init="trunk"``: the encoder starts as a random-init trunk does (trunc-normal 0.02), the decoder
    stays xavier; the official "xavier" makes a narrow encoder's weights several times larger."""
    from hiera_det.modeling import Hiera

    def encoder_rms(model):
        weights = [m.weight for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
        return torch.cat([w.detach().flatten() for w in weights]).pow(2).mean().sqrt().item()

    torch.manual_seed(0)
    trunk = tiny_mae(False, encoder_init="trunk")
    xavier = tiny_mae(False)
    scratch = Hiera(embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), input_size=(64, 64))
    assert encoder_rms(trunk) == pytest.approx(encoder_rms(scratch), rel=0.15)
    assert encoder_rms(xavier) > 3 * encoder_rms(trunk)
    for model in (trunk, xavier):  # the decoder: xavier either way
        bound = (6 / sum(model.decoder_pred.weight.shape)) ** 0.5
        assert model.decoder_pred.weight.abs().max() <= bound and model.decoder_pred.weight.std() > bound / 3
    w = trunk.patch_embed.proj.weight  # the convolution's own initialisation, as in Hiera
    assert w.abs().max() <= w[0].numel() ** -0.5
    with pytest.raises(ValueError, match="encoder_init must be one of"):
        tiny_mae(False, encoder_init="kaiming")


def test_time_masking_hides_whole_time_steps():
    model = tiny_mae(True, input_size=(8, 64, 64), mask_ratio=0.5, mask_mode="time")
    assert model.unit_grid == (4, 2, 2)
    visible = model.random_mask(6, generator=torch.Generator().manual_seed(0)).view(6, *model.unit_grid)
    per_step = visible.flatten(2)
    assert ((per_step.all(-1)) | (~per_step.any(-1))).all(), "a time step is wholly visible or wholly hidden"
    assert (per_step.all(-1).sum(1) == 2).all()
    assert len({tuple(v.all(-1).flatten().tolist()) for v in per_step}) > 1, "steps drawn per sample"
    out = model(torch.randn(2, 3, 8, 64, 64))
    assert out.loss.isfinite() and out.visible.sum(1).tolist() == [8, 8]
    with pytest.raises(ValueError, match="hides all 4 time steps"):
        model.random_mask(1, 0.9)
    with pytest.raises(ValueError, match="needs a video model"):
        tiny_mae(False, mask_mode="time")
    with pytest.raises(ValueError, match="mask_mode must be one of"):
        tiny_mae(True, mask_mode="tubes")


WINDOW = dict(attention="window", window_spec=(8, 4, 4, 2), global_blocks=(4,))


def test_windowed_masking_invariants():
    """Dense masking of the windowed layout: every token enters the encoder, hidden units as the mask token."""
    model = tiny_mae(False, input_size=(96, 64), **WINDOW)
    assert model.windowed and model.mask_ratio == 0.6 and model.num_units == 6
    visible = model.random_mask(3, generator=torch.Generator().manual_seed(0))
    keep = int(model.num_units * (1 - model.mask_ratio))
    assert (visible.sum(1) == keep).all()

    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(3, 3, *model.input_size)
    model.eval()
    with torch.no_grad():
        out = model(x, visible=visible)
    tokens = seen[0]
    assert tokens.shape[:3] == (3, 24, 16)  # the whole grid, hidden units included
    # hidden tokens are the mask token plus the position embedding, wherever the unit is
    hidden = ~model.token_mask(visible, model.unit_size)
    expected = model.encoder_mask_token.view(-1) + model.pos_embed_for((24, 16)).movedim(1, -1)[0]
    torch.testing.assert_close(tokens[hidden], expected.expand(3, -1, -1, -1)[hidden])

    # units are whole: the hidden pixels (the patch kernel's overlap included) change nothing
    pixel_visible = model.token_mask(visible, [u * p for u, p in zip(model.unit_size, model.patch_stride)])
    changed = x + (~pixel_visible).unsqueeze(1).float() * 5.0
    with torch.no_grad():
        torch.testing.assert_close(model.forward_encoder(x, visible), model.forward_encoder(changed, visible))

    # the loss covers the hidden units' tokens only
    final_hidden = ~out.token_visible
    assert final_hidden.sum(1).tolist() == [(model.num_units - keep) * math.prod(model.final_unit_size)] * 3
    squared = (out.pred - out.target).pow(2).mean(-1)
    torch.testing.assert_close(out.loss, squared[final_hidden].mean())
    pred = out.pred.detach().requires_grad_(True)
    loss = (pred[final_hidden] - out.target[final_hidden]).pow(2).mean()
    loss.backward()
    assert pred.grad[out.token_visible].abs().max() == 0 and pred.grad[final_hidden].abs().max() > 0


def test_windowed_mae_trains_and_needs_whole_units():
    torch.manual_seed(0)
    model = tiny_mae(False, **WINDOW)
    # stripes: the hidden units are predictable from where they are
    x = torch.sin(torch.arange(64.0) / 3).view(1, 1, 1, 64).expand(2, 3, 64, 64)
    visible = model.random_mask(2, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = model(x, visible).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert model.encoder_mask_token.grad is not None and model.encoder_mask_token.grad.abs().sum() > 0
    assert losses[-1] < 0.8 * losses[0], losses
    with pytest.raises(ValueError, match="multiple of it"):
        tiny_mae(False, input_size=(48, 64), **WINDOW)


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


@pytest.mark.parametrize("target", ["image", "image_window", "window_mae_window", "video"])
def test_our_mae_checkpoint_loads_into_trunks_dropping_the_decoder(target):
    from hiera_det.checkpoint import load_checkpoint
    from hiera_det.modeling import Hiera

    video = target == "video"
    mae = tiny_mae(video, **(WINDOW if target == "window_mae_window" else {}))
    written = {"model": {f"mae.{k}": v for k, v in mae.state_dict().items()}, "iteration": 10}
    trunk_args = dict(embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), num_classes=0)
    if video:
        geometry = {**VIDEO, "input_size": (8, 64, 64)}
        trunk = Hiera(**trunk_args, **geometry, pos_embed="separate")
    elif target in ("image_window", "window_mae_window"):
        # a detector trunk: other input size, three q-pools
        trunk = Hiera(**trunk_args, input_size=(128, 96), **WINDOW)
    else:
        trunk = Hiera(**trunk_args, input_size=(64, 64))
    report = load_checkpoint(trunk, written, strict=True)
    dropped = report.dropped["MAE decoder, mask token, fusion heads and encoder_norm"]
    assert "decoder_pred.weight" in dropped and "mask_token" in dropped and "encoder_norm.weight" in dropped
    assert ("encoder_mask_token" in dropped) == (target == "window_mae_window")
    assert "MAE decoder" in str(report)
    torch.testing.assert_close(trunk.blocks[1].attn.qkv.weight, mae.blocks[1].attn.qkv.weight)
    if target == "window_mae_window":
        torch.testing.assert_close(trunk.pos_embed_window, mae.pos_embed_window)
