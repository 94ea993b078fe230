"""Registries: lazy entries, collisions, did-you-mean, type checks by kind, plugin isolation."""

import sys
import textwrap

import pytest

from umdbench.errors import RegistryCollisionError, UmdbenchError, UnknownNameError
from umdbench.plugin import PluginPathError, RegistryTypeError
from umdbench.plugin.loading import load_plugins, read_registry_toml
from umdbench.plugin.registry import EXPECTED, KINDS, LazyRegistry, Registries

# A module that records being imported, holding one entry of each of three kinds.
LAZY_MODULE = """
from mmengine.evaluator import BaseMetric
from umdbench.api import DatasetPlugin, PretrainStrategy

IMPORTED = True

class Metric(BaseMetric):
    def process(self, data_batch, data_samples):
        pass

    def compute_metrics(self, results):
        return {}

class Dataset(DatasetPlugin):
    name = "lazy-dataset"

class Pretrain(PretrainStrategy):
    name = "lazy-pretrain"
"""


@pytest.fixture
def lazy_module(tmp_path, monkeypatch):
    """A fresh, not yet imported module ``umdbench_lazy_entries`` on sys.path."""
    (tmp_path / "umdbench_lazy_entries.py").write_text(LAZY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "umdbench_lazy_entries", raising=False)
    yield "umdbench_lazy_entries"
    sys.modules.pop("umdbench_lazy_entries", None)


def test_lazy_entry_is_imported_on_first_get_only(lazy_module):
    reg = LazyRegistry("metric")
    reg.register_lazy("m", f"{lazy_module}:Metric")
    assert "m" in reg and "m" not in reg._module_dict
    assert lazy_module not in sys.modules
    assert reg.get("m") is sys.modules[lazy_module].Metric
    assert "m" in reg._module_dict and "m" not in reg._lazy


def test_collision_names_both_origins():
    reg = LazyRegistry("pretrain")
    reg.current_origin = "first-plugin"
    reg.register_lazy("mr", "a:b")
    reg.current_origin = "second-plugin"
    with pytest.raises(RegistryCollisionError, match="first-plugin.*second-plugin"):
        reg.register("mr", object)


def test_unknown_name_suggests_close_match():
    reg = LazyRegistry("tune")
    reg.register_lazy("gmcoord", "a:b")
    reg.register_lazy("tdcalib", "a:c")
    with pytest.raises(UnknownNameError, match="Did you mean 'gmcoord'"):
        reg.get("gmcord")


def test_bad_target_is_a_clear_error():
    reg = LazyRegistry("dataset")
    reg.register_lazy("broken", "no_such_module_xyz:Thing")
    with pytest.raises(UmdbenchError, match="could not be imported from 'no_such_module_xyz:Thing'"):
        reg.get("broken")


# -- type checks by kind ---------------------------------------------------------------------------
def test_every_kind_has_an_expected_type():
    assert set(EXPECTED) == set(KINDS)


def test_registering_the_wrong_kind_names_entry_origin_expected_found_and_fix(lazy_module):
    import umdbench_lazy_entries as mod

    reg = LazyRegistry("pretrain")
    reg.current_origin = "path my_plugin.py (my_plugin)"
    with pytest.raises(RegistryTypeError) as err:
        reg.register("my-data", mod.Dataset)
    message = str(err.value)
    assert "'my-data'" in message and "my_plugin.py" in message
    assert "subclass of umdbench.api.PretrainStrategy" in message
    assert "class umdbench_lazy_entries.Dataset" in message
    assert "register it under registries.dataset instead" in message
    assert "\n" not in message  # one paragraph
    assert "my-data" not in reg  # nothing half-registered


@pytest.mark.parametrize(
    "kind,obj,hint",
    [
        ("pretrain", "umdbench_lazy_entries:Pretrain", "use registries.pretrain.register_lazy"),
        ("dataset", "INSTANCE", "register the class itself, not an instance"),
        ("metric", dict, "make it a subclass of mmengine.evaluator"),
        ("suite", ["not", "a", "dict"], "register a dict"),
        ("encoder", lambda cfg: None, "make it a subclass of umdbench.api.Encoder"),
        ("task", object, "make it a subclass of umdbench.api.TaskType"),
    ],
)
def test_common_mistakes_get_a_specific_fix(kind, obj, hint, lazy_module):
    import umdbench_lazy_entries as mod

    if obj == "INSTANCE":
        obj = mod.Dataset(root=None)
    reg = LazyRegistry(kind)
    with pytest.raises(RegistryTypeError, match=hint):
        reg.register("wrong", obj)


