"""Weights by name: the catalog, the cached download and its failures, the hub route, the PathManager handler.

Nothing here reaches the internet. An HTTP server on 127.0.0.1 stands in for the official download host
(through ``HIERA_DET_WEIGHTS_MIRROR``) and for the Hugging Face hub (through ``HF_ENDPOINT``, answering the
``/resolve/`` requests of ``hf_hub_download`` with the headers the hub's client reads). It serves tiny
checkpoints written by the reference implementations: hiera-transformer (image, MAE, video), sam2, timm and
transformers.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import socket
from pathlib import Path

import pytest
import torch

from hiera_det.checkpoint import (
    CATALOG,
    CheckpointError,
    check_weights,
    is_weights_name,
    load_checkpoint,
    resolve_weights,
)
from hiera_det.checkpoint import download
from hiera_det.checkpoint.__main__ import main as checkpoint_cli
from hiera_det.modeling import build_hiera
from weights_server import WeightsServer, start_weights_server

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1))
SIZE = (64, 64)
SAM2_WINDOWS = dict(window_spec=(8, 4, 2, 1), global_blocks=(2,), pos_embed_bkg_size=(4, 4))

# ------------------------------------------------------------------------------------- the test server


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A running ``WeightsServer`` with the mirror, ``HF_ENDPOINT`` and an empty cache pointed at it."""
    srv = start_weights_server(tmp_path / "cache", monkeypatch)
    yield srv
    srv.stop()


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# -------------------------------------------------------------------------- tiny checkpoints, per format


def _randomized(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return {k: v.contiguous() for k, v in module.state_dict().items()}


@dataclasses.dataclass
class Source:
    """A tiny checkpoint as the reference code writes it: its catalog name, the file (or hub directory) on
    disk, what the server serves, and the hiera_det model that it loads into."""

    name: str
    local: Path
    served: dict
    model_args: dict

    def model(self) -> torch.nn.Module:
        args = dict(self.model_args)
        return build_hiera(args.pop("arch"), **args)


def _save_official(tmp: Path, url_path: str, module) -> tuple[Path, dict]:
    path = tmp / Path(url_path).name
    torch.save({"model_state": _randomized(module)}, path)
    return path, {"files": {url_path: path.read_bytes()}}


def _make_official(tmp: Path) -> Source:
    import hiera

    image = hiera.Hiera(input_size=SIZE, num_classes=10, **TINY)
    path, served = _save_official(tmp, "/hiera/hiera_tiny_224.pth", image)
    return Source("hiera_tiny_224.mae_in1k_ft_in1k", path, served,
                  dict(arch="hiera_tiny_224", input_size=SIZE, num_classes=10, **TINY))


def _make_mae(tmp: Path) -> Source:
    from hiera.hiera_mae import MaskedAutoencoderHiera

    mae = MaskedAutoencoderHiera(input_size=SIZE, q_pool=2, decoder_embed_dim=16, decoder_depth=1,
                                 decoder_num_heads=1, **TINY)
    path, served = _save_official(tmp, "/hiera/mae_hiera_tiny_224.pth", mae)
    return Source("hiera_tiny_224.mae_in1k", path, served,
                  dict(arch="hiera_tiny_224", input_size=SIZE, num_classes=0, **TINY))


def _make_video(tmp: Path) -> Source:
    from conftest import _official_video_hiera

    video = _official_video_hiera(input_size=(8, *SIZE), num_classes=10, **TINY)
    path, served = _save_official(tmp, "/hiera/hiera_base_16x224.pth", video)
    return Source("hiera_base_16x224.mae_k400_ft_k400", path, served,
                  dict(arch="hiera_base_16x224", input_size=(8, *SIZE), num_classes=10, **TINY))


def _make_sam2(tmp: Path) -> Source:
    from sam2.modeling.backbones.hieradet import Hiera as Sam2Hiera

    trunk = Sam2Hiera(
        window_spec=SAM2_WINDOWS["window_spec"],
        global_att_blocks=SAM2_WINDOWS["global_blocks"],
        window_pos_embed_bkg_spatial_size=SAM2_WINDOWS["pos_embed_bkg_size"],
        **TINY,
    )
    state = {"image_encoder.trunk." + k: v for k, v in _randomized(trunk).items()}
    state["sam_mask_decoder.iou_token.weight"] = torch.randn(1, 32)
    path = tmp / "sam2.1_hiera_tiny.pt"
    torch.save({"model": state}, path)
    url_path = "/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    return Source("sam2_hiera_tiny.sam2_1", path, {"files": {url_path: path.read_bytes()}},
                  dict(arch="hiera_tiny_224", input_size=SIZE, num_classes=0, attention="window", **TINY,
                       **SAM2_WINDOWS))


