"""Registries: lazy entries, collisions, did-you-mean, plugin isolation."""
import textwrap

import pytest

from umdbench.errors import RegistryCollisionError, UmdbenchError, UnknownNameError
from umdbench.plugin.loading import load_plugins, read_registry_toml
from umdbench.plugin.registry import LazyRegistry, Registries


def test_lazy_entry_is_imported_on_first_get_only():
    reg = LazyRegistry("metric")
    reg.register_lazy("od", "collections:OrderedDict")
    assert "od" in reg and "od" not in reg._module_dict
    import collections

    assert reg.get("od") is collections.OrderedDict
    assert "od" in reg._module_dict and "od" not in reg._lazy


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


def test_builtin_plugins_come_from_registry_toml():
    registries, report = load_plugins()
    table = read_registry_toml()
    for kind in ("pretrain", "tune", "dataset"):
        assert set(table[kind]) <= set(getattr(registries, kind).names())
    assert report.plugins[0].name == "builtin" and not report.failures


def test_broken_local_plugin_is_reported_and_rolled_back(tmp_path):
    good = tmp_path / "good_plugin.py"
    good.write_text(textwrap.dedent('''
        from umdbench.hookspecs import hookimpl
        @hookimpl
        def umdbench_register(registries):
            registries.metric.register_lazy("my-metric", "collections:Counter")
    '''))
    broken = tmp_path / "broken_plugin.py"
    broken.write_text(textwrap.dedent('''
        from umdbench.hookspecs import hookimpl
        @hookimpl
        def umdbench_register(registries):
            registries.metric.register_lazy("half-registered", "collections:Counter")
            raise RuntimeError("boom")
    '''))
    syntax = tmp_path / "syntax_plugin.py"
    syntax.write_text("def oops(:\n")
    registries, report = load_plugins([str(broken), str(good), str(syntax)])
    assert "my-metric" in registries.metric
    assert "half-registered" not in registries.metric  # rolled back
    failures = {p.name: p.error for p in report.failures}
    assert "boom" in failures["broken_plugin"]
    assert "SyntaxError" in failures["syntax_plugin"]


def test_plugin_collision_with_builtin_is_reported_not_fatal(tmp_path):
    clash = tmp_path / "clash.py"
    clash.write_text(textwrap.dedent('''
        from umdbench.hookspecs import hookimpl
        @hookimpl
        def umdbench_register(registries):
            registries.pretrain.register_lazy("mr", "collections:Counter")
    '''))
    registries, report = load_plugins([str(clash)])
    assert registries.pretrain.target("mr").startswith("umdbench_plugins.pretrain.mr")
    assert "registered twice" in report.failures[0].error


def test_registries_kinds_cover_the_three_plugin_kinds():
    kinds = Registries().kinds()
    assert {"pretrain", "tune", "dataset", "metric", "suite"} == set(kinds)
