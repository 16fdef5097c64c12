"""AVA file readers (hiera_det.data.ava): the published formats, grouping, and errors naming file and row."""

from __future__ import annotations

import numpy as np
import pytest

from hiera_det.data import ava
from hiera_det.data.ava import AvaFormatError, AvaSplit


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


FULL_PBTXT = """label {
  name: "bend/bow (at the waist)"
  label_id: 1
  label_type: PERSON_MOVEMENT
}
label {
  name: "crawl"
  label_id: 2
  label_type: PERSON_MOVEMENT
}
label {
  name: "dance"
  label_id: 4
  label_type: PERSON_MOVEMENT
}
"""
EVAL_PBTXT = 'item {\n  name: "bend/bow (at the waist)"\n  id: 1\n}\nitem {\n  name: "dance"\n  id: 4\n}\n'


def test_label_maps_both_formats(tmp_path):
    full = ava.read_label_map(_write(tmp_path / "full.pbtxt", FULL_PBTXT))
    evaluated = ava.read_label_map(_write(tmp_path / "eval.pbtxt", EVAL_PBTXT))
    assert full.names == {1: "bend/bow (at the waist)", 2: "crawl", 4: "dance"}
    assert full.num_classes == 4 and full.class_names()[2] == "action 3"
    assert evaluated.ids == [1, 4]
    with pytest.raises(AvaFormatError, match=r"dup\.pbtxt, row 5: action id 1 is listed twice"):
        ava.read_label_map(_write(tmp_path / "dup.pbtxt", EVAL_PBTXT.replace("id: 4", "id: 1")))


def test_annotations_grouped_per_person(tmp_path):
    csv = _write(
        tmp_path / "ava_train_v2.2.csv",
        (
            "vidA,0902,0.077,0.151,0.283,0.811,1,0\n"
            "vidA,0902,0.077,0.151,0.283,0.811,4,0\n"
            "vidA,0902,0.332,0.194,0.481,0.891,2,1\n"
            "vidA,903,0.1,0.1,0.2,0.2,1,0\n"
            "vidB,0902\n"
        ),
    )
    boxes = ava.read_boxes_csv(csv, label_map=ava.read_label_map(_write(tmp_path / "f.pbtxt", FULL_PBTXT)))
    persons = boxes.boxes[("vidA", 902)]
    assert [(p.actions, p.person_id) for p in persons] == [([1, 4], 0), ([2], 1)]
    assert ("vidB", 902) in boxes.keyframes and ("vidB", 902) not in boxes.boxes
    assert ("vidA", 903) in boxes.boxes  # "0903" and "903" are one keyframe
    assert (
        ava.image_key("vidA", 902) == ava.image_key("vidA", ava.parse_timestamp("0902")) == "vidA,902.000000"
    )


@pytest.mark.parametrize(
    "row, message",
    [
        ("vidA,0902,0.1,0.1,1.4,0.5,1,0", r"row 2: box \(0.1, 0.1, 1.4, 0.5\) is outside \[0, 1\]"),
        ("vidA,0902,0.1,0.1,0.4,0.5,3,0", r"row 2: action id 3 is not in the label map"),
        ("vidA,0902,0.1,0.1,0.4,0.5", r"row 2: 6 columns"),
        ("vidA,09x2,0.1,0.1,0.4,0.5,1,0", r"row 2: timestamp '09x2'"),
        ("vidA,0902,0.5,0.1,0.4,0.5,1,0", r"row 2: box .* x2 <= x1"),
    ],
)
def test_bad_rows_strict_and_lenient(tmp_path, row, message):
    label_map = ava.read_label_map(_write(tmp_path / "f.pbtxt", FULL_PBTXT))
    csv = _write(
        tmp_path / "bad.csv", f"vidA,0902,0.1,0.1,0.3,0.3,1,0\n{row}\nvidA,0903,0.1,0.1,0.3,0.3,2,0\n"
    )
    with pytest.raises(AvaFormatError, match=r"bad\.csv, " + message):
        ava.read_boxes_csv(csv, label_map=label_map, strict=True)
    lenient = ava.read_boxes_csv(csv, label_map=label_map, strict=False)
    assert lenient.report.num_skipped == 1 and len(lenient.boxes) == 2
    assert "bad.csv, row 2" in lenient.report.messages[0]


