"""Parity of hiera_det's Hiera, loaded through ``load_checkpoint``, with each reference implementation.

Each test builds the reference model with random weights, saves it in the reference's own format, loads
that file into ``build_hiera(...)`` and compares stage outputs (and logits where there is a head) on the same
input in fp32 (max-abs <= 1e-4). Tiny, small, base and base-plus run for every format by default; large
and huge are marked ``slow`` (``-m slow``). Every figure is printed as a ``PARITY`` line (run with ``-s`` to
see them) and recorded as a test property.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from hiera_det.checkpoint import load_checkpoint
from hiera_det.modeling import ARCHITECTURES, WINDOW_PRESETS

hiera = pytest.importorskip("hiera")
pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("sam2")

TOLERANCE = 1e-4
# Large and huge take minutes each on a small CPU; they run with `-m slow`.
FAST_SIZES = ("tiny", "small", "base", "base_plus")
SLOW_SIZES = ("large", "huge")
IMAGE_SIZES = [*FAST_SIZES, *(pytest.param(s, marks=pytest.mark.slow) for s in SLOW_SIZES)]


@pytest.fixture
def workdir(tmp_path):
    # Base-sized checkpoints are hundreds of MB; do not leave them in pytest's kept temp dirs.
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def _spec(size: str) -> dict:
    return ARCHITECTURES[f"hiera_{size}_224"]


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} vs reference {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


def _check(record_property, fmt: str, name: str, ours: dict, reference: dict) -> None:
    """Compare named outputs; print, record and assert every max-abs difference."""
    diffs = {k: _max_abs(ours[k], reference[k]) for k in reference}
    line = " ".join(f"{k}={v:.2e}" for k, v in diffs.items())
    print(f"\nPARITY {fmt} {name}: {line}")
    for key, value in diffs.items():
        record_property(f"{fmt}:{name}:{key}", value)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOLERANCE, f"{fmt} {name}: {worst} differs by {diffs[worst]:.3e} > {TOLERANCE}"


def _ours(model, x) -> dict:
    with torch.no_grad():
        return model.eval()(x, return_logits=model.head is not None)


def _stages(tensors, channels_last: bool) -> dict:
    return {f"stage{i + 1}": (t.movedim(-1, 1) if channels_last else t) for i, t in enumerate(tensors)}


# ----------------------------------------------------------------------------------------------- official


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_official_image(size, workdir, randomize, record_property, hiera_model):
    name = f"hiera_{size}_224"
    ref = randomize(getattr(hiera, name)(pretrained=False), seed=1)
    path = workdir / f"{name}.pth"
    torch.save({"model_state": ref.state_dict()}, path)

    model = hiera_model(name)
    report = load_checkpoint(model, path, strict=True)
    assert report.format.startswith("official") and report.checkpoint_architecture == name
    assert not report.missing_keys and not report.unexpected_keys and not report.dropped

    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        probs, inter = ref(x, return_intermediates=True)
    ours = _ours(model, x)
    ours["probs"] = ours.pop("logits").softmax(-1)  # the official head applies softmax in eval mode
    _check(record_property, "official", name, ours, {**_stages(inter, channels_last=True), "probs": probs})


def _official_video(build, size: str, frames: int):
    spec = _spec(size)
    return build(
        embed_dim=spec["embed_dim"],
        num_heads=spec["num_heads"],
        stages=spec["stages"],
        input_size=(frames, 224, 224),
    )


@pytest.mark.parametrize("size", ["base", pytest.param("base_plus", marks=pytest.mark.slow)])
def test_official_video(size, workdir, randomize, record_property, hiera_model, official_video_hiera):
    # The reference takes any even frame count (time is never pooled); 4 frames keep the test quick.
    frames = 4
    name = f"hiera_{size}_16x224"
    ref = randomize(_official_video(official_video_hiera, size, frames), seed=2)
    path = workdir / f"{name}.pth"
    torch.save({"model_state": ref.state_dict()}, path)

    model = hiera_model(name, input_size=(frames, 224, 224))
    report = load_checkpoint(model, path, strict=True)
    assert report.checkpoint_architecture == name and not report.resized

    x = torch.randn(1, 3, frames, 224, 224)
    with torch.no_grad():
        probs, inter = ref(x, return_intermediates=True)
    ours = _ours(model, x)
    ours["probs"] = ours.pop("logits").softmax(-1)
    _check(record_property, "official", f"{name}@{frames}f", ours, {**_stages(inter, True), "probs": probs})

    # The same file into the 16-frame model: the temporal embedding is resampled linearly, space untouched.
    model16 = hiera_model(name)
    report = load_checkpoint(model16, path, strict=True)
    assert set(report.resized) == {"pos_embed_temporal"}
    assert model16.pos_embed_temporal.shape == (1, 8, _spec(size)["embed_dim"])
    assert torch.equal(model16.pos_embed_spatial, ref.pos_embed_spatial)
    # Linear resampling 2 -> 8 positions (align_corners=False): the ends are kept, position 3 samples
    # source coordinate (3 + 0.5) * 2 / 8 - 0.5 = 0.375.
    src, out = ref.pos_embed_temporal[0], model16.pos_embed_temporal[0]
    assert torch.allclose(out[0], src[0]) and torch.allclose(out[-1], src[-1])
    assert torch.allclose(out[3], 0.625 * src[0] + 0.375 * src[1], atol=1e-6)


def test_official_mae_encoder(workdir, randomize, record_property, hiera_model):
    ref = randomize(hiera.mae_hiera_tiny_224(pretrained=False), seed=3)
    path = workdir / "mae_hiera_tiny_224.pth"
    torch.save({"model_state": ref.state_dict()}, path)

    # MAE pre-training pools queries twice (q_pool=2); fine-tuning uses the default 3. Same weights.
    model = hiera_model("hiera_tiny_224", num_classes=0, q_pool=2)
    report = load_checkpoint(model, path, strict=True)
    assert report.format.startswith("official Hiera MAE")
    dropped = report.dropped_keys
    for part in ("encoder_norm.weight", "mask_token", "decoder_pos_embed", "decoder_pred.weight"):
        assert part in dropped
    assert any(k.startswith("decoder_blocks.") for k in dropped)
    assert any(k.startswith("multi_scale_fusion_heads.") for k in dropped)
    assert report.ignored_missing_keys == ["norm.weight", "norm.bias"] and not report.unexpected_keys

    # The MAE model has no norm/head; with a keep-everything mask the encoder returns its stage outputs
    # per mask unit, [B, units, unit_h, unit_w, C], which are stitched back into grids here.
    x = torch.randn(1, 3, 224, 224)
    units = (7, 7)
    with torch.no_grad():
        _, inter = hiera.Hiera.forward(ref, x, mask=torch.ones(1, units[0] * units[1], dtype=torch.bool),
                                       return_intermediates=True)
    grids = {}
    for i, t in enumerate(inter):
        B, _, uh, uw, C = t.shape
        grids[f"stage{i + 1}"] = t.view(B, *units, uh, uw, C).permute(0, 5, 1, 3, 2, 4).reshape(
            B, C, units[0] * uh, units[1] * uw
        )
    _check(record_property, "official_mae", "mae_hiera_tiny_224", _ours(model, x), grids)


def test_official_weights_at_other_input_size(workdir, randomize, record_property, hiera_model):
    """224 weights in a 256x320 model: the embedding is resampled at load time; that must agree with the
    reference given the same embedding and with hiera_det's own run-time resampling."""
    ref = randomize(hiera.hiera_tiny_224(pretrained=False), seed=4)
    path = workdir / "hiera_tiny_224.pth"
    torch.save({"model_state": ref.state_dict()}, path)

    model = hiera_model("hiera_tiny_224", input_size=(256, 320))
    report = load_checkpoint(model, path, strict=True)
    assert "grid 56x56 -> 64x80" in report.resized["pos_embed"]
    assert model.pos_embed.shape == (1, 64 * 80, 96)

    x = torch.randn(1, 3, 256, 320)
    ours = _ours(model, x)
    sizes = [tuple(ours[f"stage{i}"].shape[2:]) for i in range(1, 5)]
    assert sizes == [(64, 80), (32, 40), (16, 20), (8, 10)]

    ref_big = hiera.Hiera(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), input_size=(256, 320)).eval()
    state = dict(ref.state_dict(), pos_embed=model.pos_embed.detach().clone())
    ref_big.load_state_dict(state)
    with torch.no_grad():
        probs, inter = ref_big(x, return_intermediates=True)
    ours["probs"] = ours.pop("logits").softmax(-1)
    reference = {**_stages(inter, True), "probs": probs}
    _check(record_property, "official", "hiera_tiny_224@256x320", ours, reference)

    # The model kept at 224 resamples the same embedding at run time: same algorithm, same result.
    model224 = hiera_model("hiera_tiny_224")
    load_checkpoint(model224, path, strict=True)
    runtime = _ours(model224, x)
    diff = max(_max_abs(runtime[k], ours[k]) for k in ("stage1", "stage4"))
    assert diff <= 1e-5, f"load-time and run-time position resampling differ by {diff:.2e}"


