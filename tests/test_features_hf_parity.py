"""FeatureExtractor against the Hugging Face Hiera model card's code, including the card's backbone bug.

The card (``facebook/hiera-*-224-hf``) shows ``AutoImageProcessor`` + ``HieraForImageClassification`` /
``HieraModel`` for classification and features, and ``HieraBackbone.from_pretrained(...,
out_features=[...])`` for per-stage maps. Here those snippets run on tiny random models saved with
``save_pretrained`` and on a real photograph; ``FeatureExtractor`` must give the same pixels, logits,
pooled embedding and stage maps as ``HieraModel``, and its ``stage_norms`` option the backbone's norms on
the correct maps. ``HieraBackbone.forward`` (transformers 5.23) skips the ``unroll`` step of
``HieraModel.forward``, so its maps are wrong: the last test asserts that, and fails on the day
transformers fixes it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hiera_det.features import FeatureExtractor

transformers = pytest.importorskip("transformers")
skimage_data = pytest.importorskip("skimage.data")

STAGES = ["stage1", "stage2", "stage3", "stage4"]
TINY = dict(stages=(1, 1, 1, 1), embed_dim=32)  # build_hiera overrides matching _config()
TOLERANCE = 1e-4


def _config(**kwargs):
    return transformers.HieraConfig(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], **kwargs)


def _save_processor(folder) -> None:
    # The hub processors, as transformers' convert_hiera_to_hf.py wrote them.
    transformers.BitImageProcessor(
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], size={"shortest_edge": 256}
    ).save_pretrained(folder)


def _photo() -> Image.Image:
    return Image.fromarray(skimage_data.chelsea())  # 451 x 300, so the resize and the crop both matter


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"{tuple(a.shape)} vs {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


def test_model_card_classification_and_features(tmp_path, randomize):
    folder = tmp_path / "hiera-tiny-in1k-hf"
    randomize(transformers.HieraForImageClassification(_config(num_labels=1000)), seed=21).save_pretrained(folder)
    _save_processor(folder)

    # the card's snippets
    image = _photo()
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        logits = transformers.HieraForImageClassification.from_pretrained(folder)(**inputs).logits
        card = transformers.HieraModel.from_pretrained(folder)(**inputs, output_hidden_states=True)

    extractor = FeatureExtractor("hiera_tiny_224", weights=folder, pooled=True, top_k=5, device="cpu", **TINY)
    assert _max_abs(extractor.preprocess(image), inputs["pixel_values"]) == 0.0
    ours = extractor(image)
    diffs = {"logits": _max_abs(ours["logits"], logits), "pooled": _max_abs(ours["pooled"], card.pooler_output)}
    for name, hidden in zip(STAGES, card.reshaped_hidden_states[1:]):  # [B, H, W, C] after the embeddings
        diffs[name] = _max_abs(ours[name], hidden.permute(0, 3, 1, 2))
    print("\nHF card parity:", " ".join(f"{k}={v:.1e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= TOLERANCE, diffs
    top = ours["top_k"][0]
    assert [p.index for p in top] == logits[0].topk(5).indices.tolist()
    assert top[0].name == extractor.class_names[top[0].index] and 0 < top[0].probability <= 1


@pytest.mark.parametrize("kind", ["numpy", "path", "rgba", "gray"])
def test_preprocessing_matches_the_hub_processor(tmp_path, kind):
    _save_processor(tmp_path)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    photo = skimage_data.coffee()
    if kind == "numpy":
        ours_in, theirs_in = photo, photo
    elif kind == "path":
        path = tmp_path / "coffee.png"
        Image.fromarray(photo).save(path)
        ours_in, theirs_in = str(path), Image.open(path).convert("RGB")  # transformers' load_image
    elif kind == "rgba":
        alpha = np.linspace(0, 255, photo.shape[1], dtype=np.uint8)[None, :, None].repeat(photo.shape[0], 0)
        ours_in = theirs_in = Image.fromarray(np.concatenate([photo, alpha], axis=2), "RGBA")
    else:
        ours_in = theirs_in = Image.fromarray(skimage_data.camera()).resize((180, 300))
    expected = processor(images=theirs_in, return_tensors="pt")["pixel_values"]
    extractor = FeatureExtractor("hiera_tiny_224", device="cpu", **TINY)
    assert _max_abs(extractor.preprocess(ours_in), expected) == 0.0


def test_model_card_backbone_snippet_and_its_unroll_bug(tmp_path, randomize):
    from transformers.models.hiera.modeling_hiera import unroll

    folder = tmp_path / "hiera-tiny-backbone-hf"
    backbone = randomize(transformers.HieraBackbone(_config(out_features=STAGES)), seed=22)
    backbone.save_pretrained(folder)
    _save_processor(folder)

    image = _photo()
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    inputs = processor(images=image, return_tensors="pt")
    card_model = transformers.HieraBackbone.from_pretrained(folder, out_features=STAGES)  # the card's call
    with torch.no_grad():
        card_maps = card_model(**inputs).feature_maps
        # The right maps: HieraModel (which unrolls) on the backbone's weights, then the backbone's norms.
        reference = transformers.HieraModel(card_model.config).eval()
        reference.load_state_dict(card_model.state_dict(), strict=False)
        hidden = reference(**inputs, output_hidden_states=True).reshaped_hidden_states[1:]
        correct = [card_model.hidden_states_norms[s](h).permute(0, 3, 1, 2) for s, h in zip(STAGES, hidden)]
        # HieraBackbone with the unroll it lacks restored gives the same right maps.
        embeddings = card_model.embeddings(inputs["pixel_values"])[0]
        config = card_model.config
        unrolled = unroll(embeddings, image_shape=(224, 224), patch_stride=config.patch_stride,
                          schedule=[config.query_stride] * (len(config.depths) - 1))
        fixed_hidden = card_model.encoder(unrolled, output_hidden_states=True).reshaped_hidden_states[1:]
        fixed = [card_model.hidden_states_norms[s](h).permute(0, 3, 1, 2) for s, h in zip(STAGES, fixed_hidden)]

    extractor = FeatureExtractor("hiera_tiny_224", weights=folder, stage_norms=True, device="cpu", **TINY)
    ours = extractor(image)
    ours_vs_correct = max(_max_abs(ours[s], c) for s, c in zip(STAGES, correct))
    fixed_vs_correct = max(_max_abs(f, c) for f, c in zip(fixed, correct))
    card_vs_correct = [_max_abs(m, c) for m, c in zip(card_maps, correct)]
    print(f"\nours vs HieraModel+norms {ours_vs_correct:.1e}; HieraBackbone with unroll {fixed_vs_correct:.1e}; "
          f"HieraBackbone as shipped, per stage: {' '.join(f'{d:.2f}' for d in card_vs_correct)}")
    assert ours_vs_correct <= TOLERANCE
    assert fixed_vs_correct <= TOLERANCE
    # Stage 1 attends inside mask units and stage 2 pools them: on wrongly ordered tokens every stage differs.
    assert min(card_vs_correct) > 0.05, (
        f"transformers {transformers.__version__}: HieraBackbone's feature_maps now match HieraModel's stages "
        f"(differences {card_vs_correct}), so the missing-unroll bug seems fixed. Update the 'Which numbers to "
        f"trust' section of docs/features_and_export.md and this test."
    )


def test_stage_norms_need_a_backbone_checkpoint(tmp_path, randomize):
    folder = tmp_path / "hiera-tiny-hf"
    randomize(transformers.HieraModel(_config()), seed=23).save_pretrained(folder)
    with pytest.raises(ValueError, match="HieraBackbone checkpoint.*has none for"):
        FeatureExtractor("hiera_tiny_224", weights=folder, stage_norms=True, device="cpu", **TINY)
