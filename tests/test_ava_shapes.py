"""The bundled AVA-format generated data (hiera_det.data.datasets.ava_shapes), read back by the AVA readers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from hiera_det.data import ava
from hiera_det.data.datasets import ava_shapes


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return ava_shapes.ensure_ava_shapes_dataset(str(tmp_path_factory.mktemp("d") / "ava_shapes_tiny"), preset="tiny",
                                                write_videos=True)


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_layout_reads_without_problems(tiny_root):
    split = ava_shapes.splits(tiny_root)["train"]
    label_map = ava.read_label_map(split.label_map_file)
    evaluated = ava.read_label_map(split.eval_label_map_file)
    assert label_map.num_classes == 9 and evaluated.ids == list(ava_shapes.EVALUATED_IDS)
    gt = ava.read_boxes_csv(split.annotation_file, label_map=label_map)
    assert gt.report.num_skipped == 0 and gt.boxes
    for persons in gt.boxes.values():
        assert 2 <= len(persons) <= 3
        for person in persons:
            assert 1 <= len(person.actions) <= 3
            assert sum(a in (1, 2, 3, 4, 5, 9) for a in person.actions) <= 1  # one way of moving the centre
    records, stats = ava.load_ava_dicts(split)
    assert stats["num_skipped_rows"] == 0 and len(records) == len(gt.boxes)
    assert ava.FrameSequence(**records[0]["frames"]).count == 3 * 8


def test_proposals_are_jittered_truth_plus_false_positives(tiny_root):
    split = ava_shapes.splits(tiny_root)["val"]
    gt = ava.read_boxes_csv(split.annotation_file)
    proposals = ava.read_boxes_csv(split.proposals_file, kind="proposals", score_threshold=0.8)
    found = false_positives = 0
    for key, persons in gt.boxes.items():
        boxes = [p.box for p in proposals.boxes.get(key, [])]
        found += sum(any(_iou(p.box, b) >= 0.5 for b in boxes) for p in persons)
        false_positives += sum(all(_iou(p.box, b) < 0.5 for p in persons) for b in boxes)
    total = sum(len(p) for p in gt.boxes.values())
    assert found >= 0.8 * total and false_positives >= len(gt.boxes)  # at least one distractor per keyframe


def test_frames_and_video_agree(tiny_root):
    from hiera_det.data.video_io import VideoClipReader

    params = ava_shapes.read_params(tiny_root)
    frames = ava.read_frame_list(os.path.join(tiny_root, "frame_lists", "val.csv"), os.path.join(tiny_root, "frames"))
    from_jpg = ava.FrameSequenceReader(frames["val0000"], params["fps"]).get_frames([0, 8, 23])
    with VideoClipReader(os.path.join(tiny_root, "videos_15min", "val0000.mp4")) as reader:
        assert reader.num_frames == 24 and reader.fps == pytest.approx(8)
        from_mp4 = reader.get_frames([0, 8, 23])
    assert from_jpg.shape == from_mp4.shape == (3, 64, 64, 3)
    assert np.abs(from_jpg.astype(int) - from_mp4.astype(int)).mean() < 12  # two lossy codecs of one picture


def test_same_parameters_reuse_other_parameters_refuse(tiny_root):
    assert ava_shapes.ensure_ava_shapes_dataset(tiny_root, preset="tiny", write_videos=True) == tiny_root
    with pytest.raises(FileExistsError, match="other parameters"):
        ava_shapes.ensure_ava_shapes_dataset(tiny_root, preset="tiny", seed=1, write_videos=True)
    with open(os.path.join(tiny_root, ava_shapes.MARKER)) as f:
        assert json.load(f)["keyframe_range"] == [901, 902]


def test_single_frame_does_not_tell_actors_from_distractors():
    """Per-frame size and colour statistics of actors and distractors match (no single-frame shortcut)."""
    rng = np.random.default_rng(0)
    actor_radius, still_radius, actor_color, still_color = [], [], [], []
    for _ in range(400):
        actions = ava_shapes._choose_actions(rng)
        actor, still = ava_shapes._script(actions, rng, 64, 24), ava_shapes._script([], rng, 64, 24)
        actor_radius.append(actor["radius"] * actor["scale"][12])
        still_radius.append(still["radius"] * still["scale"][12])
        actor_color.append(actor["colors"][12].mean())
        still_color.append(still["colors"][12].mean())
    assert abs(np.mean(actor_radius) - np.mean(still_radius)) < 0.05 * np.mean(still_radius)
    assert abs(np.std(actor_radius) - np.std(still_radius)) < 0.15 * np.std(still_radius)
    assert abs(np.mean(actor_color) - np.mean(still_color)) < 5
