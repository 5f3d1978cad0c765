"""Plugins that return garbage, raise or register nonsense are skipped by name; the core commands keep working.

Issue 12 item 7: every hook result is checked where the host receives it. A broken plugin is unregistered
(its other hooks are not called again), reported once (PluginLoadWarning, ``host.failed``) with its
distribution and entry point and a ``LNN_DISABLE_PLUGINS=<name>`` hint; ``on_error="raise"`` raises instead.
"""

from __future__ import annotations

import os
import types
import warnings

import pytest

import lnn_core
from lnn_core.cli import main
from lnn_core.errors import PluginLoadError, RegistryError
from lnn_core.ops import OpFamily
from lnn_core.plugins import PluginLoadWarning
from lnn_core.rules import Finding, RuleReport, Violation, rule
from lnn_core.testing import isolated_host


def _plugin(name: str, **hooks) -> types.ModuleType:
    """A plugin module ``name`` whose hooks are the given functions (marked @hookimpl)."""
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        fn.__name__ = hook
        setattr(mod, hook, lnn_core.hookimpl(fn))
    return mod


@rule("t.always", ops=("x.Op",))
def _always(op, limits):
    """Always fails."""
    return Finding(actual=1, limit=0, hint="none")


def _good_rules(name: str = "good") -> types.ModuleType:
    return _plugin(name, lnn_op_rules=lambda op_type, target: [_always] if target == "t" else None)


def _failed_once(host, name: str, hook: str) -> PluginLoadError:
    [err] = [e for e in host.failed if e.plugin == name]
    assert err.hook == hook
    text = str(err).splitlines()
    assert text[0].startswith(f"plugin {name!r} ") and text[0].endswith("so it was skipped")
    assert text[-1].lstrip().startswith("hint:") and f"LNN_DISABLE_PLUGINS={name}" in text[-1]
    assert any(i.name == name and i.error is err for i in host.plugin_infos())
    assert not host.pm.has_plugin(name)  # none of its hooks is called again
    return err


@pytest.mark.parametrize("garbage", [42, ["not a rule"], "rules", {"a": _always}], ids=repr)
def test_op_rules_returning_garbage_skip_the_plugin_and_keep_the_others(garbage, recwarn):
    bad = _plugin("bad_rules", lnn_op_rules=lambda op_type, target: garbage)
    host = isolated_host([_good_rules(), bad], on_error="warn")
    with pytest.warns(PluginLoadWarning, match="plugin 'bad_rules' returned"):
        assert host.rules_for("x.Op", "t") == [_always]
    err = _failed_once(host, "bad_rules", "lnn_op_rules")
    assert err.details["expected"] == "None or a list of lnn_core.rules.Rule"
    assert isinstance(err.cause, TypeError)
    n = len(recwarn)
    assert host.rules_for("x.Op", "t") == [_always] and len(recwarn) == n  # reported once, then gone
    # the rules reach a report as before
    report = RuleReport("t").check_ops([lnn_core.rules.OpView("a", "x.Op")], lambda t: host.rules_for(t, "t"), {})
    assert [v.rule_id for v in report.violations] == ["t.always"]


def test_op_rules_garbage_raises_naming_the_plugin_when_asked():
    host = isolated_host([_plugin("bad_rules", lnn_op_rules=lambda op_type, target: 42)])
    with pytest.raises(PluginLoadError) as exc:
        host.rules_for("x.Op", "t")
    assert (exc.value.plugin, exc.value.hook) == ("bad_rules", "lnn_op_rules")
    assert exc.value.headline == "plugin 'bad_rules' returned int from lnn_op_rules, so it was skipped"


def test_op_rules_raising_is_skipped_too():
    def boom(op_type):
        raise ZeroDivisionError("x")

    host = isolated_host([_good_rules(), _plugin("raiser", lnn_op_rules=boom)], on_error="warn")
    with pytest.warns(PluginLoadWarning, match="failed in lnn_op_rules"):
        assert host.rules_for("x.Op", "t") == [_always]
    assert "ZeroDivisionError: x" in str(_failed_once(host, "raiser", "lnn_op_rules"))


