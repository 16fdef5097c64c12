"""The config of one run, as the tools build it: file + overrides + ``--dataset`` specs, fitted to the data
and to the machine, checked, frozen."""

from __future__ import annotations

import os

import torch

from ..checkpoint.zoo import PREFIX, is_weights_name
from ..config import get_hiera_cfg, merge_config, validate_hiera_config
from ..data.custom import add_dataset_specs, fit_config_to_data, register_custom_datasets


def build_run_config(config_file: str, opts: list[str], datasets: list[str] = ()) -> tuple:
    """The frozen config of a run and the notes to log once logging is up.

    ``datasets`` are ``NAME=SPEC`` strings (``hiera_det.data.custom``) added to ``DATASETS.CUSTOM``; the class
    count and mask format follow the training data unless ``opts`` set them. Without CUDA the run moves to
    the CPU with AMP off. A weights name in ``MODEL.WEIGHTS`` becomes a ``hiera://`` path.
    """
    cfg = merge_config(get_hiera_cfg(), config_file, opts)
    notes = []
    add_dataset_specs(cfg, datasets)
    register_custom_datasets(cfg)
    notes += fit_config_to_data(cfg, explicit_keys=set(opts[0::2]))
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu":
        notes.append(f"CUDA is not available: MODEL.DEVICE {cfg.MODEL.DEVICE} -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and torch.device(cfg.MODEL.DEVICE).type == "cpu":
        notes.append("SOLVER.AMP.ENABLED needs CUDA: training in float32 on the CPU")
        cfg.SOLVER.AMP.ENABLED = False
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(os.path.expanduser(weights)):
        if not is_weights_name(weights):
            raise FileNotFoundError(f"MODEL.WEIGHTS {weights!r} is not a file or a weights name; give the path "
                                    "of a trained checkpoint (.pth), a name from `python -m hiera_det.checkpoint "
                                    "--list`, or '' to start from MODEL.HIERA.WEIGHTS / random init")
        cfg.MODEL.WEIGHTS = PREFIX + weights
    validate_hiera_config(cfg)
    cfg.freeze()
    return cfg, notes
