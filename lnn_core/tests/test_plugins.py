"""The plugin host: entry-point loading, failures that name their distribution, switches, registries."""

from __future__ import annotations

import types

import pytest

import lnn_core
from lnn_core.errors import PluginLoadError, RegistryError
from lnn_core.ops import OpFamily
from lnn_core.plugins import PluginHost, PluginLoadWarning
from lnn_core.testing import isolated_host


def test_core_alone_has_its_own_defaults():
    host = isolated_host()
    assert "pow2-sym-halfup" in host.recipes
    assert {"plugins", "rules"} <= set(host.commands)
    assert len(host.ops) == 0
    assert [i.name for i in host.plugin_infos()] == ["lnn-core"]


def test_broken_plugin_is_reported_with_its_distribution_and_core_still_runs(fake_dist, monkeypatch):
    monkeypatch.delenv("LNN_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("LNN_PLUGIN_AUTOLOAD", raising=False)
    fake_dist("lnn-ops-broken", "0.4.1", "broken", "lnn_test_plugin_broken",
              "import lnn_core.does_not_exist\n")
    with pytest.warns(PluginLoadWarning, match="lnn-ops-broken 0.4.1") as rec:
        host = PluginHost()
    err = next(e for e in host.failed if e.plugin == "broken")
    assert err.dist == "lnn-ops-broken" and err.version == "0.4.1"
    assert "lnn_test_plugin_broken" in err.entry_point
    assert isinstance(err.cause, ImportError)
    text = str(rec[0].message)
    assert text.splitlines()[0].startswith("plugin 'broken' could not be loaded")
    assert text.splitlines()[-1].lstrip().startswith("hint:") and "LNN_DISABLE_PLUGINS=broken" in text
    # the core still works: recipes and commands are there, and the failure is listed
    assert "pow2-sym-halfup" in host.recipes
    assert any(i.error is err for i in host.plugin_infos())


def test_broken_plugin_raises_when_asked(fake_dist):
    fake_dist("lnn-ops-broken", "0.4.1", "broken", "lnn_test_plugin_broken2", "raise RuntimeError('boom')\n")
    with pytest.raises(PluginLoadError) as exc:
        PluginHost(on_error="raise")
    assert exc.value.plugin == "broken" and exc.value.dist == "lnn-ops-broken"


def test_disable_plugins_env_skips_the_broken_one(fake_dist, monkeypatch, recwarn):
    fake_dist("lnn-ops-broken", "0.4.1", "broken", "lnn_test_plugin_broken3", "import nope_not_a_module\n")
    monkeypatch.setenv("LNN_DISABLE_PLUGINS", "broken")
    host = PluginHost()
    assert not [e for e in host.failed if e.plugin == "broken"]
    assert not [w for w in recwarn if issubclass(w.category, PluginLoadWarning)]


def test_autoload_off_loads_no_entry_point(fake_dist, monkeypatch):
    fake_dist("lnn-ops-broken", "0.4.1", "broken", "lnn_test_plugin_broken4", "import nope_not_a_module\n")
    monkeypatch.setenv("LNN_PLUGIN_AUTOLOAD", "0")
    host = PluginHost()
    assert host.failed == [] and [i.name for i in host.plugin_infos()] == ["lnn-core"]


def test_working_entry_point_plugin_is_registered_with_its_distribution(fake_dist, monkeypatch):
    monkeypatch.setenv("LNN_DISABLE_PLUGINS", "")
    fake_dist("lnn-ops-good", "1.2.0", "good", "lnn_test_plugin_good", """
        from lnn_core import hookimpl
        from lnn_core.ops import OpFamily

        @hookimpl
        def lnn_register_ops(registry):
            registry.add(OpFamily(id="good.Nothing", kind="passthrough", methods=("good_nothing",)))
    """)
    host = PluginHost()
    assert "good.Nothing" in host.ops
    info = next(i for i in host.plugin_infos() if i.name == "good")
    assert (info.dist, info.version) == ("lnn-ops-good", "1.2.0")
    assert info.hooks == ("lnn_register_ops",)
    assert "lnn-ops-good" in host.ops.source_of("good.Nothing")


def test_misspelled_hook_is_refused_naming_the_plugin():
    plugin = types.ModuleType("typo_plugin")

    @lnn_core.hookimpl
    def lnn_register_opz(registry):  # typo: no such hook
        pass

    plugin.lnn_register_opz = lnn_register_opz
    with pytest.raises(PluginLoadError) as exc:
        isolated_host([plugin])
    assert exc.value.plugin == "typo_plugin"
    assert "lnn_register_opz" in str(exc.value)


def _ops_plugin(name: str, family: OpFamily) -> types.ModuleType:
    mod = types.ModuleType(name)

    @lnn_core.hookimpl
    def lnn_register_ops(registry):
        registry.add(family)

    mod.lnn_register_ops = lnn_register_ops
    return mod


def test_duplicate_op_id_names_both_plugins():
    a = _ops_plugin("plugin_a", OpFamily(id="x.Op", kind="passthrough", methods=("op_a",)))
    b = _ops_plugin("plugin_b", OpFamily(id="x.Op", kind="passthrough", methods=("op_b",)))
    host = isolated_host([a, b])  # registries fill on first use: the duplicate is found there
    with pytest.raises(RegistryError) as exc:
        _ = host.ops
    assert exc.value.key == "x.Op"
    assert {exc.value.first, exc.value.second} == {"'plugin_a'", "'plugin_b'"}
    with pytest.raises(RegistryError) as again:  # never a half-filled registry: the same error every time
        _ = host.ops
    assert again.value is exc.value
    assert "pow2-sym-halfup" in host.recipes  # the other registries are unaffected


def test_two_families_claiming_one_spelling_is_an_error():
    a = _ops_plugin("plugin_a", OpFamily(id="x.A", kind="passthrough", methods=("shared",)))
    b = _ops_plugin("plugin_b", OpFamily(id="x.B", kind="passthrough", methods=("shared",)))
    with pytest.raises(RegistryError, match="claimed by two op families"):
        isolated_host([a, b]).load_all()


def test_unknown_target_lists_what_is_registered():
    host = isolated_host()
    with pytest.raises(RegistryError) as exc:
        host.targets["csk9999"]
    assert exc.value.key == "csk9999" and "lnn plugins" in exc.value.hint


def test_hosts_are_independent():
    a = isolated_host([_ops_plugin("p1", OpFamily(id="x.Only", kind="passthrough", methods=("only",)))])
    b = isolated_host()
    assert "x.Only" in a.ops and "x.Only" not in b.ops


def test_op_family_validates_its_definition():
    with pytest.raises(ValueError, match="namespaced"):
        OpFamily(id="NoNamespace", kind="passthrough")
    with pytest.raises(ValueError, match="kind"):
        OpFamily(id="x.Y", kind="weird")
    with pytest.raises(ValueError, match="build"):
        OpFamily(id="x.Y", kind="compute")


# -- lazy registries: plugins are imported when the host is built, registries filled on first use ----


def _counting_plugin(name: str, calls: list[str]) -> types.ModuleType:
    mod = types.ModuleType(name)

    @lnn_core.hookimpl
    def lnn_register_ops(registry):
        calls.append("ops")
        registry.add(OpFamily(id=f"{name}.Op", kind="passthrough", methods=(f"{name}_op",)))

    @lnn_core.hookimpl
    def lnn_register_recipes(registry):
        calls.append("recipes")

    mod.lnn_register_ops = lnn_register_ops
    mod.lnn_register_recipes = lnn_register_recipes
    return mod


def test_a_registry_is_filled_on_first_use_and_only_once():
    calls: list[str] = []
    host = isolated_host([_counting_plugin("lazy", calls)])
    assert calls == []
    assert "lazy.Op" in host.ops and host.ops is host.ops
    assert calls == ["ops"]
    host.load_all()
    assert sorted(calls) == ["ops", "recipes"]


def test_late_registration_reaches_filled_and_unfilled_registries():
    calls: list[str] = []
    host = isolated_host()
    assert len(host.ops) == 0
    host.register(_counting_plugin("late", calls))
    assert calls == ["ops"] and "late.Op" in host.ops  # the filled registry got it at once
    assert "pow2-sym-halfup" in host.recipes and calls == ["ops", "recipes"]


def test_plugin_failing_in_a_registration_hook_is_reported_when_that_registry_is_used(fake_dist, monkeypatch):
    monkeypatch.delenv("LNN_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("LNN_PLUGIN_AUTOLOAD", raising=False)
    fake_dist("lnn-ops-halfbroken", "2.0.0", "halfbroken", "lnn_test_plugin_halfbroken", """
        from lnn_core import hookimpl

        @hookimpl
        def lnn_register_ops(registry):
            import nope_torch_side_module  # fails only when the op families are asked for
    """)
    host = PluginHost()
    assert not [e for e in host.failed if e.plugin == "halfbroken"]
    assert "lnn_register_ops" in next(i for i in host.plugin_infos() if i.name == "halfbroken").hooks
    with pytest.warns(PluginLoadWarning, match="lnn-ops-halfbroken 2.0.0"):
        _ = host.ops
    err = next(e for e in host.failed if e.plugin == "halfbroken")
    assert err.dist == "lnn-ops-halfbroken" and err.version == "2.0.0"
    assert isinstance(err.cause, ImportError)
    lines = str(err).splitlines()
    assert lines[0] == "plugin 'halfbroken' failed in lnn_register_ops, so it was skipped"
    assert lines[-1].lstrip().startswith("hint:") and "LNN_DISABLE_PLUGINS=halfbroken" in lines[-1]
    assert any(i.error is err for i in host.plugin_infos())


def test_registration_failure_raises_on_first_use_when_asked(fake_dist, monkeypatch):
    monkeypatch.delenv("LNN_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("LNN_PLUGIN_AUTOLOAD", raising=False)
    fake_dist("lnn-ops-halfbroken", "2.0.0", "halfbroken", "lnn_test_plugin_halfbroken2", """
        from lnn_core import hookimpl

        @hookimpl
        def lnn_register_ops(registry):
            raise RuntimeError("boom")
    """)
    host = PluginHost(on_error="raise")
    with pytest.raises(PluginLoadError) as exc:
        host.load_all()
    assert exc.value.plugin == "halfbroken" and exc.value.dist == "lnn-ops-halfbroken"
    assert "RuntimeError: boom" in str(exc.value)
