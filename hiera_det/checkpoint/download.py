"""Fetching named weights into a local cache: downloaded once across processes, checked, verified on use.

``resolve_weights(path_or_name)`` turns a catalog name (``hiera_base_224.mae_in1k_ft_in1k``), a Hugging Face
hub id (``facebook/hiera-base-224-hf``) or a ``hiera://`` name into a local file, downloading it the first
time; an existing path comes back unchanged.

Environment:

* ``HIERA_DET_CACHE``: the cache directory (default ``~/.cache/hiera_det/checkpoints``). A file sits at the
  path of its URL (``hiera/hiera_base_224.pth``) or at ``huggingface/OWNER/NAME/`` for a hub repository, so
  a file downloaded elsewhere can be placed there by hand, and a copy of the cache can serve as a mirror.
* ``HIERA_DET_WEIGHTS_MIRROR``: a base URL (``https://``, ``http://`` or ``file://``) that replaces
  ``https://dl.fbaipublicfiles.com`` in the official download addresses.
* ``HF_ENDPOINT``: the Hugging Face hub (or hub mirror) that serves the hub ids, as for the hub's own client.

Every download goes to a temporary file that is renamed into place once it is complete, has the length the
server announced and reads as a checkpoint; its sha256 is written beside it (``FILE.sha256``, in
``sha256sum`` format) and checked each time the file is used. A file lock makes concurrent processes (the
ranks of a multi-GPU launch) download once: the others wait and use the result.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import pickle
import re
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import torch

from .report import CheckpointError
from .zoo import HUB_HOST, OFFICIAL_HOST, WeightsEntry, check_entry_fits, classify, unknown_name_error

CACHE_ENV = "HIERA_DET_CACHE"
MIRROR_ENV = "HIERA_DET_WEIGHTS_MIRROR"
DEFAULT_CACHE = "~/.cache/hiera_det/checkpoints"
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in the order the hub's libraries prefer

_ATTEMPTS = 3  # a transfer that breaks off after making progress is resumed this many times in all
_RETRY_WAIT_S = 1.0
_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

logger = logging.getLogger(__name__)


class _TransferFailed(Exception):
    """A download that started and broke off (after retries); the message says how far it got."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cache_path(entry: WeightsEntry) -> Path:
    """Where ``entry``'s file lives in the cache (for a hub repository: its weights file)."""
    if entry.url is not None:
        return cache_root() / urlsplit(entry.url).path.lstrip("/")
    return _hub_weights(_hub_dir(entry.hub_repo))


def is_cached(entry: WeightsEntry) -> bool:
    return cache_path(entry).is_file()


