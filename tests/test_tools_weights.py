"""load_model_weights, the one way the tools load a trained model, and the checkpointer under it: read once,
with torch.load(weights_only=True); Python objects and pickles refused with a way out; the fit reported."""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import shlex
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

pytest.importorskip("detectron2")

from hiera_det.checkpoint import CheckpointError  # noqa: E402
from hiera_det.engine.checkpointer import (  # noqa: E402
    AtomicDetectionCheckpointer,
    CheckpointFileError,
    load_model_weights,
)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))


class _RunsCodeWhenUnpickled:
    """Unpickling it creates the folder ``marker``: the stand-in for a malicious checkpoint's payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def assert_same_weights(model: nn.Module, state: dict) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_loads_a_trained_model_reading_the_file_once_weights_only(tmp_path, monkeypatch):
    source = tiny_model(seed=1)
    AtomicDetectionCheckpointer(source, save_dir=str(tmp_path)).save("model_final", iteration=7)
    calls = []
    real_load = torch.load

    def counting_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    model = tiny_model(seed=2)
    report = load_model_weights(model, str(tmp_path / "model_final.pth"))
    assert calls == [True], "read exactly once, with weights_only=True"
    assert_same_weights(model, source.state_dict())
    assert report.complete and report.loaded == report.model_tensors == 4
    assert "4 of 4 model tensors loaded" in str(report)


def test_python_objects_are_refused_without_running_them(tmp_path):
    path = tmp_path / "model_with_code.pth"
    marker = tmp_path / "code_ran"
    torch.save({"model": tiny_model(seed=1).state_dict(), "extra": _RunsCodeWhenUnpickled(marker)}, path)
    model = tiny_model(seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointFileError, match=f"checkpoint {path} holds Python objects.*posix.mkdir"):
        load_model_weights(model, str(path))
    assert not marker.exists(), "unpickling ran the file's code"
    assert_same_weights(model, before)


def test_the_refusal_says_how_to_resave_the_weights_and_that_works(tmp_path):
    """The suggested command (for a file the user trusts) writes a file that loads."""
    path = tmp_path / "with_args.pth"
    source = tiny_model(seed=1)
    torch.save({"model": source.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError) as refused:
        load_model_weights(tiny_model(), str(path))
    message = str(refused.value)
    assert "argparse.Namespace" in message and "weights_only=False" in message and "trust" in message
    [command] = [line.strip() for line in message.splitlines() if line.strip().startswith("python -c")]
    argv = shlex.split(command)
    subprocess.run([sys.executable, *argv[1:]], check=True, timeout=300)
    model = tiny_model(seed=2)
    load_model_weights(model, str(tmp_path / "with_args_weights.pth"))
    assert_same_weights(model, source.state_dict())


def test_detectron2_pickles_load_only_on_request(tmp_path, caplog):
    path = tmp_path / "model_zoo.pkl"
    source = tiny_model(seed=1)
    with open(path, "wb") as f:
        arrays = {k: v.numpy() for k, v in source.state_dict().items()}
        pickle.dump({"model": arrays, "__author__": "test"}, f)
    with pytest.raises(CheckpointFileError, match="pickle.*runs any code.*--allow-pickle"):
        load_model_weights(tiny_model(), str(path))
    model = tiny_model(seed=2)
    with caplog.at_level(logging.WARNING):
        load_model_weights(model, str(path), allow_pickle=True)
    assert_same_weights(model, source.state_dict())
    assert "Unpickling" in caplog.text


def test_pycls_files_are_read_weights_only(tmp_path):
    path = tmp_path / "pycls.pyth"
    source = tiny_model(seed=1)
    torch.save({"model_state": source.state_dict(), "epoch": 3}, path)
    model = tiny_model(seed=2)
    load_model_weights(model, str(path))
    assert_same_weights(model, source.state_dict())


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {"backbone.res2.conv.weight": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="does not fit the model.*backbone.res2.*config it was trained"):
        load_model_weights(tiny_model(), str(foreign))
    reshaped = tmp_path / "reshaped.pth"  # the right names, every shape different
    wrong_shapes = {k: torch.zeros(len(v) + 1) for k, v in tiny_model().state_dict().items()}
    torch.save({"model": wrong_shapes}, reshaped)
    with pytest.raises(CheckpointError, match="none of its 4 tensors matches"):
        load_model_weights(tiny_model(), str(reshaped))


def test_a_partial_fit_loads_what_fits_and_warns_with_counts(tmp_path, caplog):
    source = tiny_model(seed=1)
    state = source.state_dict()
    path = tmp_path / "partial.pth"
    torch.save({"model": {"0.weight": state["0.weight"], "0.bias": state["0.bias"],
                          "1.weight": torch.zeros(5, 5), "head.extra": torch.zeros(1)}}, path)  # fmt: skip
    model = tiny_model(seed=2)
    with caplog.at_level(logging.WARNING, logger="hiera_det"):
        report = load_model_weights(model, str(path))
    assert report.loaded == 2 and not report.complete
    assert torch.equal(model.state_dict()["0.weight"], state["0.weight"])
    warning = caplog.text
    assert "2 of 4 model tensors loaded" in warning and "1 with another shape" in warning
    assert "1 not in the checkpoint" in warning and "1 checkpoint tensors not in the model" in warning


def test_missing_and_truncated_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth does not exist"):
        load_model_weights(tiny_model(), str(tmp_path / "absent.pth"))
    truncated = tmp_path / "truncated.pth"
    torch.save({"model": tiny_model().state_dict()}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointFileError, match="truncated.pth .* truncated or corrupt"):
        load_model_weights(tiny_model(), str(truncated))
    with pytest.raises(CheckpointError, match="no checkpoint given"):
        load_model_weights(tiny_model(), "")


def test_resume_never_unpickles_objects(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"model": tiny_model().state_dict(), "extra": _RunsCodeWhenUnpickled(marker)},
               tmp_path / "model_0000009.pth")  # fmt: skip
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(CheckpointFileError, match="holds Python objects"):
        AtomicDetectionCheckpointer(tiny_model(), save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert not marker.exists()


def test_inference_refuses_a_checkpoint_that_leaves_model_tensors_at_initialization(tmp_path):
    """The demos and --eval-only load with require_complete: a partial fit is an error naming the counts and
    the fix, while extra checkpoint tensors are still ignored."""
    state = tiny_model(seed=1).state_dict()
    partial = tmp_path / "partial.pth"
    torch.save({"model": {"0.weight": state["0.weight"], "0.bias": state["0.bias"],
                          "1.weight": torch.zeros(5, 5)}}, partial)  # fmt: skip
    with pytest.raises(CheckpointError, match=r"only in part \(.*2 of 4 model tensors.*config it was trained"):
        load_model_weights(tiny_model(), str(partial), require_complete=True)
    extra = tmp_path / "extra.pth"
    torch.save({"model": {**state, "head.extra": torch.zeros(1)}}, extra)
    model = tiny_model(seed=2)
    report = load_model_weights(model, str(extra), require_complete=True)
    assert report.loaded == 4 and report.unexpected_keys == ["head.extra"]
    assert_same_weights(model, state)