# ------------------------------------------------------------------------------------------ Hugging Face


def _hf_config(size: str, num_labels: int = 1000):
    from transformers import HieraConfig

    spec = _spec(size)
    heads = [spec["num_heads"] * 2**i for i in range(4)]
    return HieraConfig(embed_dim=spec["embed_dim"], depths=list(spec["stages"]), num_heads=heads,
                       num_labels=num_labels)


def _hf_reference(model, x) -> dict:
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    # reshaped_hidden_states: [embeddings, stage1, ..., stage4], each [B, H, W, C]
    ref = _stages(out.reshaped_hidden_states[1:], channels_last=True)
    if getattr(out, "logits", None) is not None:
        ref["logits"] = out.logits
    return ref


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_huggingface_image(size, workdir, randomize, record_property, hiera_model):
    from transformers import HieraForImageClassification

    name = f"hiera_{size}_224"
    ref = randomize(HieraForImageClassification(_hf_config(size)), seed=5)
    ref.save_pretrained(workdir / "hf")  # model.safetensors + config.json

    model = hiera_model(name)
    report = load_checkpoint(model, workdir / "hf", strict=True)
    assert report.format.startswith("Hugging Face") and report.source.endswith("model.safetensors")
    assert report.checkpoint_architecture == name and not report.missing_keys

    x = torch.randn(1, 3, 224, 224)
    _check(record_property, "huggingface", name, _ours(model, x), _hf_reference(ref, x))


