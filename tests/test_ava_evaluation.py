"""Frame-mAP (hiera_det.video.ava_evaluation) against numbers of the official ActivityNet AVA evaluator.

The EXPECTED numbers were produced by running github.com/activitynet/ActivityNet's
``Evaluation/get_ava_performance.py`` (commit 82304fa, "2020"; and its parent of c070fdb, "2018", the v2.2-era
version that takes the excluded-timestamps file) on the CSV files that ``CASES`` builds here. The official code
is not part of this repository; only its outputs are.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hiera_det.data.ava import AvaFormatError, LabelMap
from hiera_det.video.ava_evaluation import average_precision, frame_map

# ids 1-6 exist; 4 is not evaluated; 6 has no ground truth in any case
FULL = LabelMap({1: "walk", 2: "run", 3: "sit", 4: "rare", 5: "wave", 6: "jump"})
EVALUATED = LabelMap({i: FULL.names[i] for i in (1, 2, 3, 5, 6)})


def label_map_text(label_map: LabelMap) -> str:
    return "".join(f'item {{\n  name: "{n}"\n  id: {i}\n}}\n' for i, n in sorted(label_map.names.items()))


def _gt(seed: int = 0):
    """(video, ts, box, actions, person) for 3 videos x 3 keyframes x 2-3 persons, 1-3 actions each."""
    rng = np.random.RandomState(seed)
    persons = []
    for v in range(3):
        for ts in (902, 903, 904):
            for p in range(rng.randint(2, 4)):
                x1, y1 = rng.uniform(0.0, 0.55, size=2)
                w, h = rng.uniform(0.15, 0.4, size=2)
                actions = sorted(rng.choice([1, 2, 3, 4, 5], size=rng.randint(1, 4), replace=False).tolist())
                persons.append((f"vid{v}", ts, (x1, y1, x1 + w, y1 + h), actions, p))
    return persons


def _gt_rows(persons):
    return [[v, f"{ts:04d}", *(f"{c:.3f}" for c in box), str(a), str(p)] for v, ts, box, actions, p in persons for a in actions]


def _det(v, ts, box, action, score):
    return [v, f"{ts:04d}", *(f"{c:.3f}" for c in box), str(action), f"{score:.6f}"]


def _shift(box, dx):
    x1, y1, x2, y2 = box
    return (x1 + dx, y1, x2 + dx, y2)


def case_perfect():
    persons = _gt()
    rng = np.random.RandomState(1)
    dets = [_det(v, ts, box, a, rng.uniform(0.5, 1.0)) for v, ts, box, actions, _ in persons for a in actions]
    return _gt_rows(persons), dets, []


def case_shifted():
    persons = _gt()
    rng = np.random.RandomState(1)
    # shifted by a frame width: IoU 0 with every ground-truth box (0.7 of the box's width would leave IoU
    # 0.3 / 1.7 with its own box but can land on a neighbour of the same action)
    dets = [_det(v, ts, _shift(box, 1.0), a, rng.uniform(0.5, 1.0))
            for v, ts, box, actions, _ in persons for a in actions]
    return _gt_rows(persons), dets, []


def case_class_missing():
    gt, dets, _ = case_perfect()
    return gt, [d for d in dets if d[6] != "2"], []


def case_duplicates():
    """Each detection twice (second copy lower), some ground-truth rows twice, and noise detections."""
    persons = _gt()
    rng = np.random.RandomState(2)
    dets = []
    for v, ts, box, actions, _ in persons:
        for a in actions:
            score = rng.uniform(0.3, 1.0)
            dets.append(_det(v, ts, box, a, score))
            dets.append(_det(v, ts, box, a, score * rng.uniform(0.5, 0.99)))
            dets.append(_det(v, ts, _shift(box, 0.05), a, score * rng.uniform(0.2, 1.2)))
    gt = _gt_rows(persons)
    gt += gt[::4]
    return gt, dets, []


def case_excluded():
    """One keyframe excluded: its ground truth is never found and its detections are all wrong, so only the
    exclusion makes the result perfect; plus detections on a keyframe without ground truth."""
    persons = _gt()
    rng = np.random.RandomState(3)
    dets = []
    for v, ts, box, actions, _ in persons:
        for a in actions:
            wrong = (v, ts) == ("vid1", 903)
            dets.append(_det(v, ts, _shift(box, 0.3) if wrong else box, a, rng.uniform(0.1, 1.0)))
    dets += [_det("vid2", 905, (0.1, 0.1, 0.5, 0.5), a, 0.99) for a in (1, 2, 3)]
    return _gt_rows(persons), dets, [["vid1", "0903"], ["vid0", "0950"]]


def case_no_groundtruth_class():
    """Detections of action 6 (evaluated, no ground truth) and 4 (not evaluated) at top scores."""
    gt, dets, _ = case_perfect()
    extra = [[*d[:6], "6", "0.999999"] for d in dets[::3]] + [[*d[:6], "4", "0.999998"] for d in dets[::5]]
    return gt, extra + dets, []


def case_random():
    """Noisy detections: jittered boxes, every action scored per box, false-positive boxes, 60+ rows a keyframe.
    Action 1 is scored low where right, so the 50-row cap per keyframe drops some of its true positives."""
    persons = _gt()
    rng = np.random.RandomState(4)
    dets = []
    by_frame: dict = {}
    for v, ts, box, actions, _ in persons:
        by_frame.setdefault((v, ts), []).append((box, actions))
    for (v, ts), people in by_frame.items():
        corners = rng.uniform(0, 0.6, size=(10, 2))
        boxes = people + [(tuple(np.r_[c, c + 0.3]), []) for c in corners]
        for box, actions in boxes:
            box = tuple(np.asarray(box) + rng.normal(0, 0.03, 4))
            for a in (1, 2, 3, 4, 5, 6):
                if a in actions:
                    score = rng.uniform(0.02, 0.5) if a == 1 else rng.uniform(0.3, 1.0)
                else:
                    score = rng.uniform(0.0, 0.9)
                dets.append(_det(v, ts, box, a, score))
    return _gt_rows(persons), dets, []


def case_ties():
    """The noisy case with scores rounded to one decimal: tied scores between hits and misses, whose order the
    official evaluator fixes by its sorting."""
    gt, dets, _ = case_duplicates()
    return gt, [[*d[:7], f"{round(float(d[7]), 1):.1f}"] for d in dets], []


CASES = {
    "perfect": case_perfect,
    "shifted": case_shifted,
    "class_missing": case_class_missing,
    "duplicates": case_duplicates,
    "excluded": case_excluded,
    "no_groundtruth_class": case_no_groundtruth_class,
    "random": case_random,
    "ties": case_ties,
}

NAN = float("nan")


def _both(mean: float, per_class: dict) -> dict:
    """The same numbers from both oracle versions."""
    return {"2018": (mean, per_class), "2020": (mean, per_class)}


# case -> {oracle version: (mAP, {action id: AP})}; "2018" got the excluded-timestamps file, "2020" cannot take one
EXPECTED: dict = {
    "perfect": _both(1.0, {1: 1.0, 2: 1.0, 3: 1.0, 5: 1.0, 6: NAN}),
    "shifted": _both(0.0, {1: 0.0, 2: 0.0, 3: 0.0, 5: 0.0, 6: NAN}),
    "class_missing": _both(0.75, {1: 1.0, 2: 0.0, 3: 1.0, 5: 1.0, 6: NAN}),
    "duplicates": _both(0.6071517516190938, {1: 0.68, 2: 0.6266339869281047, 3: 0.5919082125603865, 5: 0.5300648069878839, 6: NAN}),
    "excluded": {
        "2018": (0.8666666666666667, {1: 0.6666666666666666, 2: 0.9000000000000001, 3: 0.9000000000000001, 5: 1.0, 6: NAN}),
        "2020": (0.6947222222222222, {1: 0.25, 2: 0.87, 3: 0.87, 5: 0.788888888888889, 6: NAN}),
    },
    "no_groundtruth_class": _both(1.0, {1: 1.0, 2: 1.0, 3: 1.0, 5: 1.0, 6: NAN}),
    "random": _both(0.38297143453344107, {1: 0.1527777777777778, 2: 0.32130801687763716, 3: 0.6175660253496944, 5: 0.4402339181286549, 6: NAN}),
    "ties": _both(0.5604902329881492, {1: 0.6000000000000001, 2: 0.5486117597572706, 3: 0.579129204129204, 5: 0.5142199680661219, 6: NAN}),
}


def _score(case: str, version: str):
    gt, dets, excluded = CASES[case]()
    return frame_map(
        EVALUATED, gt, dets,
        excluded_timestamps=[(v, int(t)) for v, t in excluded] if version == "2018" else (),
        ignore_keyframes_without_groundtruth=version == "2020",
    )


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-9


@pytest.mark.parametrize("version", ["2018", "2020"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_official_evaluator(case, version):
    expected_map, expected_ap = EXPECTED[case][version]
    result = _score(case, version)
    assert _same(result.mean_ap, expected_map), (result.mean_ap, expected_map)
    for action_id, ap in expected_ap.items():
        assert _same(result.per_class[action_id][1], ap), (action_id, result.per_class[action_id][1], ap)


def test_definition_cases():
    assert _score("perfect", "2018").mean_ap == 1.0
    assert _score("shifted", "2018").mean_ap == 0.0
    missing = _score("class_missing", "2018")
    assert missing.per_class[2][1] == 0.0 and missing.mean_ap == pytest.approx(3 / 4)
    assert math.isnan(_score("no_groundtruth_class", "2018").per_class[6][1])
    # only the excluded keyframe is wrong, and the unannotated keyframe's detections are false positives unless
    # ignored: with both rules the result is perfect, with either alone it is not
    gt, dets, excluded = CASES["excluded"]()
    keys = [(v, int(t)) for v, t in excluded]
    assert frame_map(EVALUATED, gt, dets, excluded_timestamps=keys, ignore_keyframes_without_groundtruth=True).mean_ap == 1.0
    assert _score("excluded", "2018").mean_ap < 1.0
    assert _score("excluded", "2020").mean_ap < 1.0


def test_average_precision_by_hand():
    # TP, FP, TP of 3 ground truths: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3 -> 1/3 * 1 + 1/3 * 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 3) == pytest.approx(1 / 3 + 2 / 9)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 2) == 0.0
    assert math.isnan(average_precision(np.array([0.5]), np.array([False]), 0))


def test_bad_ground_truth_names_file_and_row(tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("vid0,0902,0.1,0.1,0.5,0.5,1,0\nvid0,0902,0.1,0.1,1.5,0.5,2,0\n")
    with pytest.raises(AvaFormatError, match=r"gt\.csv, row 2: box .* outside \[0, 1\]"):
        frame_map(EVALUATED, str(gt), [], full_label_map=FULL)
    gt.write_text("vid0,0902,0.1,0.1,0.5,0.5,77,0\n")
    with pytest.raises(AvaFormatError, match=r"row 1: action id 77 is not in the label map"):
        frame_map(EVALUATED, str(gt), [], full_label_map=FULL)
