"""What a load did (``LoadReport``) and why one could not happen (``CheckpointError``)."""

from __future__ import annotations

from dataclasses import dataclass, field


class CheckpointError(ValueError):
    """A checkpoint that cannot go into the model; the message names what was expected, what was found,
    and what to do about it."""


def _short(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


@dataclass
class LoadReport:
    """The outcome of ``load_checkpoint``.

    ``resized`` maps a key to a line saying how its tensor was reshaped or resampled; ``dropped`` maps a
    reason to the checkpoint keys left out for it (a head the model does not have, an MAE decoder, the
    other parts of a detector); ``missing_keys`` are model tensors the checkpoint did not provide and
    ``ignored_missing_keys`` the subset that strict loading accepts: the final norm of a features-only
    trunk (it only feeds the classification head) and a head kept at its initialization because the
    checkpoint's has another class count.
    """

    format: str
    source: str
    model_name: str
    checkpoint_architecture: str | None = None
    loaded_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    ignored_missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    resized: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def resized_keys(self) -> list[str]:
        return list(self.resized)

    @property
    def dropped_keys(self) -> list[str]:
        return [k for keys in self.dropped.values() for k in keys]

    def drop(self, reason: str, keys: list[str]) -> None:
        if keys:
            self.dropped.setdefault(reason, []).extend(keys)

    def __str__(self) -> str:
        arch = f" ({self.checkpoint_architecture})" if self.checkpoint_architecture else ""
        lines = [
            f"{self.format} checkpoint {self.source}{arch} into {self.model_name}: "
            f"{len(self.loaded_keys)} tensors loaded"
        ]
        for key, how in self.resized.items():
            lines.append(f"  resized {key}: {how}")
        for reason, keys in self.dropped.items():
            lines.append(f"  dropped {len(keys)} ({reason}): {_short(keys)}")
        used_missing = [k for k in self.missing_keys if k not in self.ignored_missing_keys]
        if used_missing:
            lines.append(f"  missing, left at initialization: {_short(used_missing)}")
        if self.ignored_missing_keys:
            ignored = _short(self.ignored_missing_keys)
            lines.append(f"  not in the checkpoint, unused or re-initialized on purpose: {ignored}")
        if self.unexpected_keys:
            lines.append(f"  unexpected, not loaded: {_short(self.unexpected_keys)}")
        return "\n".join(lines)