def test_proposals_threshold_and_other_videos(tmp_path):
    proposals = _write(
        tmp_path / "ava_detection_val_boxes_and_labels.csv",
        (
            "vidA,0902,0.1,0.1,0.3,0.3,,0.95\n"
            "vidA,0902,0.5,0.1,0.7,0.3,,0.40\n"
            "vidA,0902,0.5,0.5,0.7,0.7,-1,0.85\n"
        ),
    )
    read = ava.read_boxes_csv(proposals, kind="proposals", score_threshold=0.8)
    assert [p.score for p in read.boxes[("vidA", 902)]] == [0.95, 0.85]
    gt = ava.read_boxes_csv(_write(tmp_path / "gt.csv", "vidZ,0902,0.1,0.1,0.3,0.3,1,0\n"))
    with pytest.raises(AvaFormatError, match=r"none of which is in .*gt\.csv.*same split"):
        ava._check_proposal_videos(read, gt)


def test_frame_list_and_missing_frame(tmp_path):
    import cv2

    from hiera_det.data.video_io import VideoReadError

    (tmp_path / "frames" / "vidA").mkdir(parents=True)
    lines = ["original_vido_id video_id frame_id path labels"]
    for k in range(6):
        if k != 4:  # frame 5 of the list is missing on disk
            cv2.imwrite(
                str(tmp_path / "frames" / "vidA" / f"vidA_{k + 1:06d}.jpg"),
                np.full((8, 10, 3), 20 * k, np.uint8),
            )
        lines.append(f'vidA 0 {k} vidA/vidA_{k + 1:06d}.jpg ""')
    frame_list = _write(tmp_path / "val.csv", "\n".join(lines) + "\n")
    sequences = ava.read_frame_list(frame_list, str(tmp_path / "frames"))
    reader = ava.FrameSequenceReader(sequences["vidA"], fps=30)
    clip = reader.get_frames(ava.clip_frame_indices(1, 4, 2, reader.num_frames))  # frames 0 (padded), 0, 1, 3
    assert clip.shape == (4, 8, 10, 3) and clip[:, 0, 0, 0].tolist() == [0, 0, 20, 60]
    with pytest.raises(VideoReadError, match=r"vidA_000005\.jpg.*missing \(row 6 of .*val\.csv\)"):
        reader.get_frames([4])
    broken = _write(
        tmp_path / "broken.csv",
        lines[0] + "\nvidA 0 0 vidA/vidA_000001.jpg x\nvidA 0 1 vidA/vidA_000003.jpg x\n",
    )
    with pytest.raises(AvaFormatError, match=r"broken\.csv, row 3: .*breaks its numbered sequence"):
        ava.read_frame_list(broken, str(tmp_path / "frames"))


def test_split_needs_one_frame_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one of them"):
        AvaSplit(annotation_file="a.csv", label_map_file="l.pbtxt").check()


def test_evaluation_stops_on_a_keyframe_without_frames_where_training_skips_it(tmp_path, caplog):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "vidA.mp4").write_bytes(b"")  # only listed here; no frame is read
    labels = _write(tmp_path / "labels.pbtxt", EVAL_PBTXT)
    rows = "vidA,0902,0.1,0.1,0.5,0.5,1,0\nvidB,0902,0.2,0.2,0.6,0.6,4,0\n"  # vidB has no video
    annotations = _write(tmp_path / "val.csv", rows)
    split = dict(annotation_file=annotations, label_map_file=labels, video_dir=str(tmp_path / "videos"))
    records, _ = ava.load_ava_dicts(AvaSplit(**split, is_train=True))
    assert [r["video_id"] for r in records] == ["vidA"] and "have no frames" in caplog.text
    # scored against all the ground truth, vidB's keyframe would count as missed: a lower mAP, silently
    with pytest.raises(ValueError, match=r"1 keyframes have no frames to read .*videos with no frames: vidB"):
        ava.load_ava_dicts(AvaSplit(**split, is_train=False))