def test_huggingface_bin_and_headless_models(workdir, randomize, record_property, hiera_model):
    from transformers import HieraForPreTraining, HieraModel

    # transformers 5 writes safetensors only; pytorch_model.bin is what transformers 4 wrote (and many
    # hub repositories still hold): torch.save of the state dict beside config.json.
    ref = randomize(HieraModel(_hf_config("tiny")), seed=6)
    ref.config.save_pretrained(workdir / "bin")
    torch.save(ref.state_dict(), workdir / "bin" / "pytorch_model.bin")

    model = hiera_model("hiera_tiny_224", num_classes=0)
    report = load_checkpoint(model, workdir / "bin" / "pytorch_model.bin", strict=True)
    assert report.format.startswith("Hugging Face") and not report.missing_keys  # pooler norm -> norm
    x = torch.randn(1, 3, 224, 224)
    _check(record_property, "huggingface-bin", "hiera_tiny_224", _ours(model, x), _hf_reference(ref, x))

    config = _hf_config("tiny")
    config.decoder_hidden_size, config.decoder_depth, config.decoder_num_heads = 64, 1, 1
    mae = randomize(HieraForPreTraining(config), seed=7)
    mae.save_pretrained(workdir / "mae")
    model = hiera_model("hiera_tiny_224", num_classes=0)
    report = load_checkpoint(model, workdir / "mae", strict=True)
    assert any(k.startswith("decoder.") for k in report.dropped_keys)
    assert "encoder_norm.weight" in report.dropped_keys
    assert report.ignored_missing_keys == ["norm.weight", "norm.bias"]
    hf_state = mae.hiera.state_dict()
    assert torch.equal(model.blocks[3].attn.qkv.weight, hf_state["encoder.stages.2.layers.0.attn.qkv.weight"])
    assert torch.equal(model.pos_embed, hf_state["embeddings.position_embeddings"])


def test_huggingface_backbone_weights(randomize, record_property, hiera_model):
    from transformers import HieraBackbone, HieraModel

    config = _hf_config("tiny")
    config.out_features = ["stage1", "stage2", "stage3", "stage4"]
    backbone = randomize(HieraBackbone(config), seed=12)
    model = hiera_model("hiera_tiny_224", num_classes=0)
    report = load_checkpoint(model, backbone.state_dict(), strict=True)
    [(reason, norms)] = report.dropped.items()
    assert "HieraBackbone" in reason and len(norms) == 8

    # HieraBackbone.forward in transformers 5.23 skips the token unroll that HieraModel does, so its own
    # feature maps are not Hiera's; its weights are, and HieraModel with them is the reference.
    ref = HieraModel(config).eval()
    missing, _ = ref.load_state_dict(backbone.state_dict(), strict=False)
    assert missing == ["pooler.layernorm.weight", "pooler.layernorm.bias"]
    x = torch.randn(1, 3, 224, 224)
    reference = _hf_reference(ref, x)
    _check(record_property, "huggingface-backbone", "hiera_tiny_224", _ours(model, x), reference)


