"""Crash-safe checkpoint saving: a save cut short never leaves a corrupt model file or last_checkpoint."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

pytest.importorskip("detectron2")

from hiera_det.engine.checkpointer import AtomicDetectionCheckpointer, CheckpointFileError  # noqa: E402


def _checkpointer(directory, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return AtomicDetectionCheckpointer(model, str(directory), optimizer=optimizer), model


def _tag(directory):
    return (directory / "last_checkpoint").read_text()


def test_save_then_resume_restores_everything(tmp_path):
    saver, model = _checkpointer(tmp_path, seed=0)
    saver.save("model_0000004", iteration=4)
    assert _tag(tmp_path) == "model_0000004.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000004.pth"]

    loader, other = _checkpointer(tmp_path, seed=1)
    extra = loader.resume_or_load("", resume=True)
    assert extra == {"iteration": 4}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loader.checkpointables["optimizer"].state_dict()["state"][0]["momentum_buffer"] is not None


def test_crash_inside_torch_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    saver, model = _checkpointer(tmp_path)
    saver.save("model_0000004", iteration=4)
    good = (tmp_path / "model_0000004.pth").read_bytes()

    real_save = torch.save

    def save_half_then_crash(obj, f, *args, **kwargs):
        import io

        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(torch, "save", save_half_then_crash)
    with pytest.raises(OSError, match="simulated"):
        saver.save("model_0000009", iteration=9)
    with pytest.raises(OSError, match="simulated"):
        saver.save("model_0000004", iteration=4)  # overwriting an existing name must not damage it either
    monkeypatch.setattr(torch, "save", real_save)

    assert _tag(tmp_path) == "model_0000004.pth"
    listing = sorted(os.listdir(tmp_path))
    assert listing == ["last_checkpoint", "model_0000004.pth"], "temp files must be removed"
    assert (tmp_path / "model_0000004.pth").read_bytes() == good
    assert _checkpointer(tmp_path, seed=3)[0].resume_or_load("", resume=True) == {"iteration": 4}


_KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time, torch
    from hiera_det.engine.checkpointer import AtomicDetectionCheckpointer

    directory = sys.argv[1]
    saver = AtomicDetectionCheckpointer(torch.nn.Linear(64, 64), directory)
    saver.save("model_0000004", iteration=4)
    real_save = torch.save

    def stall_mid_write(obj, f, *args, **kwargs):
        f.write(b"PK\\x03\\x04 partial")  # the start of a zip archive, as torch.save begins
        f.flush()
        print("STALLED", flush=True)
        time.sleep(600)

    torch.save = stall_mid_write
    saver.save("model_0000009", iteration=9)
    """
)


def test_sigkill_during_save_leaves_loadable_state_and_stale_temp_is_cleaned(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        deadline = time.monotonic() + 120
        line = process.stdout.readline()
        assert line.strip() == "STALLED" and time.monotonic() < deadline, line
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stdout.close()

    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]
    assert len(leftovers) == 1 and leftovers[0].endswith("model_0000009.pth.partial")
    assert not (tmp_path / "model_0000009.pth").exists()
    assert _tag(tmp_path) == "model_0000004.pth"

    loader = AtomicDetectionCheckpointer(torch.nn.Linear(64, 64), str(tmp_path))
    assert loader.resume_or_load("", resume=True) == {"iteration": 4}
    listed = loader.get_all_checkpoint_files()
    assert listed == [str(tmp_path / "model_0000004.pth")], "temp files must not look like checkpoints"
    loader.save("model_0000009", iteration=9)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000004.pth", "model_0000009.pth"]


def test_truncated_checkpoint_error_names_file_and_previous_checkpoint(tmp_path):
    saver, _ = _checkpointer(tmp_path)
    saver.save("model_0000004", iteration=4)
    time.sleep(0.01)  # distinct modification times
    saver.save("model_0000009", iteration=9)
    data = (tmp_path / "model_0000009.pth").read_bytes()
    (tmp_path / "model_0000009.pth").write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointFileError) as info:
        _checkpointer(tmp_path)[0].resume_or_load("", resume=True)
    message = str(info.value)
    assert str(tmp_path / "model_0000009.pth") in message and "truncated or corrupt" in message
    assert f"echo model_0000004.pth > {tmp_path / 'last_checkpoint'}" in message


def test_not_a_checkpoint_and_missing_tagged_file(tmp_path):
    saver, _ = _checkpointer(tmp_path)
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointFileError, match="junk.pth"):
        saver.load(str(tmp_path / "junk.pth"))

    (tmp_path / "last_checkpoint").write_text("model_0000011.pth")
    with pytest.raises(FileNotFoundError, match=r"model_0000011.pth \(named by .*last_checkpoint\)"):
        saver.resume_or_load("", resume=True)

    (tmp_path / "last_checkpoint").write_text("")
    with pytest.raises(CheckpointFileError, match="last_checkpoint is empty"):
        saver.resume_or_load("", resume=True)


def test_non_main_process_does_not_write(tmp_path):
    model = torch.nn.Linear(2, 2)
    AtomicDetectionCheckpointer(model, str(tmp_path), save_to_disk=False).save("model_final")
    assert os.listdir(tmp_path) == []


def test_atomically_written_files_get_the_mode_of_the_umask(tmp_path):
    from hiera_det.engine.checkpointer import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(str(tmp_path / "a.json"), lambda f: f.write(b"{}"))
        os.umask(0o077)
        atomic_write(str(tmp_path / "b.json"), lambda f: f.write(b"{}"))
    finally:
        os.umask(old)
    assert (
        tmp_path / "a.json"
    ).stat().st_mode & 0o777 == 0o644  # as open() would give: readable by the group
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_a_damaged_file_outside_a_run_folder_gets_no_resume_advice(tmp_path):
    from hiera_det.engine.checkpointer import load_model_weights

    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "someone_elses.pth").write_bytes(b"whatever")  # not this run's checkpoint
    bad = tmp_path / "downloads" / "model_final.pth"
    bad.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointFileError) as info:
        load_model_weights(torch.nn.Linear(2, 2), str(bad))
    message = str(info.value)
    assert "truncated or corrupt" in message and "Copy or download the file again" in message
    assert "someone_elses" not in message and "last_checkpoint" not in message