class _Report:
    def __init__(self, violations, ok=True, memory=None):
        self.violations, self.ok, self.memory = violations, ok, memory or {}


_VIOLATION = Violation("a", "x.Op", "t.always", "Always fails.", 0, 1, "none", "t")


@pytest.mark.parametrize("garbage", ["fits", 0, _Report("v"), _Report([1]), _Report([], ok="yes"),
                                     _Report([], memory=[1])], ids=["str", "int", "violations-str",
                                                                    "violations-int", "ok-str", "memory-list"])
def test_check_graph_returning_garbage_is_skipped_for_the_next_plugin(garbage):
    good = _plugin("checker", lnn_check_graph=lambda graph, target: _Report([_VIOLATION]) if target == "t" else None)
    bad = _plugin("bad_checker", lnn_check_graph=lambda graph, target: garbage)
    host = isolated_host([good, bad], on_error="warn")  # the later plugin is called first (firstresult)
    with pytest.warns(PluginLoadWarning, match="plugin 'bad_checker' returned"):
        report = host.check_graph(object(), "t")
    assert report.violations == [_VIOLATION]
    _failed_once(host, "bad_checker", "lnn_check_graph")
    assert host.check_graph(object(), "other") is None  # no plugin judges it: None, as the hook says


def test_simulate_returning_garbage_is_skipped():
    class Arr:
        shape = (1,)

    good = _plugin("sim", lnn_simulate=lambda target: ([Arr()], {"y": Arr()}))
    bad = _plugin("bad_sim", lnn_simulate=lambda target: "done")
    host = isolated_host([good, bad], on_error="warn")
    with pytest.warns(PluginLoadWarning, match="plugin 'bad_sim' returned str from lnn_simulate"):
        outputs, tensors = host.simulate(None, [], "t")
    assert list(tensors) == ["y"]
    _failed_once(host, "bad_sim", "lnn_simulate")


def test_a_raising_configure_hook_skips_its_plugin_and_lnn_plugins_still_works(capsys):
    def configure(host):
        raise RuntimeError("cannot configure")

    calls = []
    bad = _plugin("bad_conf", lnn_configure=configure,
                  lnn_register_commands=lambda registry: registry.add("badcmd", "x", lambda p: None, lambda a, h: 0))
    good = _plugin("good_conf", lnn_configure=lambda host: calls.append(host))
    with pytest.warns(PluginLoadWarning, match="plugin 'bad_conf' failed in lnn_configure"):
        host = isolated_host([bad, good], on_error="warn")
    assert calls == [host]  # the others are configured
    err = _failed_once(host, "bad_conf", "lnn_configure")
    assert "RuntimeError: cannot configure" in str(err)
    assert "badcmd" not in host.commands  # skipped as a whole
    assert main(["plugins"], host=host) == 1
    out = capsys.readouterr().out
    assert "bad_conf" in out and "FAILED TO LOAD" in out and "LNN_DISABLE_PLUGINS=bad_conf" in out
    assert main(["rules", "--target", "nothing-registered"], host=host) == 2  # other commands still run


def test_configure_raising_raises_when_asked():
    def configure(host):
        raise RuntimeError("cannot configure")

    with pytest.raises(PluginLoadError) as exc:
        isolated_host([_plugin("bad_conf", lnn_configure=configure)])
    assert exc.value.plugin == "bad_conf" and isinstance(exc.value.cause, RuntimeError)


def test_late_registration_is_configured_and_checked():
    def configure(host):
        raise RuntimeError("late")

    host = isolated_host(on_error="warn")
    with pytest.warns(PluginLoadWarning, match="failed in lnn_configure"):
        host.register(_plugin("late_conf", lnn_configure=configure))
    _failed_once(host, "late_conf", "lnn_configure")


