"""An iopath ``PathHandler`` for ``hiera://NAME``: Detectron2's ``PathManager`` then resolves weights names.

Detectron2 opens ``MODEL.WEIGHTS`` through its ``PathManager`` (``detectron2://`` is such a handler), so once
``register_path_handler(detectron2.utils.file_io.PathManager)`` has run, ``MODEL.WEIGHTS hiera://NAME`` is
the cached local file of ``NAME`` (downloaded the first time). ``NAME`` is anything
``hiera_det.checkpoint.resolve_weights`` takes: a catalog name or a Hugging Face hub id. This is the only
module of ``hiera_det.checkpoint`` that imports iopath.
"""

from __future__ import annotations

from typing import Any

from iopath.common.file_io import PathHandler, PathManager

from .download import resolve_weights
from .zoo import PREFIX, classify


class HieraWeightsHandler(PathHandler):
    """``hiera://NAME`` -> the local file of the weights ``NAME``, downloaded into the cache when needed."""

    def _get_supported_prefixes(self) -> list[str]:
        return [PREFIX]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        self._check_kwargs(kwargs)
        return resolve_weights(path)

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs: Any):
        self._check_kwargs(kwargs)
        if any(m in mode for m in "wax+"):
            raise ValueError(f"{path} is read-only: weights names are downloaded, not written")
        return open(resolve_weights(path), mode, buffering=buffering)

    def _exists(self, path: str, **kwargs: Any) -> bool:
        """Whether the name is a catalog name or a hub id; nothing is downloaded to answer."""
        self._check_kwargs(kwargs)
        return classify(path)[0] in ("entry", "hub")

    def _isfile(self, path: str, **kwargs: Any) -> bool:
        return self._exists(path, **kwargs)

    def _isdir(self, path: str, **kwargs: Any) -> bool:
        self._check_kwargs(kwargs)
        return False


def register_path_handler(path_manager: PathManager) -> None:
    """Make ``path_manager`` (Detectron2's: ``detectron2.utils.file_io.PathManager``) resolve ``hiera://``.

    Calling it again is harmless."""
    path_manager.register_handler(HieraWeightsHandler(), allow_override=True)