def test_huggingface_config_mismatch_is_reported(workdir, randomize, hiera_model):
    from transformers import HieraModel

    from hiera_det.checkpoint import CheckpointError

    config = _hf_config("tiny")
    config.num_heads = [2, 4, 8, 16]  # weights alone cannot show the head count; config.json can
    HieraModel(config).save_pretrained(workdir / "hf")
    with pytest.raises(CheckpointError, match="num_heads 2.*num_heads 1"):
        load_checkpoint(hiera_model("hiera_tiny_224"), workdir / "hf")


# ------------------------------------------------------------------------------------------------- timm


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_timm_image(size, workdir, randomize, record_property, hiera_model):
    import timm

    name = f"hiera_{size}_224"
    ref = randomize(timm.create_model(name, pretrained=False), seed=8)
    path = workdir / f"{name}.pth"
    torch.save(ref.state_dict(), path)

    model = hiera_model(name)
    report = load_checkpoint(model, path, strict=True)
    assert report.format.startswith("timm") and not report.missing_keys and not report.unexpected_keys

    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        inter = ref.forward_intermediates(x, intermediates_only=True, output_fmt="NCHW")
        logits = ref(x)
    _check(record_property, "timm", name, _ours(model, x), {**_stages(inter, False), "logits": logits})


# ------------------------------------------------------------------------------------------------- SAM2


def _sam2_trunk(size: str):
    from sam2.modeling.backbones.hieradet import Hiera as Sam2Hiera

    spec, preset = _spec(size), WINDOW_PRESETS[size]
    return Sam2Hiera(
        embed_dim=spec["embed_dim"],
        num_heads=spec["num_heads"],
        stages=spec["stages"],
        window_spec=preset["window_spec"],
        global_att_blocks=preset["global_blocks"],
        window_pos_embed_bkg_spatial_size=preset["pos_embed_bkg_size"],
    )


def _save_sam2(trunk, path):
    state = {"image_encoder.trunk." + k: v for k, v in trunk.state_dict().items()}
    # other parts of a SAM2 checkpoint, which the loader must leave out
    state["image_encoder.neck.convs.0.conv.weight"] = torch.randn(256, 96, 1, 1)
    state["sam_mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    torch.save({"model": state}, path)


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_sam2_trunk(size, workdir, randomize, record_property, hiera_model):
    name = f"hiera_{size}_224"
    ref = randomize(_sam2_trunk(size), seed=9)
    path = workdir / "sam2.pt"
    _save_sam2(ref, path)

    model = hiera_model(name, attention="window", num_classes=0)
    report = load_checkpoint(model, path, strict=True)
    assert report.format.startswith("SAM2") and not report.unexpected_keys
    assert report.dropped_keys == [
        "image_encoder.neck.convs.0.conv.weight",
        "sam_mask_decoder.iou_token.weight",
    ]
    assert report.ignored_missing_keys == ["norm.weight", "norm.bias"]

    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        reference = _stages(ref(x), channels_last=False)
    _check(record_property, "sam2", name, _ours(model, x), reference)


@pytest.mark.slow
def test_sam2_trunk_at_1024(workdir, randomize, record_property, hiera_model):
    ref = randomize(_sam2_trunk("tiny"), seed=10)
    path = workdir / "sam2.pt"
    _save_sam2(ref, path)
    model = hiera_model("hiera_tiny_224", attention="window", num_classes=0, input_size=(1024, 1024))
    load_checkpoint(model, path, strict=True)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        reference = _stages(ref(x), channels_last=False)
    _check(record_property, "sam2", "hiera_tiny@1024", _ours(model, x), reference)


def test_absolute_embedding_into_window_layout_is_exact_at_checkpoint_size(workdir, randomize, hiera_model):
    ref = randomize(hiera.hiera_tiny_224(pretrained=False), seed=11)
    model = hiera_model("hiera_tiny_224", attention="window", num_classes=0)
    param = model.pos_embed
    report = load_checkpoint(model, {"model_state": ref.state_dict()}, strict=True)
    assert model.pos_embed is param and param.shape == (1, 96, 56, 56)  # same Parameter, new shape
    assert torch.count_nonzero(model.pos_embed_window) == 0
    assert set(report.resized) == {"pos_embed", "pos_embed_window"}
    official = ref.pos_embed.transpose(1, 2).reshape(1, 96, 56, 56)
    assert torch.equal(model.pos_embed_for((56, 56)), official)
    # at another size the background is interpolated, as SAM2 does
    assert model.pos_embed_for((64, 64)).shape == (1, 96, 64, 64)