@pytest.mark.parametrize("name", ["", "   ", None, 3])
def test_a_command_without_a_name_skips_its_plugin_and_every_command_still_runs(name, capsys):
    bad = _plugin("nameless", lnn_register_commands=lambda registry: registry.add(name, "x", print, print))
    with pytest.warns(PluginLoadWarning, match="plugin 'nameless' failed in lnn_register_commands"):
        host = isolated_host([bad], on_error="warn")
        assert main(["plugins"], host=host) == 1
    err = _failed_once(host, "nameless", "lnn_register_commands")
    assert isinstance(err.cause, RegistryError) and "registers a command without a name" in str(err)
    assert "LNN_DISABLE_PLUGINS=nameless" in capsys.readouterr().out
    assert {"plugins", "rules", "export", "verify"} <= set(host.commands)


@pytest.mark.parametrize("registers", [
    lambda registry: registry.add("x", "help", "not callable", print),
    lambda registry: registry.add("x", 42, print, print),
], ids=["configure-not-callable", "help-not-text"])
def test_a_command_that_is_not_one_is_refused_naming_the_plugin(registers):
    host = isolated_host([_plugin("oddcmd", lnn_register_commands=registers)])
    with pytest.raises(RegistryError) as exc:
        host.commands  # noqa: B018
    assert exc.value.first == "'oddcmd'" and exc.value.kind == "command"