def _hub_source(name: str, directory: Path, model_args: dict) -> Source:
    files = {n: (directory / n).read_bytes() for n in ("model.safetensors", "config.json")}
    return Source(name, directory, {"hub": {name: files}}, model_args)


def _make_timm(tmp: Path) -> Source:
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("hiera_tiny_224", pretrained=False, img_size=SIZE, num_classes=10, **TINY)
    directory = tmp / "timm"
    directory.mkdir()
    save_file(_randomized(model), str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"architecture": "hiera_tiny_224", "num_classes": 10}))
    return _hub_source("timm/hiera_tiny_224.mae_in1k_ft_in1k", directory,
                       dict(arch="hiera_tiny_224", input_size=SIZE, num_classes=10, **TINY))


def _make_transformers(tmp: Path) -> Source:
    from transformers import HieraConfig, HieraForImageClassification

    config = HieraConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], image_size=list(SIZE),
                         num_labels=10)
    model = HieraForImageClassification(config)
    _randomized(model)
    directory = tmp / "transformers"
    model.save_pretrained(directory)
    return _hub_source("facebook/hiera-tiny-224-in1k-hf", directory,
                       dict(arch="hiera_tiny_224", input_size=SIZE, num_classes=10, **TINY))


MAKERS = {
    "official": _make_official,
    "official_mae": _make_mae,
    "official_video": _make_video,
    "sam2": _make_sam2,
    "timm": _make_timm,
    "transformers": _make_transformers,
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Source]:
    tmp = tmp_path_factory.mktemp("sources")
    return {kind: make(tmp) for kind, make in MAKERS.items()}


def _serve(server: WeightsServer, source: Source) -> None:
    server.files.update(source.served.get("files", {}))
    server.hub.update(source.served.get("hub", {}))


def _fields(report) -> dict:
    return {k: v for k, v in dataclasses.asdict(report).items() if k != "source"}


# ------------------------------------------------------------------------------------------- the catalog


def test_catalog_names_urls_and_licences():
    official = [n for n in CATALOG if n.startswith("hiera_")]
    assert len(official) == 6 * 2 + 4 * 2
    for size in ("tiny", "small", "base", "base_plus", "large", "huge"):
        tuned, mae = CATALOG[f"hiera_{size}_224.mae_in1k_ft_in1k"], CATALOG[f"hiera_{size}_224.mae_in1k"]
        assert tuned.url == f"https://dl.fbaipublicfiles.com/hiera/hiera_{size}_224.pth"
        assert mae.url == f"https://dl.fbaipublicfiles.com/hiera/mae_hiera_{size}_224.pth"
        assert (tuned.format, mae.format, tuned.modality) == ("official", "official_mae", "image")
        for suffix in ("-hf", "-in1k-hf", "-mae-hf"):
            hub = CATALOG[f"facebook/hiera-{size.replace('_', '-')}-224{suffix}"]
            assert hub.hub_repo == hub.name and hub.architecture == f"hiera_{size}_224"
    for size in ("base", "base_plus", "large", "huge"):
        video = CATALOG[f"hiera_{size}_16x224.mae_k400"]
        assert video.url == f"https://dl.fbaipublicfiles.com/hiera/mae_hiera_{size}_16x224.pth"
        assert video.modality == "video" and CATALOG[f"hiera_{size}_16x224.mae_k400_ft_k400"].url
    sam2 = [e for e in CATALOG.values() if e.format == "sam2"]
    assert len(sam2) == 8 and all(e.attention == "window" and e.licence == "Apache 2.0" for e in sam2)
    sam2_host = "https://dl.fbaipublicfiles.com/segment_anything_2"
    assert CATALOG["sam2_hiera_base_plus.sam2"].url == f"{sam2_host}/072824/sam2_hiera_base_plus.pt"
    assert CATALOG["sam2_hiera_large.sam2_1"].url == f"{sam2_host}/092824/sam2.1_hiera_large.pt"
    assert all(e.licence == "CC BY-NC 4.0" for e in CATALOG.values() if e.format != "sam2")
    assert 100 < CATALOG["hiera_tiny_224.mae_in1k_ft_in1k"].size_mb < 120  # 28 M float32 parameters


