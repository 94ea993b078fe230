"""Registries of plugin kinds, built on mmengine's Registry, with lazy ``module:attr`` entries.

* ``register_lazy(name, "module:attr")`` records where an entry lives; it is imported on first use.
* Registering a name twice is an error that names both origins (no silent override).
* Asking for an unknown name is an error with "did you mean ...?" suggestions.
* Every entry is type-checked against its kind (:data:`EXPECTED`): an object when it is registered,
  a lazy entry when it is first imported. A wrong kind is a :class:`RegistryTypeError`.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mmengine.registry import Registry

from umdbench.errors import PluginError, RegistryCollisionError, UmdbenchError, UnknownNameError

KINDS = {
    "pretrain": "pre-training strategy",
    "tune": "tuning strategy",
    "dataset": "dataset",
    "metric": "metric",
    "suite": "benchmark suite",
    "encoder": "encoder",
    "task": "task type",
}

# What an entry of each kind must be: a subclass of the named class, except suites (a dict
# instance). Named as "module:attr" and imported on the first check, so that importing the
# registry (and listing entries) never loads torch.
EXPECTED = {
    "pretrain": "umdbench.api:PretrainStrategy",
    "tune": "umdbench.api:TuneStrategy",
    "dataset": "umdbench.api:DatasetPlugin",
    "metric": "mmengine.evaluator:BaseMetric",
    "suite": "builtins:dict",
    "encoder": "umdbench.api:Encoder",
    "task": "umdbench.api:TaskType",
}
INSTANCE_KINDS = {"suite"}  # entries that are data, not classes


class RegistryTypeError(UmdbenchError, TypeError):
    """An entry is not the kind of object its registry holds (e.g. a dataset registered as a metric)."""


def import_target(target: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UmdbenchError(f"registry entry {target!r} is not of the form 'package.module:attr'.")
    module = importlib.import_module(module_name)
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise UmdbenchError(f"registry entry {target!r}: module {module_name!r} has no attribute {attr!r}.") from exc
    return obj


@functools.cache
def expected_type(kind: str) -> type:
    """The class an entry of ``kind`` must subclass (or, for suites, be an instance of)."""
    return import_target(EXPECTED[kind])


def loaded_expected_type(kind: str) -> type | None:
    """:func:`expected_type` if its module is already imported, else None.

    An object can only be a subclass (or instance) of a class whose module was imported, so a
    module not yet imported means "wrong kind" without importing it: rejecting a bad entry
    must not pull in torch."""
    module_name = EXPECTED[kind].partition(":")[0]
    return expected_type(kind) if module_name in sys.modules else None


def _describe(obj: Any) -> str:
    """A short, plain description of what was registered, for error messages."""
    if inspect.isclass(obj):
        bases = ", ".join(f"{b.__module__}.{b.__qualname__}" for b in obj.__bases__)
        return f"class {obj.__module__}.{obj.__qualname__} (bases: {bases})"
    if inspect.ismodule(obj):
        return f"module {obj.__name__}"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return f"function {getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    cls = type(obj)
    shown = " ".join(repr(obj).split())  # one line, whatever the repr
    return f"an instance of {cls.__module__}.{cls.__qualname__} ({shown[:60]}{'...' if len(shown) > 60 else ''})"


def _expected_name(kind: str) -> str:
    return EXPECTED[kind].replace(":", ".")


def _fix_hint(kind: str, obj: Any, base: type | None) -> str:
    """The most likely fix for the common mistakes, else the general one."""
    if kind in INSTANCE_KINDS:
        return f"register a dict (the suite spec, see docs/sweeps.md) under registries.{kind}."
    if isinstance(obj, str) and ":" in obj:
        return f"to register a 'module:attr' string use registries.{kind}.register_lazy(name, target)."
    if base is not None and not inspect.isclass(obj) and isinstance(obj, base):
        return "register the class itself, not an instance of it."
    if inspect.isclass(obj):
        for other in EXPECTED:  # registered under the wrong kind?
            if other == kind or other in INSTANCE_KINDS:
                continue
            other_base = loaded_expected_type(other)
            if other_base is not None and issubclass(obj, other_base):
                return f"it is a {KINDS[other]}: register it under registries.{other} instead."
    return f"make it a subclass of {_expected_name(kind)}, or register it under the kind it belongs to."


class LazyRegistry(Registry):
    """An mmengine Registry that also holds not-yet-imported ``module:attr`` entries."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind
        self._lazy: dict[str, str] = {}
        self._origins: dict[str, str] = {}
        self._packages: dict[str, str] = {}  # name -> "package version" (set by the plugin loader)
        self.current_origin = "unknown"  # set by the plugin loader while a plugin registers

    # -- registration -------------------------------------------------------------------------
    def _check_free(self, name: str) -> None:
        if name in self._lazy or name in self._module_dict:
            raise RegistryCollisionError(
                f"{KINDS[self.kind]} {name!r} is registered twice: first by {self._origins.get(name, '?')}, "
                f"again by {self.current_origin}. Rename one of them (names are global per kind) or "
                f"uninstall the plugin you do not want."
            )

    def register_lazy(self, name: str, target: str) -> None:
        self._check_free(name)
        self._lazy[name] = target
        self._origins[name] = self.current_origin

    def check_type(self, name: str, obj: Any, target: str | None = None, origin: str | None = None) -> None:
        """Raise :class:`RegistryTypeError` unless ``obj`` is what this kind holds (:data:`EXPECTED`)."""
        base = loaded_expected_type(self.kind)
        if self.kind in INSTANCE_KINDS:
            ok = base is not None and isinstance(obj, base)
            expected = f"a {EXPECTED[self.kind].partition(':')[2]}"
        else:
            ok = base is not None and inspect.isclass(obj) and issubclass(obj, base)
            expected = f"a subclass of {_expected_name(self.kind)}"
        if ok:
            return
        where = f" (imported from {target!r})" if target else ""
        raise RegistryTypeError(
            f"{KINDS[self.kind]} {name!r}{where}, registered by {origin or self.origin(name)}, has the wrong kind: an "
            f"entry of kind {self.kind!r} must be {expected}, but it is {_describe(obj)}. Fix: "
            f"{_fix_hint(self.kind, obj, base)}"
        )

    def register(self, name: str, obj: Any) -> Any:
        self._check_free(name)
        self.check_type(name, obj, origin=self.current_origin)
        if callable(obj):
            self._register_module(module=obj, module_name=name)
        else:  # plain data entries (suite specs are dicts); mmengine only takes callables
            self._module_dict[name] = obj
        self._origins[name] = self.current_origin
        return obj

    def unregister(self, name: str) -> None:
        self._packages.pop(name, None)
        self._lazy.pop(name, None)
        self._module_dict.pop(name, None)
        self._origins.pop(name, None)

    # -- lookup ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(set(self._lazy) | set(self._module_dict))

    def provenance(self, name: str) -> str:
        """The package (name and version) that registered ``name``, for result rows."""
        return self._packages.get(name, "?")

    @contextmanager
    def guard(self, name: str, doing: str):
        """Run plugin code for entry ``name``; a ``ValueError``/``KeyError``/``TypeError`` it raises
        (a bad option, a missing preset) becomes one paragraph naming the plugin (exit 2), and so
        does any other exception raised in the plugin's own code (:mod:`umdbench.plugin.calls`)."""
        from umdbench.plugin.calls import blame, describe

        try:
            yield
        except UmdbenchError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise PluginError(
                f"{KINDS[self.kind]} {name!r} (from {self.origin(name)}) failed while {doing}: {detail}. "
                f"{self._fix_for(name, str(detail))}"
            ) from exc
        except Exception as exc:
            found = blame(exc, [self.ref(name)])
            if found is None:
                raise
            raise PluginError(describe(*found, exc, doing)) from exc

    # where an option of each kind is set with --cfg-options
    OPTION_PATHS = {"pretrain": "pretrain.", "tune": "tune.<i>.", "encoder": "model.", "dataset": "dataset.options."}

    def option_names(self, name: str) -> set[str]:
        """The options of entry ``name`` a message may name: its declared ``option_schema``, its presets'
        keys and train keys, and for a dataset without a schema the quoted names in the message."""
        try:
            obj = self.get(name)
        except Exception:  # noqa: BLE001 - an entry that cannot be imported names no options
            return set()
        names = set(getattr(obj, "option_schema", None) or {})
        for preset in (getattr(obj, "presets", None) or {}).values():
            if isinstance(preset, dict):
                names |= {str(k) for k in preset}
                if isinstance(preset.get("train"), dict):
                    names |= {str(k) for k in preset["train"]}
        return names - {"train", "per_dataset", "type"}

    def _fix_for(self, name: str, detail: str) -> str:
        """What to do about a plugin's ValueError/KeyError/TypeError: fix the option it names with
        --cfg-options, or, when it names none of the plugin's options, report the plugin's fault."""
        import re

        candidates = self.option_names(name)
        if self.kind == "dataset" and not candidates:  # options undeclared: the plugin quotes the ones it means
            candidates = set(re.findall(r"'([A-Za-z_][\w-]*)'", detail))
        found = {o: re.search(rf"(?<![\w.-]){re.escape(o)}(?![\w-])", detail) for o in candidates}
        named = sorted((o for o, m in found.items() if m), key=lambda o: (found[o].start(), -len(o)))
        if named:
            path = self.OPTION_PATHS.get(self.kind, "")
            return (
                f"Fix the option it names ({named[0]}) with --cfg-options, e.g. {path}{named[0]}=VALUE "
                f"(`--dry-run` prints the resolved config), or report it to the plugin's author if the "
                f"configuration is valid."
            )
        return (
            f"The message names none of its options, so the fault is in the plugin (or its presets), not in "
            f"your configuration: report it to the plugin's author ({self.origin(name)}; `umdbench plugins` "
            f"shows its package and version)."
        )

    def ref(self, name: str):
        """The plugin's :class:`~umdbench.plugin.calls.PluginRef` (its own files), None for the core's."""
        from umdbench.plugin.calls import PluginRef, _root_of

        module = self.target(name).split(":", 1)[0]
        if module == "umdbench" or module.startswith("umdbench."):
            return None
        obj = self.get(name)
        return PluginRef(
            KINDS.get(self.kind, self.kind),
            name,
            self.provenance(name),
            _root_of(module),
            obj if isinstance(obj, type) else None,
        )

    def origin(self, name: str) -> str:
        return self._origins.get(name, "?")

    def target(self, name: str) -> str:
        """Where an entry lives, as ``module:attr``."""
        if name in self._lazy:
            return self._lazy[name]
        obj = self._module_dict[name]
        return f"{obj.__module__}:{obj.__qualname__}"

    def __contains__(self, name: object) -> bool:
        return name in self._lazy or name in self._module_dict

    def get(self, key: str) -> Any:
        if key in self._lazy:
            target = self._lazy[key]
            try:
                obj = import_target(target)
            except UmdbenchError:
                raise
            except Exception as exc:
                raise UmdbenchError(
                    f"{KINDS[self.kind]} {key!r} (from {self.origin(key)}) could not be imported from "
                    f"{target!r}: {type(exc).__name__}: {exc}. Check that the plugin's package is installed "
                    f"and importable."
                ) from exc
            self.check_type(key, obj, target)  # a wrong kind stays lazy: every get raises the same error
            del self._lazy[key]
            self._register_module(module=obj, module_name=key, force=True)
        if key not in self._module_dict:
            raise UnknownNameError(self.unknown_message(key))
        return self._module_dict[key]

    def unknown_message(self, key: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"unknown {KINDS[self.kind]} {key!r}.{hint} Registered: {', '.join(names) or '(none)'}. "
            f"Run `umdbench list` to see every name, or `umdbench plugins` for plugins that failed to load."
        )


@dataclass
class Registries:
    """One registry per plugin kind; handed to every plugin's ``umdbench_register`` hook."""

    pretrain: LazyRegistry = field(default_factory=lambda: LazyRegistry("pretrain"))
    tune: LazyRegistry = field(default_factory=lambda: LazyRegistry("tune"))
    dataset: LazyRegistry = field(default_factory=lambda: LazyRegistry("dataset"))
    metric: LazyRegistry = field(default_factory=lambda: LazyRegistry("metric"))
    suite: LazyRegistry = field(default_factory=lambda: LazyRegistry("suite"))
    encoder: LazyRegistry = field(default_factory=lambda: LazyRegistry("encoder"))
    task: LazyRegistry = field(default_factory=lambda: LazyRegistry("task"))

    def kinds(self) -> dict[str, LazyRegistry]:
        return {kind: getattr(self, kind) for kind in KINDS}

    def snapshot(self) -> dict[str, set[str]]:
        return {kind: set(reg.names()) for kind, reg in self.kinds().items()}

    def set_origin(self, origin: str) -> None:
        for reg in self.kinds().values():
            reg.current_origin = origin
