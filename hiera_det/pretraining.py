"""MAE pre-training in Detectron2: the ``HieraMAE`` meta-architecture and pictures of its reconstructions.

``META_ARCHITECTURE: "HieraMAE"`` builds ``hiera_det.modeling.mae.MaskedAutoencoderHiera`` on the trunk of
``MODEL.HIERA`` (an image or a ``*_16x224`` video architecture) with ``MODEL.MAE``. It takes the dicts of
``hiera_det.data.unlabeled.MAEInputMapper`` (``"image"`` ``[3, H, W]`` or ``"clip"`` ``[3, T, H, W]``, 0-255)
and returns ``{"loss_mae"}`` in training. Every ``VIS_PERIOD`` iterations (Detectron2's key) it puts a
picture of masked input | reconstruction | original into the event storage, which TensorBoard shows.
The weights it writes keep the official ``mae_hiera_*`` names under ``mae.``, so ``load_checkpoint`` puts
them into any hiera_det trunk (decoder dropped and reported) and ``MODEL.WEIGHTS`` / ``MODEL.HIERA.WEIGHTS``
take an official MAE checkpoint, decoder included, to continue pre-training.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage

from .detection.trunk import trunk_overrides
from .modeling.mae import MAEOutput, MaskedAutoencoderHiera, build_mae

logger = logging.getLogger(__name__)


def build_mae_from_cfg(cfg) -> MaskedAutoencoderHiera:
    """The MAE model of ``MODEL.HIERA`` + ``MODEL.MAE``, with ``MODEL.HIERA.WEIGHTS`` loaded."""
    h, m = cfg.MODEL.HIERA, cfg.MODEL.MAE
    model = build_mae(
        h.NAME,
        **trunk_overrides(cfg),
        mask_ratio=m.MASK_RATIO,
        norm_pix_loss=m.NORM_PIX_LOSS,
        decoder_embed_dim=m.DECODER_EMBED_DIM,
        decoder_depth=m.DECODER_DEPTH,
        decoder_num_heads=m.DECODER_NUM_HEADS,
        encoder_init=m.ENCODER_INIT,
        mask_mode=m.MASK_MODE,
    )
    if h.WEIGHTS:
        from .checkpoint import load_checkpoint

        report = load_checkpoint(model, h.WEIGHTS, strict=False)
        logger.info(f"Loaded MODEL.HIERA.WEIGHTS {h.WEIGHTS} into the MAE model:\n{report}")
    return model


def reconstruction_pictures(model: MaskedAutoencoderHiera, x: torch.Tensor, out: MAEOutput,
                            pixel_mean: torch.Tensor, pixel_std: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, 3 * W]`` floats in [0, 1]: masked input | reconstruction (predicted hidden patches, seen
    patches copied) | original, in the model's input colour order. Video shows the middle frame of those the
    decoder predicts."""
    with torch.no_grad():
        raw = model.pixel_targets(x, normalize=False)
        pred = out.pred.float()
        if model.norm_pix_loss:  # back from per-patch normalised pixels, with the original patch statistics
            mean, var = raw.mean(dim=-1, keepdim=True), raw.var(dim=-1, keepdim=True)
            pred = pred * (var + 1.0e-6) ** 0.5 + mean
        seen = out.token_visible.unsqueeze(-1)
        pictures = [torch.where(seen, raw, torch.zeros_like(raw)), torch.where(seen, raw, pred), raw]
        pictures = [model.unpatchify(p) for p in pictures]
        if model.ndim == 3:
            pictures = [p[:, :, p.shape[2] // 2] for p in pictures]
        mean, std = pixel_mean.view(1, -1, 1, 1), pixel_std.view(1, -1, 1, 1)
        pictures = [((p * std + mean) / 255.0).clamp(0, 1) for p in pictures]
        return torch.cat(pictures, dim=-1)


@META_ARCH_REGISTRY.register()
class HieraMAE(nn.Module):
    """MAE pre-training of a Hiera trunk on images (``"image"``) or clips (``"clip"``)."""

    @configurable
    def __init__(self, *, mae: MaskedAutoencoderHiera, pixel_mean, pixel_std, vis_period: int = 0):
        super().__init__()
        self.mae = mae
        self.vis_period = vis_period
        # not persistent: the checkpoint holds the MAE model's official names only
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1), False)

    @classmethod
    def from_config(cls, cfg):
        return {"mae": build_mae_from_cfg(cfg), "pixel_mean": cfg.MODEL.PIXEL_MEAN,
                "pixel_std": cfg.MODEL.PIXEL_STD, "vis_period": cfg.VIS_PERIOD}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: list[dict]) -> torch.Tensor:
        key = "clip" if self.mae.ndim == 3 else "image"
        tensors = []
        for i, item in enumerate(batched_inputs):
            if key not in item:
                raise ValueError(
                    f'batched_inputs[{i}] has no "{key}" (keys: {sorted(item)}); the {self.mae.name} MAE model '
                    f"takes {'clips' if key == 'clip' else 'images'} from hiera_det.data.unlabeled.MAEInputMapper"
                )
            tensors.append(item[key].to(self.device, non_blocking=True).float())
        x = torch.stack(tensors)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.pixel_mean.view(shape)) / self.pixel_std.view(shape)

    def forward(self, batched_inputs: list[dict]):
        """Training: ``{"loss_mae"}``. Evaluation: one ``{"loss_mae", "pictures"}`` per input."""
        x = self.preprocess(batched_inputs)
        out = self.mae(x)
        if self.training:
            if self.vis_period > 0:
                storage = get_event_storage()
                if storage.iter % self.vis_period == 0:
                    picture = reconstruction_pictures(self.mae, x[:1], _first(out), self.pixel_mean, self.pixel_std)
                    storage.put_image("mae: masked | reconstruction | original", picture[0])
            return {"loss_mae": out.loss}
        pictures = reconstruction_pictures(self.mae, x, out, self.pixel_mean, self.pixel_std)
        return [{"loss_mae": out.loss, "pictures": p} for p in pictures]


def _first(out: MAEOutput) -> MAEOutput:
    return MAEOutput(out.loss, *(t[:1] for t in out[1:]))


def save_reconstructions(cfg, model: HieraMAE, paths: list[str], output_dir: str, seed: int = 0):
    """Write ``OUTPUT/<name>.png`` (masked input | reconstruction | original) for each image or video in
    ``paths`` (centered crop or clip, a mask drawn from ``seed``). Every file that can be read is written;
    returns ``(written, failed)``, ``failed`` mapping each other path to the reason."""
    from PIL import Image
    from tqdm import tqdm

    from .data.unlabeled import MAEInputMapper

    mapper = MAEInputMapper(cfg, is_train=False)
    os.makedirs(output_dir, exist_ok=True)
    written, failed = [], {}
    model.eval()
    for path in tqdm(paths, desc="reconstructing", unit="input"):
        try:
            item = mapper({"file_name": path})
        except Exception as e:  # noqa: BLE001  (one bad file must not stop the others; the reason is kept)
            failed[path] = f"{type(e).__name__}: {e}"
            continue
        torch.manual_seed(seed)
        with torch.no_grad():
            picture = model([item])[0]["pictures"]
        if cfg.INPUT.FORMAT == "BGR":
            picture = picture.flip(0)
        out = os.path.join(output_dir, os.path.splitext(os.path.basename(path.rstrip("/")))[0] + ".png")
        array = (picture.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        Image.fromarray(array).save(out)
        written.append(out)
    return written, failed


__all__ = ["HieraMAE", "build_mae_from_cfg", "reconstruction_pictures", "save_reconstructions"]
