"""``extract_to_folder``: a whole extraction run, batched, resumable, skipping and reporting bad inputs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from .extractor import FeatureExtractor, Prediction, is_video_path
from .inputs import ClipSpec, Failure, describe_error, discover_inputs, plan_video_clips, read_clip_frames
from .preprocessing import ClipPreprocessing, ImagePreprocessing, preprocess_clip, preprocess_image
from .store import FeatureStore, load_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    """One row to extract: an image, or one clip of a video."""

    file: str
    clip: ClipSpec | None = None

    def entry(self) -> dict:
        if self.clip is None:
            return {"file": self.file}
        c = self.clip
        return {"file": self.file, "clip": c.index, "start_frame": c.start_frame, "end_frame": c.end_frame,
                "start_time": round(c.start_time, 6), "end_time": round(c.end_time, 6)}


class _UnitPixels(Dataset):
    """Reads and preprocesses units in DataLoader workers; a unit that fails comes back with its reason.

    It holds only the preprocessing settings, never the model, so workers stay small.
    """

    def __init__(self, units: list[Unit], settings: ImagePreprocessing | ClipPreprocessing, num_frames: int):
        self.units = units
        self.settings = settings
        self.num_frames = num_frames

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, i: int):
        unit = self.units[i]
        try:
            if unit.clip is None:
                return unit, preprocess_image(unit.file, self.settings, unit.file), None
            frames = read_clip_frames(unit.file, unit.clip)
            return unit, preprocess_clip(frames, self.settings, unit.file), None
        except Exception as e:  # noqa: BLE001 - any failure to read one input is reported, not fatal
            return unit, None, describe_error(e)


@dataclass
class RunSummary:
    """What a run did: rows written now and before, and the inputs it skipped."""

    output: str
    written: int = 0
    already_done: int = 0
    failures: list[Failure] = field(default_factory=list)
    predictions: dict[str, list[Prediction]] = field(default_factory=dict)


def plan_units(files: list[str], extractor: FeatureExtractor, clip_stride: int | None):
    """Images and video clips to extract, and the inputs that cannot be (wrong modality, unreadable video)."""
    units, failures = [], []
    model = extractor.trunk.name
    for file in files:
        if is_video_path(file):
            if not extractor.video:
                failures.append(Failure(file, f"a video, but {model} is an image model: use a *_16x224 model"))
                continue
            try:
                clips = plan_video_clips(file, extractor.num_frames, extractor.sampling_rate, clip_stride)
            except Exception as e:  # noqa: BLE001 - VideoReadError and decoder errors alike
                failures.append(Failure(file, describe_error(e)))
                continue
            units.extend(Unit(file, c) for c in clips)
        elif extractor.video:
            failures.append(Failure(file, f"an image, but {model} is a video model: use a *_224 image model"))
        else:
            units.append(Unit(file))
    return units, failures


def run_config(extractor: FeatureExtractor, weights: str | None, clip_stride: int | None) -> dict:
    """The settings a resumed run must share with the first one."""
    config = {
        "model": extractor.trunk.name,
        "weights": os.path.abspath(weights) if weights else None,
        "out_features": extractor.out_features,
        "pooled": extractor.pooled,
        "top_k": extractor.top_k,
        "stage_norms": extractor.stage_norms is not None,
        "bf16": extractor.bf16,
    }
    if extractor.bf16_weights:  # only when on, so that folders written before the option still resume
        config["bf16_weights"] = True
    if extractor.video:
        config.update(num_frames=extractor.num_frames, sampling_rate=extractor.sampling_rate,
                      clip_stride=clip_stride, preprocessing=vars(extractor.clip_preprocessing))
    else:
        config.update(preprocessing=vars(extractor.image_preprocessing))
    return config


def extract_to_folder(
    extractor: FeatureExtractor,
    inputs: list[str],
    output: str,
    *,
    weights: str | None = None,
    batch_size: int = 16,
    num_workers: int = 2,
    shard_rows: int = 256,
    clip_stride: int | None = None,
    progress: bool = True,
) -> RunSummary:
    """Extract features of every image / video clip under ``inputs`` into ``output`` (see
    ``hiera_det.features.store`` for the layout). Rows already in ``output`` are skipped; inputs that
    cannot be read are skipped and listed in ``output/failures.json``."""
    from tqdm import tqdm

    files, failures = discover_inputs(inputs)
    units, unplannable = plan_units(files, extractor, clip_stride)
    failures += unplannable
    store = FeatureStore(output, run_config(extractor, weights, clip_stride), shard_rows)
    todo = [u for u in units if not store.is_done(u.file, None if u.clip is None else u.clip.index)]
    summary = RunSummary(output, already_done=len(units) - len(todo))

    settings = extractor.clip_preprocessing if extractor.video else extractor.image_preprocessing
    loader = DataLoader(
        _UnitPixels(todo, settings, extractor.num_frames),
        batch_size=batch_size,
        num_workers=num_workers if todo else 0,
        collate_fn=list,
        pin_memory=extractor.device.type == "cuda",
    )
    what = "clips" if extractor.video else "images"
    try:
        with tqdm(total=len(todo), unit=what[:-1], desc=f"{extractor.trunk.name} {what}", disable=not progress) as bar:
            for batch in loader:
                good = [(unit, pixels) for unit, pixels, _ in batch if pixels is not None]
                for unit, _, reason in batch:
                    if reason is not None:
                        clip = None if unit.clip is None else unit.clip.index
                        failures.append(Failure(unit.file, reason, clip))
                if good:
                    outputs = extractor.forward_pixels(torch.stack([p for _, p in good]))
                    tensors = {k: v for k, v in outputs.items() if isinstance(v, torch.Tensor)}
                    for row, (unit, _) in enumerate(good):
                        entry = unit.entry()
                        if "top_k" in outputs:
                            entry["top_k"] = [[p.index, p.name, round(p.probability, 6)] for p in outputs["top_k"][row]]
                        store.add(entry, {k: v[row] for k, v in tensors.items()})
                        summary.written += 1
                bar.update(len(batch))
        store.flush()
    finally:
        store.write_failures(failures)
    store.write_index()
    summary.failures = failures
    if extractor.top_k > 0:
        summary.predictions = per_input_predictions(extractor, store)
    return summary


def per_input_predictions(extractor: FeatureExtractor, store: FeatureStore) -> dict[str, list[Prediction]]:
    """Top-k per input file: an image's own, a video's from its clips' softmax probabilities averaged."""
    by_file: dict[str, list[dict]] = {}
    for e in store.entries:
        by_file.setdefault(e["file"], []).append(e)
    predictions = {}
    for file, entries in by_file.items():
        logits = load_rows(store.root, "logits", entries).float()
        probs = logits.softmax(dim=-1).mean(dim=0, keepdim=True)
        predictions[file] = extractor.top_classes(probs.log())[0]
    return predictions
