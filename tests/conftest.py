"""Fixtures shared by every test: few CPU threads, a fixed seed, and randomised reference weights."""

from __future__ import annotations

import copy
import random
from collections import OrderedDict

import cv2  # noqa: F401  # before any test module imports decord: see hiera_det.data.video_io._decord
import pytest
import torch
import torch.nn as nn

from hiera_det.modeling import build_hiera


@pytest.fixture(autouse=True)
def _few_threads_and_fixed_seed():
    # The suite shares two cores with other work; more threads only add contention.
    torch.set_num_threads(2)
    torch.manual_seed(0)
    random.seed(0)


def _randomize(module: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Give every parameter nonzero random values, in place.

    Zero-initialised tensors (position embeddings, biases, a head scaled to ~0) would let a loader that
    forgets or misplaces them pass a parity test, so everything is drawn anew: LayerNorm weights around 1,
    position embeddings large enough to matter, the rest small.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = {id(p) for m in module.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
            if id(p) in norms:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            elif "pos" in name.rsplit(".", 1)[-1] or "position" in name:
                p.copy_(0.2 * noise)
            else:
                p.copy_(std * noise)
    return module.eval()


@pytest.fixture
def randomize():
    """``randomize(module, seed=0)``: every parameter redrawn with a nonzero std; returns it in eval mode."""
    return _randomize


@pytest.fixture(scope="module")
def hiera_model():
    """``hiera_model(name, **overrides)``: a fresh copy of ``build_hiera(name, **overrides)``.

    Initialising a trunk costs far more than copying one, so each configuration is built once per test
    module (the last few are kept) and handed out as deep copies that tests may change freely.
    """
    built: OrderedDict = OrderedDict()

    def make(name: str, **overrides) -> nn.Module:
        key = (name, tuple(sorted(overrides.items())))
        if key not in built:
            built[key] = build_hiera(name, **overrides)
            if len(built) > 6:
                built.popitem(last=False)
        built.move_to_end(key)
        return copy.deepcopy(built[key])

    return make


def _official_video_hiera(**overrides) -> nn.Module:
    pytest.importorskip("hiera")
    from benchmarks.peers import official_video_hiera

    return official_video_hiera(**overrides)


@pytest.fixture
def official_video_hiera():
    """``official_video_hiera(**overrides)``: the official package's video Hiera (base 16x224 arguments,
    ``embed_dim`` / ``num_heads`` / ``stages`` / ``input_size`` overridable); skips without hiera-transformer."""
    return _official_video_hiera
