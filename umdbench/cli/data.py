"""``umdbench data check|download``. Import-light: plugins (and torch) load only when a command runs.

Errors are :class:`~umdbench.errors.UmdbenchError`; ``umdbench.cli.main`` prints them as one
paragraph and exits 2.
"""

from __future__ import annotations

from umdbench.errors import ConfigError, UmdbenchError
from umdbench.util import DATA_ROOT_ENV, data_root, dataset_root, parse_option

# constructor arguments of every dataset plugin that the command sets itself
RESERVED_OPTIONS = {
    "root": "the data folder comes from --data-root DIR (or {env}=DIR): the folder that holds {holds}",
    "on_error": "the command chooses it (check reports every problem; baselines skip bad records)",
}


def dataset_options(items: list[str], flag: str, dataset_cls, name: str) -> dict:
    """``KEY=VALUE`` dataset options of ``flag``, parsed by :func:`umdbench.util.parse_option`."""
    options = dict(parse_option(item, flag) for item in items)
    for key in sorted(set(options) & set(RESERVED_OPTIONS)):
        why = RESERVED_OPTIONS[key].format(env=DATA_ROOT_ENV, holds=f"{dataset_cls.root_subdir or name}/")
        raise ConfigError(f"{flag} {key}=...: {key!r} is not a dataset option of {name!r}; {why}.")
    return options


def build_dataset(dataset_cls, name: str, root: str | None, on_error: str, options: dict):
    """The plugin instance; a plugin's ValueError about its options becomes a one-paragraph error."""
    try:
        return dataset_cls(root=root, on_error=on_error, **options)
    except UmdbenchError:
        raise
    except ValueError as exc:  # plugins reject unknown or bad options with ValueError
        raise ConfigError(f"dataset {name!r}: {exc}") from exc


def _check_signature(cls, name: str, registries) -> None:
    """``check`` must take ``deep`` (the contract: ``check(self, deep: bool = True) -> CheckReport``);
    said before anything is read, instead of a TypeError from the call."""
    import inspect

    from umdbench.errors import PluginError

    try:
        params = inspect.signature(cls.check).parameters
    except (TypeError, ValueError):
        return
    if "deep" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise PluginError(
            f"dataset {name!r} ({registries.dataset.provenance(name)}) defines check{inspect.signature(cls.check)} "
            f"without the `deep` argument; the contract is check(self, deep: bool = True) -> CheckReport "
            f"(deep = decode every image or volume; False = cheap checks only). Add the argument to "
            f"{cls.__module__}.{cls.__qualname__}.check."
        )


def cmd_check(args) -> int:
    """The checks ``umdbench run`` makes before training, over every split, listed instead of
    raised: the plugin's ``check(deep)`` (records, images or volumes decoded unless ``--quick``)
    and :func:`umdbench.data.check.split_problems` (empty split, duplicate ids, paths leaving the
    folder). Exit 1 when anything was found."""
    from umdbench.data.check import format_report, split_problems
    from umdbench.plugin import get_registries

    args.plugin_path = list(args.plugin_path) + list(getattr(args, "check_plugin_path", []))
    registries = get_registries(tuple(args.plugin_path))
    cls = registries.dataset.get(args.dataset)
    _check_signature(cls, args.dataset, registries)
    options = dataset_options(args.option, "--option", cls, args.dataset)
    if args.data_root and not cls.needs_root:
        print(
            f"note: --data-root {args.data_root} is not used: "
            f"dataset {args.dataset!r} is generated (needs_root = False)."
        )
    root = dataset_root(cls, args.data_root, args.dataset)
    plugin = build_dataset(cls, args.dataset, root, "raise", options)
    with registries.dataset.guard(args.dataset, "checking its data"):
        report = plugin.check(deep=not args.quick)
    # and what `umdbench run` refuses before training beyond the plugin's own check: an empty split,
    # a record id twice, an image outside the folder. Records are listed by a lenient copy of the
    # plugin (malformed ones, which check() reported, are left out instead of stopping the listing).
    lenient = build_dataset(cls, args.dataset, root, "skip", options) if hasattr(plugin, "raw_records") else plugin
    for split in cls.splits:
        for problem in split_problems(lenient, split):
            if problem not in report.problems:
                report.problems.append(problem)
    print(format_report(report, max_problems=args.max_problems))
    return 0 if report.ok else 1


def cmd_download(args) -> int:
    from umdbench.data.download import HOMEPAGES, download_dataset
    from umdbench.plugin import get_registries

    cls = get_registries(tuple(args.plugin_path)).dataset.get(args.dataset)
    if not cls.root_subdir:
        raise ConfigError(
            f"dataset {args.dataset!r} has no data folder of its own (it is generated, or built from "
            f"other datasets); download those instead."
        )
    if not args.url_base:
        where = HOMEPAGES.get(args.dataset, "its publisher")
        raise ConfigError(
            f"no direct, checksum-pinned public URL is known for {args.dataset!r}; fetch it from "
            f"{where} into <data-root>/{cls.root_subdir}/, or pass --url-base URL of a mirror holding "
            f"{cls.root_subdir}.tar.gz and SHA256SUMS."
        )
    root = data_root(args.data_root)
    if root is None:
        raise ConfigError(
            f"no data root given to unpack {args.dataset!r} into; pass --data-root DIR or set "
            f"{DATA_ROOT_ENV}=DIR (the folder that will hold {cls.root_subdir}/)."
        )
    download_dataset(args.dataset, cls.root_subdir, root, args.url_base, sha256=args.sha256)
    print(f"done; verify with: umdbench data check {args.dataset} --data-root {root}")
    return 0


def add_subcommands(subparsers) -> None:
    data = subparsers.add_parser(
        "data",
        help="check or download datasets",
        description="Check a dataset copy against its release layout, or download one.",
    )
    data.add_argument(
        "--plugin-path",
        action="append",
        default=[],
        metavar="FILE",
        help="load a plugin from a local .py file (repeatable)",
    )
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")

    chk = sub.add_parser("check", help="counts per split, missing/unreadable images, checksums; exit 1 on problems")
    chk.add_argument("dataset")
    chk.add_argument("--data-root", metavar="DIR", help=f"folder holding the dataset folders (or env {DATA_ROOT_ENV})")
    chk.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. --option layout=osf; the value is a Python literal when it parses "
        "as one (true/false/null too), else a string; repeatable",
    )
    chk.add_argument("--quick", action="store_true", help="only check that images exist and parse (no full decode)")
    chk.add_argument("--max-problems", type=int, default=50, metavar="N", help="problems to print (default 50)")
    # also after the dataset name, where `run` takes it (a dataset the plugin file registers)
    chk.add_argument(
        "--plugin-path",
        action="append",
        default=[],
        metavar="FILE",
        dest="check_plugin_path",
        help="load a plugin from a local .py file (repeatable)",
    )
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
