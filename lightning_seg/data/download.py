"""Command line for the datasets' files: fetch, verify, build a mirror, print the docs tables.

``python -m lightning_seg.data.download fetch {drosophila,covid19,chase,all} --data-dir D [--mirror URL]``
runs the staged, verified repair of :func:`~lightning_seg.data.install.ensure_dataset`; ``verify`` checks
the files against the committed manifests; ``build-mirror`` writes the archives a mirror serves
(:func:`~lightning_seg.data.mirror.build_archives`); ``tables`` prints the tables of ``docs/datasets.md``
from the datasets' records. Errors are one line naming the file or URL and the fix (``--traceback`` for more).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .archives import ExtractLimits
from .datasets import DATASETS
from .info import markdown_tables
from .install import ensure_dataset
from .manifest import DATA_ENV, MIRROR_ENV, check_files, sha256_file
from .mirror import build_archives

PROG = "python -m lightning_seg.data.download"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    limits = ExtractLimits()
    for name, text in [
        ("fetch", "download, verify and move into place what is missing or corrupt"),
        ("verify", "check the files against the committed checksums"),
        ("build-mirror", "write the archives a mirror serves, from a verified copy"),
    ]:
        cmd = commands.add_parser(name, help=text)
        cmd.add_argument("datasets", nargs="+", choices=[*DATASETS, "all"])
        cmd.add_argument("--data-dir", default=os.environ.get(DATA_ENV, "data"))
        if name == "fetch":
            cmd.add_argument("--mirror", default=None, help=f"base URL or folder serving the archives (${MIRROR_ENV})")
            cmd.add_argument("--keep-archives", action="store_true", help="keep them in <data-dir>/.downloads")
            cmd.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up")
            cmd.add_argument("--no-progress", action="store_true")
            cmd.add_argument("--max-members", type=int, default=limits.max_members, help="most members per archive")
            cmd.add_argument(
                "--max-bytes", type=int, default=limits.max_bytes, help="most bytes an archive's files may expand to"
            )
        if name == "build-mirror":
            cmd.add_argument("--out", required=True)
    commands.add_parser("tables", help="print the dataset tables of docs/datasets.md")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (OSError, ValueError) as err:
        if args.traceback:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "tables":
        print(markdown_tables([module.info for module in DATASETS.values()]), end="")
        return 0
    names = list(DATASETS) if "all" in args.datasets else list(dict.fromkeys(args.datasets))
    status = 0
    for name in names:
        info = DATASETS[name].info
        if args.command == "fetch":
            limits = ExtractLimits(max_members=args.max_members, max_bytes=args.max_bytes)
            ensure_dataset(
                info,
                args.data_dir,
                download=True,
                mirror=args.mirror,
                progress=not args.no_progress,
                keep_archives=args.keep_archives,
                timeout=args.timeout,
                limits=limits,
            )
            print(f"{name}: all {len(info.manifest())} files present and verified under {args.data_dir}")
        elif args.command == "verify":
            missing, corrupt = check_files(info, args.data_dir)
            print(f"{name}: {len(missing)} missing, {len(corrupt)} corrupt of {len(info.manifest())} files")
            status |= bool(missing or corrupt)
        else:
            for path in build_archives(info, args.data_dir, args.out):
                print(f"{path}  sha256={sha256_file(path)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