def test_right_kinds_register(lazy_module):
    import umdbench_lazy_entries as mod

    registries = Registries()
    registries.pretrain.register("p", mod.Pretrain)
    registries.dataset.register("d", mod.Dataset)
    registries.metric.register("m", mod.Metric)
    registries.suite.register("s", {"title": "t", "datasets": [], "rows": []})
    assert registries.pretrain.get("p") is mod.Pretrain and registries.suite.get("s")["title"] == "t"


def test_lazy_entry_of_the_wrong_kind_fails_on_get_and_stays_unresolved(lazy_module):
    reg = LazyRegistry("tune")
    reg.current_origin = "entry point some_pkg (package some-pkg)"
    reg.register_lazy("not-a-tune", f"{lazy_module}:Pretrain")  # lazy: not checked yet
    for _ in range(2):  # a failed check is not cached as a good entry
        with pytest.raises(
            RegistryTypeError,
            match=r"'not-a-tune' \(imported from 'umdbench_lazy_entries:Pretrain'\)"
            r".*some-pkg.*TuneStrategy.*registries.pretrain instead",
        ):
            reg.get("not-a-tune")
    assert "not-a-tune" in reg._lazy and "not-a-tune" not in reg._module_dict


def test_loading_builtins_and_rejecting_a_wrong_kind_do_not_import_torch():
    import subprocess

    # the built-in plugin alone: installed third-party plugins may import torch themselves
    code = textwrap.dedent("""
        import sys
        from umdbench.plugin.loading import BuiltinPlugin
        from umdbench.plugin.registry import Registries, RegistryTypeError
        registries = Registries()
        BuiltinPlugin().umdbench_register(registries=registries)
        assert "mr" in registries.pretrain and "table1" in registries.suite
        try:
            registries.pretrain.register("wrong", dict)
        except RegistryTypeError as exc:
            assert "umdbench.api.PretrainStrategy" in str(exc), exc
        else:
            raise AssertionError("dict accepted as a pre-training strategy")
        print(sorted(m for m in ("torch", "umdbench.api", "mmengine.evaluator") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "suite"])
def test_every_builtin_entry_has_the_kind_it_is_registered_under(kind):
    registries, _ = load_plugins()
    table = read_registry_toml()
    reg = getattr(registries, kind)
    wrong = {}
    for name in table.get(kind, {}):
        try:
            reg.get(name)
        except UmdbenchError as exc:
            wrong[name] = str(exc)
    assert table.get(kind), f"registry.toml has no [{kind}] table"
    assert not wrong, "\n".join(f"{name}: {message}" for name, message in wrong.items())


# -- plugin loading ---------------------------------------------------------------------------------
def test_builtin_plugins_come_from_registry_toml():
    registries, report = load_plugins()
    table = read_registry_toml()
    for kind in ("pretrain", "tune", "dataset", "encoder", "task", "metric"):
        assert set(table[kind]) <= set(getattr(registries, kind).names())
    assert set(table["suites"]) <= set(registries.suite.names())
    # only the built-in plugin is ours to judge: other installed plugins may be broken (hermetic)
    builtin = report.plugins[0]
    assert builtin.name == "builtin" and builtin.error is None, builtin.error_trace


def test_broken_local_plugin_is_reported_and_rolled_back(tmp_path):
    good = tmp_path / "good_plugin.py"
    good.write_text(
        textwrap.dedent("""
        from umdbench.hookspecs import hookimpl
        @hookimpl
        def umdbench_register(registries):
            registries.metric.register_lazy("my-metric", "collections:Counter")
    """)
    )
    broken = tmp_path / "broken_plugin.py"
    broken.write_text(
        textwrap.dedent("""
        from umdbench.hookspecs import hookimpl
        @hookimpl
        def umdbench_register(registries):
            registries.metric.register_lazy("half-registered", "collections:Counter")
            raise RuntimeError("boom")
    """)
    )
    syntax = tmp_path / "syntax_plugin.py"
    syntax.write_text("def oops(:\n")
    registries, report = load_plugins([str(broken), str(good), str(syntax)])
    assert "my-metric" in registries.metric
    assert "half-registered" not in registries.metric  # rolled back
    failures = {p.name: p for p in report.failures}
    assert "boom" in failures["broken_plugin"].error
    assert "SyntaxError" in failures["syntax_plugin"].error
    assert "good_plugin" not in failures
    # the full traceback is kept for `umdbench plugins --traceback`
    assert "Traceback" in failures["broken_plugin"].error_trace
    assert 'raise RuntimeError("boom")' in failures["broken_plugin"].error_trace
    assert "syntax_plugin.py" in failures["syntax_plugin"].error_trace
    assert "umdbench_local_plugin_syntax_plugin" not in sys.modules  # no half-imported module left


def test_plugin_registering_the_wrong_kind_is_reported_and_rolled_back(tmp_path):
    plugin = tmp_path / "wrong_kind.py"
    plugin.write_text(
        textwrap.dedent("""
        from umdbench.hookspecs import hookimpl
        @hookimpl
        def umdbench_register(registries):
            registries.metric.register_lazy("wrong-kind-ok", "collections:Counter")
            registries.suite.register("wrong-kind-suite", {"title": "fine", "datasets": [], "rows": []})
            registries.pretrain.register("wrong-kind-pretrain", dict)
    """)
    )
    registries, report = load_plugins([str(plugin)])
    info = next(p for p in report.plugins if p.name == "wrong_kind")
    assert info.error.startswith("RegistryTypeError:") and "'wrong-kind-pretrain'" in info.error
    assert "path " in info.error and "wrong_kind" in info.error  # names the plugin as the origin
    assert info.registered == {}
    for kind, name in (("metric", "wrong-kind-ok"), ("suite", "wrong-kind-suite"), ("pretrain", "wrong-kind-pretrain")):
        assert name not in getattr(registries, kind)
    assert "mr" in registries.pretrain  # the built-ins are untouched


def test_plugin_collision_with_builtin_is_reported_not_fatal(tmp_path):
    clash = tmp_path / "clash.py"
    clash.write_text(
        textwrap.dedent("""
        from umdbench.hookspecs import hookimpl
        @hookimpl
        def umdbench_register(registries):
            registries.pretrain.register_lazy("mr", "collections:Counter")
    """)
    )
    registries, report = load_plugins([str(clash)])
    assert registries.pretrain.target("mr").startswith("umdbench_plugins.pretrain.mr")
    failed = {p.name: p.error for p in report.failures}  # by name: other installed plugins may fail too
    assert "registered twice" in failed["clash"]


@pytest.mark.parametrize(
    "make,problem",
    [
        (lambda d: d / "no_such_plugin.py", "there is no such file"),
        (lambda d: d, "is not a file"),
        (lambda d: d / "plugin.txt", "is not a .py file"),
    ],
)
def test_bad_plugin_path_is_an_error_not_a_skipped_plugin(tmp_path, make, problem):
    (tmp_path / "plugin.txt").write_text("")
    good = tmp_path / "good.py"
    good.write_text("")
    path = make(tmp_path)
    with pytest.raises(PluginPathError) as err:
        load_plugins([str(good), str(path)])
    message = str(err.value)
    assert f"--plugin-path {str(path)!r}" in message and problem in message
    assert "Pass the path of a Python file" in message and "\n" not in message


def test_bad_plugin_path_on_the_command_line_exits_2(tmp_path, capsys):
    from umdbench.cli import main

    missing = tmp_path / "typo_plugin.py"
    assert main(["list", "--plugin-path", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "typo_plugin.py" in err and "no such file" in err


def test_registries_cover_every_kind():
    kinds = Registries().kinds()
    assert set(kinds) == set(KINDS) == {"pretrain", "tune", "dataset", "metric", "suite", "encoder", "task"}
    assert all(reg.kind == kind for kind, reg in kinds.items())