def test_list_prints_name_what_size_licence(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
    assert checkpoint_cli(["--list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "hiera_base_224.mae_in1k " in x)
    assert "~315 MB" in line and "CC BY-NC 4.0" in line and "MAE pre-training on ImageNet-1K" in line
    sam2 = next(x for x in out.splitlines() if "sam2_hiera_large.sam2_1" in x)
    assert "Apache 2.0" in sam2 and "attention=window" in sam2
    assert "non-commercial use only" in out and str(tmp_path) in out


def test_names_paths_and_suggestions(tmp_path):
    existing = tmp_path / "hiera_tiny_224.mae_in1k"  # an existing path always wins over a name
    existing.write_bytes(b"")
    assert not is_weights_name(existing) and resolve_weights(existing) == str(existing)
    assert is_weights_name("hiera_tiny_224.mae_in1k")
    assert is_weights_name("hiera://facebook/hiera-tiny-224-hf")
    assert is_weights_name("someone/their-hiera-finetune")  # any hub id
    assert not is_weights_name("output/model_final.pth") and not is_weights_name("")
    assert resolve_weights("output/model_final.pth") == "output/model_final.pth"  # the reader reports it
    with pytest.raises(CheckpointError, match=r"'hiera_base_224.mae_in1k_ft_in1k'.*--list"):
        resolve_weights("hiera_base_224.mae_in1k_ft_in1")
    with pytest.raises(CheckpointError, match="sam2_hiera_tiny.sam2_1"):
        check_weights("sam2.1_hiera_tiny")
    with pytest.raises(CheckpointError, match="does not exist"):
        check_weights("output/model_final.pth")
    check_weights("hiera_base_224.mae_in1k", architecture="hiera_base_224")
    with pytest.raises(CheckpointError, match=r"build_hiera\('hiera_large_224'\)"):
        check_weights("hiera_large_224.mae_in1k", architecture="hiera_base_224")
    with pytest.raises(CheckpointError, match="MODEL.HIERA.ATTENTION window"):
        check_weights("sam2_hiera_large.sam2", architecture="hiera_large_224", attention="mask_unit")
    with pytest.raises(CheckpointError, match="video weights"):
        check_weights("hiera_base_16x224.mae_k400", architecture="hiera_base_224")


def test_a_model_that_cannot_fit_is_refused_before_any_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(download.MIRROR_ENV, _closed_port())  # a download attempt would fail differently
    image = build_hiera("hiera_tiny_224", input_size=SIZE, num_classes=0, **TINY)
    with pytest.raises(CheckpointError, match=r"video weights .* build_hiera\('hiera_base_16x224'\)"):
        load_checkpoint(image, "hiera_base_16x224.mae_k400")
    with pytest.raises(CheckpointError, match=r"attention='window'"):
        load_checkpoint(image, "sam2_hiera_tiny.sam2")
    # the converter passes names through to load_checkpoint, so it refuses early too
    import os
    import subprocess
    import sys

    output = tmp_path / "out.pth"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"), "--model", "hiera_tiny_224",
                           "--input", "hiera_base_16x224.mae_k400", "--output", str(output)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 1, done.stderr[-2000:]
    assert "hiera_base_16x224.mae_k400 holds video weights" in done.stderr
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- success


@pytest.mark.parametrize("kind", list(MAKERS))
def test_name_loads_like_the_file_and_is_cached(kind, sources, server):
    source = sources[kind]
    _serve(server, source)
    named, local = source.model(), source.model()
    report = load_checkpoint(named, source.name)
    expected = load_checkpoint(local, source.local)
    assert _fields(report) == _fields(expected) and report.loaded_keys
    for (key, a), b in zip(named.state_dict().items(), local.state_dict().values()):
        assert torch.equal(a, b), key

    path = Path(resolve_weights(source.name))
    assert report.source == f"{source.name} [{path}]" and str(path).startswith(os.environ[download.CACHE_ENV])
    recorded = Path(f"{path}.sha256").read_text().split()
    assert recorded == [hashlib.sha256(path.read_bytes()).hexdigest(), path.name]
    if "hub" in source.served:
        assert (path.parent / "config.json").is_file()
    served = len(source.served.get("files", {})) + sum(len(f) for f in source.served.get("hub", {}).values())
    assert sum(server.gets.values()) == served  # once each

    server.stop()  # the second use needs no network at all
    assert resolve_weights(f"hiera://{source.name}") == str(path)
    assert _fields(load_checkpoint(source.model(), source.name)) == _fields(expected)


def test_mirror_may_be_a_directory_and_must_be_a_url(sources, server, tmp_path, monkeypatch):
    source = sources["official"]
    mirror = tmp_path / "mirror" / "hiera"
    mirror.mkdir(parents=True)
    (mirror / "hiera_tiny_224.pth").write_bytes(source.local.read_bytes())
    monkeypatch.setenv(download.MIRROR_ENV, (tmp_path / "mirror").as_uri())
    assert Path(resolve_weights(source.name)).read_bytes() == source.local.read_bytes()
    monkeypatch.setenv(download.MIRROR_ENV, "mirror.example.org")
    with pytest.raises(CheckpointError, match="='mirror.example.org' is not a base URL"):
        resolve_weights("hiera_small_224.mae_in1k")


def test_a_file_placed_by_hand_is_used_offline(sources, tmp_path, monkeypatch):
    source = sources["sam2"]
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(download.MIRROR_ENV, _closed_port())
    with pytest.raises(CheckpointError) as err:
        resolve_weights(source.name)
    place = tmp_path / "segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt" in str(err.value)
    assert f"place it at {place}" in str(err.value)
    place.write_bytes(source.local.read_bytes())
    assert resolve_weights(source.name) == str(place)
    assert Path(f"{place}.sha256").read_text().split()[0] == hashlib.sha256(place.read_bytes()).hexdigest()


def test_cli_download_reports_each_name(sources, server, capsys):
    _serve(server, sources["official"])
    assert checkpoint_cli(["--download", "hiera_tiny_224.mae_in1k_ft_in1k", "hiera_tiny_224.mae_in1k"]) == 1
    captured = capsys.readouterr()
    assert "hiera_tiny_224.mae_in1k_ft_in1k: " in captured.out and "non-commercial" in captured.out
    assert "error: hiera_tiny_224.mae_in1k: " in captured.err and "404" in captured.err
    assert "1 of 2 failed" in captured.err


def test_progress_bar(sources, server, capsys):
    _serve(server, sources["official"])
    download.fetch(CATALOG[sources["official"].name], progress=True)
    bar = capsys.readouterr().err
    assert re.search(r"hiera_tiny_224.mae_in1k_ft_in1k: 100%\|\S+\| (\S+)/\1 ", bar), bar


def test_path_manager_handler_resolves_names(sources, server):
    from iopath.common.file_io import PathManager

    from hiera_det.checkpoint.path_handler import register_path_handler

    _serve(server, sources["official"])
    manager = PathManager()
    register_path_handler(manager)
    register_path_handler(manager)  # twice is harmless
    name = "hiera://hiera_tiny_224.mae_in1k_ft_in1k"
    assert manager.exists(name) and manager.isfile(name) and not manager.exists("hiera://no_such.weights")
    local = manager.get_local_path(name)
    assert Path(local).read_bytes() == sources["official"].local.read_bytes()
    with manager.open(name, "rb") as f:
        assert f.read(4) == Path(local).read_bytes()[:4]


# ---------------------------------------------------------------------------------------------- failures


def _cache_is_empty_of_weights(cache: Path) -> bool:
    return not [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_404_and_connection_refused_name_url_and_place(server, monkeypatch):
    cache = Path(os.environ[download.CACHE_ENV])
    with pytest.raises(CheckpointError) as err:
        resolve_weights("hiera_small_224.mae_in1k")
    text = str(err.value)
    assert f"{server.url}/hiera/mae_hiera_small_224.pth ({download.MIRROR_ENV} is set) answered 404" in text
    assert "https://dl.fbaipublicfiles.com/hiera/mae_hiera_small_224.pth" in text
    assert f"place it at {cache / 'hiera/mae_hiera_small_224.pth'}" in text

    monkeypatch.setenv(download.MIRROR_ENV, _closed_port())
    with pytest.raises(CheckpointError, match=r"cannot be reached \(Connection refused\)"):
        resolve_weights("hiera_small_224.mae_in1k")
    with pytest.raises(CheckpointError, match=r"has no repository facebook/hiera-small-224-hf"):
        resolve_weights("facebook/hiera-small-224-hf")
    monkeypatch.setenv("HF_ENDPOINT", _closed_port())
    with pytest.raises(CheckpointError) as err:
        resolve_weights("facebook/hiera-small-224-hf")
    assert "place them in " + str(cache / "huggingface/facebook/hiera-small-224-hf") in str(err.value)
    assert _cache_is_empty_of_weights(cache)


def test_a_cut_transfer_is_resumed_or_reported_and_deleted(sources, server, caplog):
    source = sources["official"]
    _serve(server, source)
    path_on_server = "/hiera/hiera_tiny_224.pth"
    server.cuts[path_on_server] = 1
    with caplog.at_level(logging.WARNING, logger=download.__name__):
        path = Path(resolve_weights(source.name))
    assert "broke off" in caplog.text and server.gets[path_on_server] == 2  # resumed with a range request
    assert path.read_bytes() == source.local.read_bytes()

    path.unlink()
    server.cuts[path_on_server] = download._ATTEMPTS
    with pytest.raises(CheckpointError, match=r"cut short \(the connection closed after \d+ of \d+ bytes"):
        resolve_weights(source.name)
    assert not path.exists() and not list(path.parent.glob("*.part"))


def test_corrupt_downloads_and_damaged_cache_are_never_used(sources, server, caplog):
    source = sources["official"]
    server.files["/hiera/hiera_tiny_224.pth"] = b"<html>please log in</html>"
    with pytest.raises(CheckpointError, match="not a readable checkpoint.*deleted and not used"):
        resolve_weights(source.name)
    assert _cache_is_empty_of_weights(Path(os.environ[download.CACHE_ENV]))

    _serve(server, source)
    path = Path(resolve_weights(source.name))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger=download.__name__):
        assert resolve_weights(source.name) == str(path)  # damaged in the cache: fetched again
    assert "does not match its recorded sha256" in caplog.text
    assert server.gets["/hiera/hiera_tiny_224.pth"] == 3
    assert path.read_bytes() == source.local.read_bytes()

    path.write_bytes(bytes(data))
    server.stop()
    with pytest.raises(CheckpointError, match="cannot be reached"):
        resolve_weights(source.name)
    assert not path.exists()


def test_hub_file_that_does_not_match_its_sha256_is_deleted(sources, server):
    source = sources["transformers"]
    _serve(server, source)
    server.etags[f"{source.name}/model.safetensors"] = "0" * 64
    with pytest.raises(CheckpointError, match="damaged .*while the hub announced 0000"):
        resolve_weights(source.name)
    cached = Path(os.environ[download.CACHE_ENV]) / "huggingface" / source.name / "model.safetensors"
    assert not cached.exists()


def test_hub_repository_with_pytorch_model_bin_or_without_weights(sources, server):
    from safetensors.torch import load_file

    local = sources["transformers"].local
    bin_file = Path(os.environ[download.CACHE_ENV]).parent / "pytorch_model.bin"
    torch.save(load_file(str(local / "model.safetensors")), bin_file)
    server.hub["someone/hiera-bin"] = {"pytorch_model.bin": bin_file.read_bytes(),
                                       "config.json": (local / "config.json").read_bytes()}
    path = Path(resolve_weights("someone/hiera-bin"))  # a hub id outside the catalog
    assert path.name == "pytorch_model.bin" and (path.parent / "config.json").is_file()
    report = load_checkpoint(sources["transformers"].model(), "someone/hiera-bin", strict=True)
    assert report.format == "Hugging Face transformers Hiera"
    assert report.source.startswith("someone/hiera-bin [")

    server.hub["someone/notes"] = {"README.md": b"no weights here"}
    with pytest.raises(CheckpointError, match="holds no model.safetensors or pytorch_model.bin"):
        resolve_weights("someone/notes")


def _resolve_in_child(name: str, waiting, results) -> None:
    class SignalWaiting(logging.Handler):
        def emit(self, record):
            if "waiting" in record.getMessage():
                waiting.set()

    log = logging.getLogger(download.__name__)
    log.addHandler(SignalWaiting())
    log.setLevel(logging.INFO)
    try:
        results.put(("ok", resolve_weights(name)))
    except Exception as err:  # noqa: BLE001  (reported to the parent, which fails the test)
        results.put(("error", repr(err)))


def test_two_processes_download_once(sources, server):
    source = sources["official"]
    _serve(server, source)
    context = multiprocessing.get_context("fork")  # children inherit the imports: no second torch start-up
    waiting, results = context.Event(), context.Queue()
    server.gate = waiting  # the download holds until the other process waits on the lock
    children = [
        context.Process(target=_resolve_in_child, args=(source.name, waiting, results)) for _ in range(2)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(10)
    assert [o[0] for o in outcomes] == ["ok", "ok"], outcomes
    assert outcomes[0][1] == outcomes[1][1] and waiting.is_set()
    assert server.gets["/hiera/hiera_tiny_224.pth"] == 1
    assert Path(outcomes[0][1]).read_bytes() == source.local.read_bytes()


_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _drop_root_file_permission_override() -> None:
    """Make permission bits apply to this process even as root (it loses CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[0].effective &= ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _resolve_read_only(names: list[str], results) -> None:
    try:
        _drop_root_file_permission_override()
    except OSError as err:
        results.put([("setup", repr(err))])
        return
    outcome = []
    for name in names:
        try:
            outcome.append(("ok", resolve_weights(name)))
        except CheckpointError as err:
            outcome.append(("error", str(err)))
    results.put(outcome)


def test_read_only_cache(sources, server):
    source = sources["official"]
    _serve(server, source)
    cache = Path(os.environ[download.CACHE_ENV])
    cached = Path(resolve_weights(source.name))  # downloaded while the cache was writable
    for directory in (cache, cached.parent):
        directory.chmod(0o555)
    try:
        context = multiprocessing.get_context("fork")  # dropping root's override must not outlive the test
        results = context.Queue()
        names = [source.name, "hiera_tiny_224.mae_in1k"]
        child = context.Process(target=_resolve_read_only, args=(names, results))
        child.start()
        outcome = results.get(timeout=60)
        child.join(10)
    finally:
        for directory in (cache, cached.parent):
            directory.chmod(0o755)
    assert outcome[0] == ("ok", str(cached)), outcome  # a cached file needs no write access
    kind, message = outcome[1]
    assert kind == "error" and f"the weights cache {cached.parent} is not writable" in message
    assert f"Set {download.CACHE_ENV} to a writable directory" in message
    assert server.gets["/hiera/mae_hiera_tiny_224.pth"] == 0