@pytest.mark.parametrize("hook, registers", [
    ("lnn_register_ops", lambda registry: registry.add(42)),
    ("lnn_register_ops", lambda registry: registry.add("builtin.Conv2d")),
    ("lnn_register_recipes", lambda registry: registry.add({"name": "r"})),
    ("lnn_register_targets", lambda registry: registry.add("csk")),
    ("lnn_register_exporters", lambda registry: registry.add_writer("d", 42)),
    ("lnn_register_exporters", lambda registry: registry.add_node_writer("", "Op", print)),
    ("lnn_register_sim_kernels", lambda registry: registry.add("Op", None)),
    ("lnn_register_target_ops", lambda registry: registry.add("t", 42)),
    ("lnn_register_target_ops", lambda registry: registry.add("t", types.SimpleNamespace(op_type=""))),
    ("lnn_register_target_ops", lambda registry: registry.add("", types.SimpleNamespace(op_type="Op"))),
    ("lnn_register_target_ops", lambda registry: registry.add_format("t", "lnn")),
], ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.filterwarnings("ignore:lnn_register_sim_kernels is deprecated:DeprecationWarning")
def test_registering_something_that_is_not_an_item_skips_the_plugin(hook, registers):
    host = isolated_host([_plugin("odd", **{hook: registers})], on_error="warn")
    attr = {"lnn_register_ops": "ops", "lnn_register_recipes": "recipes", "lnn_register_targets": "targets",
            "lnn_register_exporters": "exporters", "lnn_register_sim_kernels": "sim_kernels",
            "lnn_register_target_ops": "target_ops"}[hook]
    with pytest.warns(PluginLoadWarning, match=f"plugin 'odd' failed in {hook}"):
        registry = getattr(host, attr)
    err = _failed_once(host, "odd", hook)
    assert isinstance(err.cause, RegistryError) and err.cause.first == "'odd'"
    assert len(registry) == len(getattr(isolated_host(), attr))  # what the core registers itself, no more


def test_a_target_op_of_the_wrong_type_is_found_whatever_the_registration_order():
    class MyOp:
        op_type = "Op"

    backend = _plugin("backend", lnn_register_target_ops=lambda registry: (
        registry.expect("t", op=MyOp), registry.add("t", MyOp())))
    odd = _plugin("aaa_odd", lnn_register_target_ops=lambda registry: registry.add(
        "t", types.SimpleNamespace(op_type="Other")))
    for order in ([odd, backend], [backend, odd]):
        host = isolated_host(order, on_error="warn")
        with pytest.warns(PluginLoadWarning, match="plugin 'aaa_odd' failed in lnn_register_target_ops"):
            assert list(host.target_ops.ops("t")) == ["Op"]
        err = _failed_once(host, "aaa_odd", "lnn_register_target_ops")
        assert "registers SimpleNamespace as the t op 'Other', not a MyOp" in str(err)
    with pytest.raises(RegistryError, match="not a MyOp") as exc:
        isolated_host([odd, backend]).target_ops  # noqa: B018
    assert exc.value.key == "Other" and exc.value.first == "'aaa_odd'"


def test_a_plugin_failing_in_one_registry_leaves_the_filled_ones_too():
    def ops(registry):
        raise ImportError("no torch side")

    plugin = _plugin("half", lnn_register_commands=lambda registry: registry.add("halfcmd", "x", print, print),
                     lnn_register_ops=ops)
    host = isolated_host([plugin], on_error="warn")
    assert "halfcmd" in host.commands
    with pytest.warns(PluginLoadWarning, match="failed in lnn_register_ops"):
        assert len(host.ops) == 0
    assert "halfcmd" not in host.commands and "plugins" in host.commands


def test_no_plugin_can_take_a_core_command_away(capsys):
    thief = _plugin("thief", lnn_register_commands=lambda registry: registry.add("plugins", "mine", print, print))
    with pytest.warns(PluginLoadWarning, match="command 'plugins' is registered twice"):
        host = isolated_host([thief], on_error="warn")
        assert main(["plugins"], host=host) == 1  # the core's command, listing the thief as failed
    assert "thief" in capsys.readouterr().out


def test_a_registration_duplicate_raises_the_registry_error_when_asked():
    a = _plugin("pa", lnn_register_ops=lambda registry: registry.add(OpFamily(id="x.Op", kind="passthrough")))
    b = _plugin("pb", lnn_register_ops=lambda registry: registry.add(OpFamily(id="x.Op", kind="passthrough")))
    with pytest.raises(RegistryError) as exc:
        isolated_host([a, b]).ops  # noqa: B018
    assert (exc.value.first, exc.value.second) == ("'pa'", "'pb'")


# -- hook validation at registration -------------------------------------------------------------


def test_a_hook_with_wrong_argument_names_is_described_as_such():
    plugin = _plugin("argtypo", lnn_register_ops=lambda registy: None)
    with pytest.raises(PluginLoadError) as exc:
        isolated_host([plugin])
    err = exc.value
    assert err.headline == ("plugin 'argtypo' implements lnn_register_ops with argument names the hook does not "
                            "pass (registy), so it was not registered")
    assert err.hook == "lnn_register_ops" and "not an lnn hook" not in str(err)
    assert err.details["hook"] == "lnn_register_ops(registry)"
    assert err.details["implementation"] == "lnn_register_ops(registy)"


def test_fewer_arguments_than_the_hook_and_defaults_are_fine():
    host = isolated_host([_plugin("few", lnn_op_rules=lambda target, extra=1: None,
                                  lnn_register_recipes=lambda: None)])
    assert host.rules_for("x", "t") == [] and "pow2-sym-halfup" in host.recipes


def _entry_point_plugin(fake_dist, monkeypatch, ep: str, module: str, source: str) -> None:
    import importlib.metadata as md

    installed = {e.name for e in md.entry_points(group="lnn")}
    monkeypatch.delenv("LNN_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("LNN_DISABLE_PLUGINS", ",".join(sorted(installed - {ep})))
    fake_dist("lnn-ops-typo", "0.1.0", ep, module, source)


def test_hook_validation_names_the_entry_point(fake_dist, monkeypatch, capsys):
    _entry_point_plugin(fake_dist, monkeypatch, "typo", "lnn_test_plugin_typo", """
        from lnn_core import hookimpl

        @hookimpl
        def lnn_register_opps(registry):
            pass
    """)
    with pytest.warns(PluginLoadWarning) as rec:
        assert main(["plugins"]) == 1
    text = str(rec[0].message)
    assert text.splitlines()[0] == "plugin 'typo' implements 'lnn_register_opps', which is not an lnn hook, so it " \
                                   "was not registered"
    assert "entry point:  lnn:typo = 'lnn_test_plugin_typo'" in text and "lnn-ops-typo 0.1.0" in text
    assert "did you mean: lnn_register_ops" in text and "LNN_DISABLE_PLUGINS=typo" in text
    assert "FAILED TO LOAD" in capsys.readouterr().out


def test_wrong_argument_names_name_the_entry_point(fake_dist, monkeypatch):
    _entry_point_plugin(fake_dist, monkeypatch, "argtypo", "lnn_test_plugin_argtypo", """
        from lnn_core import hookimpl

        @hookimpl
        def lnn_op_rules(op_type, target_id):
            return None
    """)
    with pytest.warns(PluginLoadWarning):
        host = lnn_core.plugins.PluginHost()
    [err] = host.failed
    assert err.entry_point == "lnn:argtypo = 'lnn_test_plugin_argtypo'" and err.dist == "lnn-ops-typo"
    assert "argument names the hook does not pass (target_id)" in err.headline
    assert err.details["hook"] == "lnn_op_rules(op_type, target, host)"


def test_entry_point_plugin_returning_garbage_names_distribution_and_entry_point(fake_dist, monkeypatch, capsys):
    _entry_point_plugin(fake_dist, monkeypatch, "garbage", "lnn_test_plugin_garbage", """
        from lnn_core import hookimpl

        @hookimpl
        def lnn_op_rules(op_type, target):
            return 42
    """)
    host = lnn_core.plugins.PluginHost()
    with pytest.warns(PluginLoadWarning) as rec:
        assert host.rules_for("x", "t") == []
    text = str(rec[0].message)
    assert "lnn:garbage = 'lnn_test_plugin_garbage'" in text and "lnn-ops-typo 0.1.0" in text
    assert main(["plugins"], host=host) == 1
    assert "garbage      lnn-ops-typo 0.1.0  FAILED TO LOAD" in capsys.readouterr().out


def test_a_command_whose_arguments_cannot_be_set_up_is_skipped_and_the_rest_run(capsys):
    def configure(parser):
        parser.add_argument("--json")
        parser.add_argument("--json")  # argparse refuses the second one

    plugin = _plugin("badargs", lnn_register_commands=lambda registry: (
        registry.add("broken", "x", configure, print), registry.add("fine", "y", print, print)))
    host = isolated_host([plugin], on_error="warn")
    with pytest.warns(PluginLoadWarning, match="registers command 'broken', whose arguments cannot be set up"):
        assert main(["plugins"], host=host) == 1
    err = _failed_once(host, "badargs", "lnn_register_commands")
    assert "conflicting option string: --json" in str(err)
    assert "broken" not in host.commands and "fine" not in host.commands and "rules" in host.commands
    assert "badargs" in capsys.readouterr().out


@pytest.mark.parametrize("source, hook", [
    ("""
        from lnn_core import hookimpl

        @hookimpl
        def lnn_configure(host):
            raise RuntimeError("no config file")
    """, "lnn_configure"),
    ("""
        from lnn_core import hookimpl

        @hookimpl
        def lnn_register_recipes(registry):
            from lnn_core.quant.recipes import Recipe
            registry.add(Recipe(name=""))
    """, "lnn_register_recipes"),
], ids=["configure-raises", "recipe-without-a-name"])
def test_an_installed_plugin_failing_so_leaves_every_command(fake_dist, monkeypatch, capsys, source, hook):
    _entry_point_plugin(fake_dist, monkeypatch, "wobbly", "lnn_test_plugin_wobbly_" + hook, source)
    with pytest.warns(PluginLoadWarning) as rec:
        assert main(["plugins"]) == 1
    text = str(rec[0].message)
    assert text.splitlines()[0] == f"plugin 'wobbly' failed in {hook}, so it was skipped"
    assert f"lnn:wobbly = 'lnn_test_plugin_wobbly_{hook}'" in text and "lnn-ops-typo 0.1.0" in text
    assert "LNN_DISABLE_PLUGINS=wobbly" in text.splitlines()[-1]
    assert "wobbly       lnn-ops-typo 0.1.0  FAILED TO LOAD" in capsys.readouterr().out
    with warnings.catch_warnings():  # warned when the registry it broke is used (recipes: not by lnn rules)
        warnings.simplefilter("ignore", PluginLoadWarning)
        assert main(["rules", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("# Supported operators")
    monkeypatch.setenv("LNN_DISABLE_PLUGINS", "wobbly," + os.environ["LNN_DISABLE_PLUGINS"])
    assert main(["plugins"]) == 0  # the hint's switch works
