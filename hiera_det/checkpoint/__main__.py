"""``python -m hiera_det.checkpoint --list`` prints the weights catalog; ``--download NAME ...`` fetches."""

from __future__ import annotations

import argparse
import logging
import sys

from .download import CACHE_ENV, MIRROR_ENV, cache_root, is_cached, resolve_weights
from .report import CheckpointError
from .zoo import CATALOG, LICENCE_NOTES, OFFICIAL_HOST, PREFIX, classify

EPILOG = f"""\
A name works wherever a weights path does: load_checkpoint(model, NAME), MODEL.HIERA.WEIGHTS NAME (image
and video trunks), tools/convert_checkpoint.py --input NAME, and {PREFIX}NAME for Detectron2's PathManager. Any Hugging Face hub id (OWNER/NAME) works too.

environment:
  {CACHE_ENV:<25} the cache directory (default ~/.cache/hiera_det/checkpoints)
  {MIRROR_ENV:<25} a base URL (https://, http:// or file://) replacing {OFFICIAL_HOST}
  {"HF_ENDPOINT":<25} the Hugging Face hub, or a hub mirror, for the hub ids
"""


def catalog_table() -> str:
    """The catalog as a text table: name, size, licence, what it is; cached files are marked."""
    rows = [("", "NAME", "SIZE", "LICENCE", "WHAT")]
    for entry in CATALOG.values():
        layout = ", attention=window" if entry.attention == "window" else ""
        what = f"{entry.modality} {entry.architecture}{layout}: {entry.description}"
        mark = "*" if is_cached(entry) else ""
        rows.append((mark, entry.name, f"~{entry.size_mb} MB", entry.licence, what))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4] for row in rows]
    notes = [
        "",
        "SIZE: estimated from the parameters in the file, 4 bytes each (the download shows the exact size).",
        *(f"{licence}: {note}." for licence, note in LICENCE_NOTES.items()),
        f"*: in the cache, {cache_root()} (set {CACHE_ENV} to move it).",
        f"{MIRROR_ENV} replaces {OFFICIAL_HOST} with a mirror; HF_ENDPOINT does so for the hub ids.",
    ]
    return "\n".join(lines + notes)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hiera_det.checkpoint",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--list", action="store_true",
                        help="print every weights name with its size, licence and what it is")
    parser.add_argument("--download", nargs="+", default=[], metavar="NAME",
                        help="download these weights into the cache (or check the cached copies)")
    args = parser.parse_args(argv)
    if not args.list and not args.download:
        parser.error("nothing to do: give --list or --download NAME")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        print(catalog_table())
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = []
    for name in args.download:
        kind, entry = classify(name)
        try:
            if kind == "path":
                raise CheckpointError(f"{name!r} is a path, not a weights name (see --list)")
            path = resolve_weights(name)
        except CheckpointError as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            failed.append(name)
            continue
        licence = f" (licence {entry.licence}: {LICENCE_NOTES[entry.licence]})" if kind == "entry" else ""
        print(f"{name}: {path}{licence}")
    if failed:
        print(f"{len(failed)} of {len(args.download)} failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
