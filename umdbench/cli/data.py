"""``umdbench data check|download``. Import-light: plugins (and torch) load only when a command runs."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DATA_ROOT_ENV = "UMDBENCH_DATA_ROOT"



class DataCommandError(Exception):
    """A user error of a data command (printed as one message, exit 2)."""


def lookup_dataset(name: str, plugin_paths: tuple[str, ...] = ()):
    """The dataset plugin class registered as ``name`` (unknown names raise "did you mean")."""
    from umdbench.plugin import get_registries

    return get_registries(tuple(plugin_paths)).dataset.get(name)


def resolve_data_root(arg: str | None) -> Path:
    root = arg or os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise DataCommandError(f"no data root given; pass --data-root DIR or set the environment variable "
                               f"{DATA_ROOT_ENV}=DIR (the folder holding vqa_rad/, slake/, ...)")
    path = Path(root).expanduser()
    if not path.is_dir():
        how = "--data-root" if arg else f"{DATA_ROOT_ENV}"
        raise DataCommandError(f"data root {path} (from {how}) does not exist; fix: pass --data-root DIR or set "
                               f"{DATA_ROOT_ENV}=DIR to the folder holding the dataset folders")
    return path


def _parse_options(items: list[str]) -> dict:
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise DataCommandError(f"--option {item!r}: expected KEY=VALUE")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return opts


def cmd_check(args) -> int:
    try:
        cls = lookup_dataset(args.dataset, tuple(getattr(args, "plugin_path", []) or ()))
        root = None
        if cls.needs_root:
            root = resolve_data_root(args.data_root)
            if cls.root_subdir:
                root = root / cls.root_subdir
                if not root.is_dir():
                    raise DataCommandError(f"dataset {args.dataset!r}: folder {root} does not exist; fix: put the "
                                           f"release there (see docs/datasets.md) or run `umdbench data download "
                                           f"{args.dataset} --data-root DIR --url-base URL`")
        plugin = cls(root=root, on_error="raise", **_parse_options(args.option))
        from umdbench.data.check import format_report

        try:
            report = plugin.check(deep=not args.quick)
        except TypeError:
            report = plugin.check()
    except DataCommandError as exc:
        print(f"umdbench data check: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyError) as exc:  # DataError is a ValueError; unknown names/options
        print(f"umdbench data check: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, max_problems=args.max_problems))
    return 0 if report.ok else 1


def cmd_download(args) -> int:
    from umdbench.data.download import HOMEPAGES, DownloadError, download_dataset

    try:
        cls = lookup_dataset(args.dataset, tuple(getattr(args, "plugin_path", []) or ()))
        if not cls.root_subdir:
            raise DataCommandError(f"dataset {args.dataset!r} has no data folder of its own (it is built from other "
                                   f"datasets); download those instead")
        if not args.url_base:
            where = HOMEPAGES.get(args.dataset, "its publisher")
            raise DataCommandError(f"no direct, checksum-pinned public URL is known for {args.dataset!r}; fetch it "
                                   f"from {where} into <data-root>/{cls.root_subdir}/, or pass --url-base URL of a "
                                   f"mirror holding {cls.root_subdir}.tar.gz and SHA256SUMS")
        root = Path(args.data_root or os.environ.get(DATA_ROOT_ENV) or "")
        if not str(root) or str(root) == ".":
            raise DataCommandError(f"no data root given; pass --data-root DIR or set {DATA_ROOT_ENV}=DIR")
        download_dataset(args.dataset, cls.root_subdir, root, args.url_base, sha256=args.sha256)
    except (DataCommandError, DownloadError, ValueError, KeyError) as exc:
        print(f"umdbench data download: error: {exc}", file=sys.stderr)
        return 2
    print(f"done; verify with: umdbench data check {args.dataset} --data-root {root}")
    return 0


def add_subcommands(subparsers) -> None:
    data = subparsers.add_parser("data", help="check or download datasets",
                                 description="Check a dataset copy against its release layout, or download one.")
    data.add_argument("--plugin-path", action="append", default=[], metavar="FILE",
                      help="load a plugin from a local .py file (repeatable)")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")

    chk = sub.add_parser("check", help="counts per split, missing/unreadable images, checksums; exit 1 on problems")
    chk.add_argument("dataset")
    chk.add_argument("--data-root", metavar="DIR", help=f"folder holding the dataset folders (or env {DATA_ROOT_ENV})")
    chk.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="dataset option (JSON value), e.g. --option layout=osf; repeatable")
    chk.add_argument("--quick", action="store_true", help="only check that images exist and parse (no full decode)")
    chk.add_argument("--max-problems", type=int, default=50, metavar="N", help="problems to print (default 50)")
    chk.set_defaults(handler=cmd_check)

    dl = sub.add_parser("download", help="fetch a release archive, verify sha256, unpack into the data root")
    dl.add_argument("dataset")
    dl.add_argument("--data-root", metavar="DIR", help=f"where to unpack (or env {DATA_ROOT_ENV})")
    dl.add_argument("--url-base", metavar="URL", help="mirror folder holding <folder>.tar.gz and SHA256SUMS")
    dl.add_argument("--sha256", metavar="HEX", help="expected sha256 of the archive (overrides SHA256SUMS)")
    dl.set_defaults(handler=cmd_download)

    def _help(args, parser=data) -> int:
        parser.print_help()
        return 2

    data.set_defaults(handler=_help)
