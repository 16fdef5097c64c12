"""Reading checkpoint files and directories into memory, with errors that say which file and what to do."""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .report import CheckpointError

# Hugging Face ``save_pretrained`` weight files, in the order transformers itself prefers them.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass
class RawCheckpoint:
    """A checkpoint as read: the object in the file, where it came from, and a Hugging Face config.json
    when one sat beside the weights."""

    obj: object
    source: str
    hf_config: dict | None = None


def _corrupt(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot read checkpoint {path}: the file is truncated or corrupt, or not a checkpoint at all "
        f"({type(err).__name__}: {_reason(err)}). Download or copy it again (compare its size or checksum with "
        f"the original)."
    )


def _reason(err: Exception) -> str:
    """The line of a reader's error that says what is wrong, without torch's advice to load the file with
    ``weights_only=False`` (which would run code stored in it)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and "weights_only" not in line]
    named = [line for line in lines if "error:" in line.lower()]
    return (named or lines or ["no message"])[-1 if named else 0]


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _corrupt(path, err) from err


def refuses_python_objects(err: Exception) -> bool:
    """Whether ``err`` is torch.load(weights_only=True) refusing a file that holds Python objects (other
    failures of its unpickler, such as an unknown opcode in a damaged file, are corruption)."""
    refusal = r"GLOBAL \S+ was not an allowed global|whose module \S+ is blocked"
    return re.search(refusal, str(err)) is not None


def python_objects_message(path: str | Path, err: Exception | None = None) -> str:
    """Why a checkpoint holding Python objects is not loaded, and how to re-save its weights safely."""
    path = Path(path)
    try:  # names the objects by reading the pickle's opcodes; nothing in the file runs
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) file: fall back to the one global torch's error names
        found = re.findall(r"GLOBAL (\S+) was not an allowed global", str(err or ""))
    what = f" ({', '.join(found[:5])}{', ...' if len(found) > 5 else ''})" if found else ""
    resaved = path.with_name(f"{path.stem}_weights{path.suffix or '.pth'}")
    return (
        f"checkpoint {path} holds Python objects besides tensors{what}. Unpickling them can run code "
        f"stored in the file, so it is not loaded (torch.load(weights_only=True) only). If you trust where "
        f"the file came from, re-save its weights alone and use the new file:\n"
        f"  python -c \"import torch; c = torch.load({str(path)!r}, map_location='cpu', weights_only=False); "
        f"torch.save({{'model': c.get('model', c.get('model_state', c.get('state_dict', c)))}}, "
        f"{str(resaved)!r})\"\n"
        f"(weights_only=False there runs the file's code: do it only for a file from a source you trust.)"
    )


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if refuses_python_objects(err):
            raise CheckpointError(python_objects_message(path, err)) from err
        raise _corrupt(path, err) from err
    except MemoryError:
        raise
    except Exception as err:  # a damaged or foreign file fails anywhere in torch's readers (even KeyError)
        raise _corrupt(path, err) from err


def _read_weight_file(path: Path) -> object:
    if path.name.endswith(".index.json"):
        return _read_sharded(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, OSError) as err:
        raise _corrupt(index, err) from err
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{index} lists shard {shard}, which is not in {index.parent}; download it")
        part = _read_weight_file(shard_path)
        if not isinstance(part, dict):
            raise CheckpointError(f"shard {shard_path} does not hold a state dict")
        state.update(part)
    return state


def _read_hf_config(directory: Path) -> dict | None:
    path = directory / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError) as err:
        raise _corrupt(path, err) from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a Hugging Face config (expected a JSON object)")
    return config


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Read a checkpoint file, a Hugging Face ``save_pretrained`` directory, or a Detectron2 output
    directory (through its ``last_checkpoint`` file)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; check the path (a file, a Hugging Face save_pretrained "
            f"directory, or a Detectron2 output directory)"
        )
    if path.is_dir():
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                return RawCheckpoint(_read_weight_file(path / name), str(path / name), _read_hf_config(path))
        last = path / "last_checkpoint"
        if last.is_file():
            target = path / last.read_text().strip()
            if not target.is_file():
                raise CheckpointError(f"{last} names {target.name}, which is not in {path}")
            return RawCheckpoint(_read_weight_file(target), str(target))
        found = sorted(p.name for p in path.iterdir())[:10]
        raise CheckpointError(
            f"directory {path} holds no checkpoint: looked for {', '.join(HF_WEIGHT_FILES)} (Hugging Face) "
            f"and last_checkpoint (Detectron2), found {found or 'nothing'}. Pass the weight file itself."
        )
    hf_config = _read_hf_config(path.parent) if path.name in HF_WEIGHT_FILES else None
    return RawCheckpoint(_read_weight_file(path), str(path), hf_config)