def download_url(entry: WeightsEntry) -> str:
    """The address ``entry`` is downloaded from: its official URL, or the mirror's when one is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return entry.url
    if urlsplit(mirror).scheme not in ("http", "https", "file"):
        raise CheckpointError(
            f"{MIRROR_ENV}={mirror!r} is not a base URL; set it to http://HOST[/PATH], https://... or "
            f"file:///DIRECTORY (it replaces {OFFICIAL_HOST} in the official addresses), or unset it"
        )
    return mirror.rstrip("/") + entry.url.removeprefix(OFFICIAL_HOST)


# ----------------------------------------------------------------------------------- names to local paths


def resolve_weights(path_or_name: str | os.PathLike) -> str:
    """A local path for ``path_or_name``: an existing file or directory unchanged, a catalog name, hub id or
    ``hiera://`` name downloaded into the cache (or found there). Raises ``CheckpointError`` naming the fix
    when a name is unknown or its download fails; a missing path is returned as is for the reader to report.
    """
    kind, value = classify(path_or_name)
    if kind == "entry":
        return str(fetch(value))
    if kind == "hub":
        return str(fetch_hub(value))
    if kind == "unknown":
        raise unknown_name_error(value)
    return value


def check_weights(
    path_or_name: str | os.PathLike, *, architecture: str | None = None, attention: str = "mask_unit"
) -> None:
    """Check, without network access, that ``path_or_name`` is an existing path or a weights name that fits
    a model of ``architecture`` (an official name) and ``attention``; raise ``CheckpointError`` if not."""
    kind, value = classify(path_or_name)
    if kind == "entry":
        video = None if architecture is None else "16x" in architecture
        check_entry_fits(value, architecture=architecture, attention=attention, video=video)
    elif kind == "unknown":
        raise unknown_name_error(value)
    elif kind == "path" and not os.path.exists(os.path.expanduser(value)):
        raise CheckpointError(
            f"{value} does not exist; give an existing checkpoint file or directory, or a weights name "
            f"(`python -m hiera_det.checkpoint --list`)"
        )


# ------------------------------------------------------------------------------------------ cached files


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _recorded_sha256(path: Path) -> str | None:
    try:
        return _sidecar(path).read_text().split()[0].lower()
    except (OSError, IndexError):
        return None


def _write_sidecar(path: Path, digest: str) -> None:
    sidecar = _sidecar(path)
    tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.part")
    tmp.write_text(f"{digest}  {path.name}\n")
    os.replace(tmp, sidecar)


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as a checkpoint, or ``None`` when it can (its tensors are not loaded)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                f.keys()
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()  # the CRC of every member: catches damage anywhere in the file
            if bad is not None:
                return f"the checksum of {bad} inside the archive does not match"
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch words every unpickling failure as "Weights only load failed"; only an object outside the
        # allowed types ("Unsupported global") means an intact file, which the loader then explains
        if "Unsupported global" in str(err):
            return None
        return f"{type(err).__name__}: not a torch checkpoint"
    except Exception as err:  # noqa: BLE001  (a damaged file fails in the readers with many error types)
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def _check_cached(path: Path, label: str, *, repair: bool) -> str | None:
    """``None`` when ``path`` is a usable cached file, else why not (it is missing or damaged).

    A file without a recorded sha256 was placed by hand: it is used if it reads as a checkpoint, and its
    sha256 is recorded when the cache is writable. With ``repair`` (only under the download lock) a damaged
    file is deleted so that it can be fetched again.
    """
    if not path.is_file():
        return "missing"
    recorded = _recorded_sha256(path)
    if recorded is not None:
        actual = sha256_of(path)
        if actual == recorded:
            return None
        problem = f"{path} does not match its recorded sha256 ({actual} instead of {recorded})"
    else:
        problem = _unreadable(path)
        if problem is None:
            try:
                _write_sidecar(path, sha256_of(path))
                logger.info("using %s for %s, placed by hand; its sha256 is now recorded", path, label)
            except OSError:
                logger.info("using %s for %s, placed by hand", path, label)
            return None
        problem = f"{path} (placed by hand) is not a readable checkpoint ({problem})"
    if repair:
        _delete(path, problem)
    return problem


def _delete(path: Path, problem: str) -> None:
    """Take a damaged cached file out of the way. It is moved aside, not deleted: it may be a file someone
    placed by hand, and nothing they wrote is lost."""
    aside = path.with_name(path.name + ".rejected")
    try:
        if path.exists():
            os.replace(path, aside)
        _sidecar(path).unlink(missing_ok=True)
    except OSError as err:
        raise CheckpointError(f"{problem}; it cannot be moved aside ({err.strerror}): move it by hand") from err
    logger.warning("%s: moved to %s, it will not be used (delete that file once you no longer need it)",
                   problem, aside)  # fmt: skip


@contextmanager
def _download_lock(lock_path: Path, label: str, problem: str) -> Iterator[None]:
    """Hold an exclusive lock for downloading into ``lock_path``'s directory, waiting for another process
    that holds it; a cache directory that cannot be written is an error naming the variable to set."""
    from filelock import FileLock, Timeout  # a dependency of torch

    lock = FileLock(str(lock_path), mode=0o666)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("another process is downloading %s; waiting for it to finish", label)
            lock.acquire()
    except OSError as err:
        cached = f" (the cached copy is unusable: {problem})" if problem != "missing" else ""
        raise CheckpointError(
            f"cannot download {label}: the weights cache {lock_path.parent} is not writable "
            f"({err.strerror}){cached}. Set {CACHE_ENV} to a writable directory, or make this one writable"
        ) from err
    try:
        yield
    finally:
        lock.release()


def _fetch_once(
    locate: Callable[[], Path], lock_path: Path, label: str, download: Callable[[], Path]
) -> Path:
    """The cached file ``locate()`` if it is usable, else ``download()``, run by one process at a time."""
    problem = _check_cached(locate(), label, repair=False)
    if problem is None:
        return locate()
    with _download_lock(lock_path, label, problem):
        # another process may have finished while this one waited, or the copy may be damaged
        if _check_cached(locate(), label, repair=True) is None:
            return locate()
        return download()


# ------------------------------------------------------------------------------------- official URLs


def fetch(entry: WeightsEntry, *, progress: bool | None = None) -> Path:
    """The local file of a catalog entry, downloaded into the cache the first time. ``progress``: show a
    progress bar (default: when stderr is a terminal; the hub's client shows its own for hub entries)."""
    if entry.hub_repo is not None:
        return fetch_hub(entry.hub_repo)
    path = cache_path(entry)
    lock = path.with_name(path.name + ".lock")
    return _fetch_once(lambda: path, lock, entry.name, lambda: _download_file(entry, path, progress))


def _manual_hint(entry: WeightsEntry, path: Path) -> str:
    where = urlsplit(entry.url).path.lstrip("/")
    return (
        f"Without network access, download {entry.url} on another machine and place it at {path}: it is "
        f"then used without any network access; or set {MIRROR_ENV} to a mirror that holds {where}."
    )


def _download_file(entry: WeightsEntry, path: Path, progress: bool | None) -> Path:
    url = download_url(entry)
    for stale in path.parent.glob(f"{path.name}.*.part"):  # left by a killed process: the lock is ours
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    logger.info("downloading %s from %s to %s (about %d MB)", entry.name, url, path, entry.size_mb)
    try:
        try:
            digest = _transfer(url, tmp, entry.name, progress)
        except urllib.error.HTTPError as err:
            where = f" ({MIRROR_ENV} is set)" if url != entry.url else ""
            missing = " the file is not there" if err.code in (404, 410) else ""
            raise CheckpointError(
                f"cannot download {entry.name}: {url}{where} answered {err.code} {err.reason}:{missing}. "
                f"{_manual_hint(entry, path)}"
            ) from err
        except urllib.error.URLError as err:
            reason = getattr(err.reason, "strerror", None) or err.reason
            raise CheckpointError(
                f"cannot download {entry.name}: {urlsplit(url).netloc or url} cannot be reached ({reason}). "
                f"{_manual_hint(entry, path)}"
            ) from err
        except _TransferFailed as err:
            raise CheckpointError(
                f"the download of {entry.name} from {url} was cut short ({err}); the partial file was "
                f"deleted and nothing was used. Run again to retry. {_manual_hint(entry, path)}"
            ) from err
        except (OSError, http.client.HTTPException) as err:
            raise CheckpointError(
                f"cannot download {entry.name}: {url} gave no answer ({type(err).__name__}: {err}). "
                f"{_manual_hint(entry, path)}"
            ) from err
        problem = _unreadable(tmp)
        if problem is not None:
            logger.warning("the file downloaded from %s is not a checkpoint (%s): deleted", url, problem)
            raise CheckpointError(
                f"the file downloaded from {url} for {entry.name} is not a readable checkpoint ({problem}); "
                f"it was deleted and not used. A proxy or a login page may have answered instead of the "
                f"server: open {url} in a browser. {_manual_hint(entry, path)}"
            )
        _write_sidecar(path, digest)  # first, so that a file at `path` always has its sha256 beside it
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("downloaded %s to %s (sha256 %s)", entry.name, path, digest)
    return path


class _NoBar:
    """Stands in for a tqdm bar where tqdm is not installed (the log still says what is downloaded)."""

    total = None

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def refresh(self) -> None:
        pass


def _progress_bar(label: str, progress: bool | None):
    """A byte-counting tqdm bar on stderr; by default shown only when stderr is a terminal."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    disable = None if progress is None else not progress
    return tqdm(desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, mininterval=0.5,
                disable=disable)


def _write(f, block: bytes, tmp: Path) -> None:
    try:
        f.write(block)
    except OSError as err:  # not a network failure: retrying would not help
        raise CheckpointError(
            f"cannot write {tmp} ({err.strerror}): free some space there, or set {CACHE_ENV} to another "
            f"directory"
        ) from err


def _transfer(url: str, tmp: Path, label: str, progress: bool | None) -> str:
    """Stream ``url`` into ``tmp``; returns its sha256. A transfer that breaks off after receiving data is
    resumed (with an HTTP range request when the server honours one) up to ``_ATTEMPTS`` times in all."""
    digest, received, total = hashlib.sha256(), 0, None
    with open(tmp, "wb") as f, _progress_bar(label, progress) as bar:
        for attempt in range(1, _ATTEMPTS + 1):
            start = received
            request = urllib.request.Request(url, headers={"User-Agent": "hiera_det"})
            if received:
                request.add_header("Range", f"bytes={received}-")
            try:
                with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                    if received and response.status != 206:  # the server ignored the range: start again
                        f.seek(0)
                        f.truncate()
                        digest, received, start = hashlib.sha256(), 0, 0
                        bar.reset()
                    length = response.headers.get("Content-Length")
                    if length is not None and total is None:
                        total = received + int(length)
                        bar.total = total
                        bar.refresh()
                    while block := response.read(_CHUNK):
                        _write(f, block, tmp)
                        digest.update(block)
                        received += len(block)
                        bar.update(len(block))
                if total is None or received == total:
                    f.flush()
                    os.fsync(f.fileno())
                    return digest.hexdigest()
                problem = f"the connection closed after {received} of {total} bytes"
            except urllib.error.HTTPError:
                raise
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                if received == start:
                    raise  # nothing came through: not a transfer to resume
                problem = f"{type(err).__name__} after {received} of {total or 'unknown'} bytes"
            if received == start or attempt == _ATTEMPTS:
                raise _TransferFailed(f"{problem}, after {attempt} attempt{'s' if attempt > 1 else ''}")
            logger.warning("download of %s broke off (%s); resuming", label, problem)
            time.sleep(_RETRY_WAIT_S)
    raise AssertionError("unreachable: the last attempt returns or raises")


# -------------------------------------------------------------------------------- Hugging Face hub ids


def _hub_dir(repo_id: str) -> Path:
    return cache_root() / "huggingface" / repo_id


def _hub_weights(directory: Path) -> Path:
    """The weights file of a hub repository's cache directory: the one present, else where it would go."""
    present = [directory / n for n in HUB_WEIGHT_FILES if (directory / n).is_file()]
    return present[0] if present else directory / HUB_WEIGHT_FILES[0]


def fetch_hub(repo_id: str) -> Path:
    """The weights file of a Hugging Face hub repository (``config.json`` beside it), downloaded with the
    hub's own client into the cache the first time."""
    directory = _hub_dir(repo_id)
    return _fetch_once(
        lambda: _hub_weights(directory), directory / "download.lock", repo_id,
        lambda: _download_hub(repo_id, directory),
    )


def _unreachable_hub_errors() -> tuple[type[Exception], ...]:
    """The exception types the hub's HTTP client raises when the hub cannot be reached."""
    errors: list[type[Exception]] = [OSError]
    clients = (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException"))
    for module, name in clients:
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _download_hub(repo_id: str, directory: Path) -> Path:
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as err:
        raise CheckpointError(
            f"{repo_id} is a Hugging Face hub id, and downloading it needs the hub's client: "
            f"pip install huggingface_hub"
        ) from err

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not when the hub's client was imported
    hub = endpoint or HUB_HOST
    manual = (
        f"Without network access, download {' or '.join(HUB_WEIGHT_FILES)} and config.json from "
        f"{HUB_HOST}/{repo_id} on another machine and place them in {directory}: they are then used without "
        f"any network access. HF_ENDPOINT selects a hub mirror."
    )

    def get(filename: str, revision: str) -> Path:
        local = hf_hub_download(repo_id, filename, revision=revision, local_dir=directory, endpoint=endpoint)
        return Path(local)

    try:
        meta = filename = None
        for filename in HUB_WEIGHT_FILES:
            try:
                url = hf_hub_url(repo_id, filename, endpoint=endpoint)
                meta = get_hf_file_metadata(url, endpoint=endpoint)
                break
            except RemoteEntryNotFoundError:
                continue
        if meta is None:
            raise CheckpointError(
                f"the Hugging Face repository {repo_id} holds no {' or '.join(HUB_WEIGHT_FILES)}: it is not "
                f"a model repository that hiera_det can load"
            )
        logger.info("downloading %s/%s from %s to %s", repo_id, filename, hub, directory)
        try:
            get("config.json", meta.commit_hash)
        except RemoteEntryNotFoundError:
            pass  # timm and transformers repositories have one; the loader needs it only to check shapes
        path = get(filename, meta.commit_hash)
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise CheckpointError(
            f"the Hugging Face hub ({hub}) has no repository {repo_id} that this machine may read (it does "
            f"not exist, or it is private or gated: log in with `hf auth login`); check the id with "
            f"`python -m hiera_det.checkpoint --list`. Meant as a local path? It does not exist."
        ) from err
    except OfflineModeIsEnabled as err:
        raise CheckpointError(f"cannot download {repo_id}: HF_HUB_OFFLINE is set. {manual}") from err
    except HfHubHTTPError as err:
        first_line = str(err).splitlines()[0]
        raise CheckpointError(f"cannot download {repo_id} from {hub}: {first_line}. {manual}") from err
    except _unreachable_hub_errors() as err:
        reason = f"{type(err).__name__}: {err}"
        raise CheckpointError(f"cannot download {repo_id} from {hub} ({reason}). {manual}") from err

    digest = sha256_of(path)
    if meta.etag and _SHA256.match(meta.etag) and digest != meta.etag:
        problem = f"sha256 {digest}, while the hub announced {meta.etag}"
    else:
        problem = _unreadable(path)
    if problem is not None:
        _delete(path, f"the file downloaded from {hub} for {repo_id} is damaged ({problem})")
        raise CheckpointError(
            f"the file downloaded from {hub} for {repo_id} is damaged ({problem}); it was deleted and not "
            f"used. Run again to retry. {manual}"
        )
    _write_sidecar(path, digest)
    logger.info("downloaded %s to %s (sha256 %s)", repo_id, path, digest)
    return path
