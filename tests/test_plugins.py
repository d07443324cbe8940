"""The plugin system: discovery, lazy references, fault tolerance, clashes, and one test per
hook (``test_hook_<name>``); a meta-test fails when a hook has no test or is missing from docs."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from geoft import hookspecs
from geoft.errors import PluginError

REPO = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if name.startswith("geoft_")]


def test_every_hook_has_a_test():
    tests = {name for name in globals() if name.startswith("test_hook_")}
    missing = [h for h in HOOKS if f"test_hook_{h.removeprefix('geoft_')}" not in tests]
    assert not missing, f"hooks without a test: {missing}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    docs = (REPO / "docs" / "plugins.md").read_text()
    assert f"`{hook}`" in docs, f"{hook} missing from docs/plugins.md"
    assert getattr(hookspecs, hook).__doc__.strip(), f"{hook} has no docstring"


def _pm():
    from geoft.plugins import get_plugin_manager

    return get_plugin_manager()


def test_builtin_and_ocean_plugins_register(fresh_plugins):
    pm = _pm()
    assert "builtin" in pm.plugins and "ocean" in pm.plugins
    assert {"synthetic-ocean", "copernicus", "local"} <= set(pm.names("source"))
    assert {"rmse", "bias", "acc"} <= set(pm.names("metric"))
    assert pm.entry("source", "synthetic-ocean").plugin == "ocean"
    # names are normalised: _ and - and case are the same
    assert pm.entry("source", "Synthetic_Ocean").name == "synthetic-ocean"


def test_hook_sources(thirdparty_plugin):
    pm = _pm()
    source = pm.get("source", "constant-field")()
    result = source.fetch(source.Options(value=2.0), Path("."), dry_run=True)
    assert result.requests == [{"value": 2.0}]


def test_hook_datasets(thirdparty_plugin):
    ds = _pm().get("dataset", "passthrough")()
    assert ds.to_canonical("raw", None) == "raw"


def test_hook_models(thirdparty_plugin):
    model = _pm().get("model", "mean-model")
    assert model.Options().value == 1.0 and model.TrainConfig is not None


def test_hook_metrics(thirdparty_plugin, tiny_store):
    import numpy as np
    import xarray as xr

    from geoft.store import PreparedStore

    store = PreparedStore.open(tiny_store)
    truth = store.ds["zos"].isel(time=slice(0, 5)).load()
    mask = xr.DataArray(store.valid("zos"), dims=("lat", "lon"))
    skill = _pm().get("metric", "skill-score")
    perfect = float(skill(truth, truth, mask=mask, time_dim="time"))
    assert perfect == pytest.approx(1.0)
    noisy = truth + 0.05 * np.random.default_rng(0).standard_normal(truth.shape)
    assert float(skill(noisy, truth, mask=mask, time_dim="time")) < 1.0


def test_hook_baselines(thirdparty_plugin, tiny_store):
    from geoft.store import PreparedStore

    store = PreparedStore.open(tiny_store)
    fc = _pm().get("baseline", "zero-anomaly")(store, [30, 31], 2)
    assert dict(fc["thetao"].sizes) == {"init_time": 2, "lead": 2, "level": 2, "lat": 16, "lon": 32}


def test_hook_reconstructors(thirdparty_plugin):
    method = _pm().get("reconstructor", "mean-fill")
    assert method.stage == "densify" and method.Config().value == 1.0


def test_hook_commands(thirdparty_plugin, cli):
    res = cli("hello", "--name", "geoscientist")
    assert res.code == 0 and "hello geoscientist" in res.out
    listing = cli("--help")
    assert "hello" in listing.out


def test_hook_recipe_sections(thirdparty_plugin, tmp_path):
    from geoft.errors import RecipeError
    from geoft.recipe import json_schema, load_recipe

    recipe = (REPO / "recipes" / "ocean-demo.yaml").read_text()
    path = tmp_path / "r.yaml"
    path.write_text(recipe + "\nthirdparty:\n  flavour: spicy\n")
    loaded = load_recipe(path)
    assert loaded.extra_sections["thirdparty"].flavour == "spicy"
    assert loaded.resolved["thirdparty"] == {"flavour": "spicy"}
    path.write_text(recipe + "\nthirdparty:\n  flavor: spicy\n")
    with pytest.raises(RecipeError, match=r"thirdparty\.flavor: unknown key.*flavour"):
        load_recipe(path)
    assert "section:thirdparty" in json_schema()["x-geoft-plugin-schemas"]


def test_plugins_list_json_includes_third_party(thirdparty_plugin, cli):
    res = cli("plugins", "list", "--json")
    assert res.code == 0
    plugins = {p["name"]: p for p in json.loads(res.out.strip().splitlines()[-1])}
    tp = plugins["thirdparty"]
    assert tp["version"] == "0.3.0" and tp["distribution"] == "geoft-thirdparty"
    assert tp["registered"]["metric"] == ["skill-score"]
    assert plugins["ocean"]["registered"]["source"] == ["copernicus", "synthetic-ocean"]


def test_broken_plugin_is_reported_not_fatal(tmp_path, monkeypatch, fresh_plugins, cli):
    site = tmp_path / "site"
    (site / "geoft_broken").mkdir(parents=True)
    (site / "geoft_broken" / "__init__.py").write_text("import does_not_exist_anywhere\n")
    dist = site / "geoft_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: geoft-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[geoft]\nbroken = geoft_broken\n")
    monkeypatch.syspath_prepend(str(site))
    # the rest of the CLI works
    assert cli("--help").code == 0
    assert "synthetic-ocean" in cli("fetch", "--help").out
    doctor = cli("plugins", "doctor", "--no-load")
    assert doctor.code == 1
    assert "broken" in doctor.out and "does_not_exist_anywhere" in doctor.out
    # the command that needs a missing name mentions the broken plugin
    with pytest.raises(PluginError, match="broken.*failed to load"):
        _pm().get("source", "something-from-broken")


RAISING_PLUGIN = """
import geoft


@geoft.hookimpl
def geoft_metrics():
    raise RuntimeError("metric table unreadable")


@geoft.hookimpl
def geoft_commands():
    raise KeyError("hello")


@geoft.hookimpl
def geoft_sources():
    return {"fine-source": geoft.Ref("math:pi", summary="still registered")}
"""


def test_hook_raising_when_called_is_reported_not_fatal(tmp_path, monkeypatch, fresh_plugins,
                                                        cli):
    """A plugin that imports fine but whose hooks raise when geoft calls them: the failure is
    attributed to the plugin (list, doctor), its working hooks still register, and every other
    command (help, validation, the built-in metrics) keeps working."""
    (tmp_path / "geoft_raises.py").write_text(RAISING_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GEOFT_PLUGINS", "geoft_raises")
    assert cli("--help").code == 0  # --help calls geoft_commands
    listed = cli("plugins", "list", "--json")
    assert listed.code == 0, listed
    info = {p["name"]: p for p in json.loads(listed.out.strip().splitlines()[-1])}["geoft_raises"]
    assert info["ok"] is False and "raised" in info["error"]
    assert info["registered"] == {"source": ["fine-source"]}
    doctor = cli("plugins", "doctor", "--no-load")
    assert doctor.code == 1
    assert "hook geoft_metrics raised RuntimeError: metric table unreadable" in doctor.out
    assert "hook geoft_commands raised KeyError" in doctor.out
    assert cli("recipe", "validate", str(REPO / "recipes" / "ocean-demo.yaml")).code == 0
    assert _pm().get("metric", "rmse").__name__ == "rmse"
    with pytest.raises(PluginError, match="geoft_raises.*failed to load"):
        _pm().get("metric", "something-from-raises")


def test_plugin_object_raising_at_call_time_is_attributed(fresh_plugins):
    """An exception from inside a registered object becomes a one-line PluginError naming the
    kind, name, plugin and action; user-fixable GeoftErrors pass through unchanged."""
    from geoft.errors import GeoftError
    from geoft.plugins import Entry, blame

    entry = Entry("metric", "skill-score", "thirdparty", lambda *a: None)
    with pytest.raises(PluginError) as err:
        with blame(entry, "scoring thetao"):
            {}["missing"]
    text = err.value.one_line()
    assert "metric 'skill-score' from plugin 'thirdparty' raised KeyError while scoring thetao" \
        in text and "authors of plugin 'thirdparty'" in text
    with pytest.raises(GeoftError, match="bad input") as passed:
        with blame(entry, "scoring"):
            raise GeoftError("bad input")
    assert type(passed.value) is GeoftError
    with pytest.raises(KeyboardInterrupt):
        with blame(entry, "scoring"):
            raise KeyboardInterrupt


def test_plugin_with_unknown_hook_is_unregistered(tmp_path, monkeypatch, fresh_plugins):
    mod = tmp_path / "geoft_typo.py"
    mod.write_text("import geoft\n@geoft.hookimpl\ndef geoft_metricz():\n    return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GEOFT_PLUGINS", "geoft_typo")
    pm = _pm()
    assert "geoft_metricz" in pm.plugins["geoft_typo"].error
    assert any("geoft_metricz" in p for p in pm.problems())


def test_name_clash_names_both_plugins(tmp_path, monkeypatch, fresh_plugins):
    mod = tmp_path / "geoft_clash.py"
    mod.write_text("import geoft\n@geoft.hookimpl\ndef geoft_metrics():\n"
                   "    return {'RMSE': geoft.Ref('math:sqrt')}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GEOFT_PLUGINS", "geoft_clash")
    pm = _pm()
    with pytest.raises(PluginError, match="'builtin' and plugin 'geoft_clash'"):
        pm.get("metric", "rmse")
    assert any("geoft_clash" in p for p in pm.problems())


def test_disable_plugins_env(monkeypatch, fresh_plugins):
    monkeypatch.setenv("GEOFT_DISABLE_PLUGINS", "ocean")
    pm = _pm()
    assert "ocean" not in pm.plugins
    with pytest.raises(PluginError, match="unknown source 'synthetic-ocean'"):
        pm.get("source", "synthetic-ocean")


def test_help_imports_no_heavy_module():
    """`geoft --help` (and `plugins list`) import neither torch nor xarray nor plugin internals."""
    code = ("import sys; from geoft.cli import main\n"
            "for argv in (['--help'], ['plugins', 'list'], ['fetch', '--help']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'xarray', 'numpy', 'aurora', 'diffusers', "
            "'copernicusmarine', 'geoft_ocean.synthetic', 'geoft_ocean.copernicus') "
            "if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


def test_a_plugin_calling_sys_exit_at_import_or_registering_a_bad_command_is_contained(
        tmp_path):
    """#14: a plugin module that calls sys.exit at import does not end geoft (the other
    commands work, exit 0) and is reported by doctor; a command object that is not a click
    command is reported by doctor and refused with one line when invoked."""
    import os

    site = tmp_path / "site"
    for name, body in (("geoft_exits", "import sys\nsys.exit(3)\n"),
                       ("geoft_badcmd", "import geoft\n\n\n@geoft.hookimpl\n"
                                        "def geoft_commands():\n"
                                        "    return {'hello-bad': geoft.Ref('geoft_badcmd.obj:X',"
                                        " summary='not a command')}\n")):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(body)
        dist = site / f"{name}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[geoft]\n{name} = {name}\n")
    (site / "geoft_badcmd" / "obj.py").write_text("X = 42\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}

    def geoft(*args):
        return subprocess.run([sys.executable, "-m", "geoft.cli", *args], capture_output=True,
                              text=True, env=env, timeout=120)

    listed = geoft("plugins", "list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert geoft("fetch", "--help").returncode == 0
    doctor = geoft("plugins", "doctor")
    assert doctor.returncode == 1
    assert "geoft_exits" in doctor.stdout and "SystemExit" in doctor.stdout
    assert "command 'hello-bad' from plugin 'geoft_badcmd' is a int, not a click command" \
        in doctor.stdout
    bad = geoft("hello-bad")
    assert bad.returncode == 2 and "not a click command" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def test_a_plugin_for_another_plugin_api_is_skipped_and_reported(tmp_path, monkeypatch,
                                                                 fresh_plugins):
    """#15: plugins declare the API they target; another version is reported by doctor and
    its registrations are skipped (never fatal); the first-party plugins declare this one."""
    import geoft
    import geoft_hrrr.plugin
    import geoft_land.plugin
    import geoft_ocean.plugin

    for module in (geoft_ocean.plugin, geoft_hrrr.plugin, geoft_land.plugin):
        assert module.GEOFT_PLUGIN_API == geoft.PLUGIN_API
    (tmp_path / "geoft_future.py").write_text(
        "import geoft\nGEOFT_PLUGIN_API = 99\n\n\n@geoft.hookimpl\ndef geoft_metrics():\n"
        "    return {'future-metric': geoft.Ref('math:pi')}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GEOFT_PLUGINS", "geoft_future")
    pm = _pm()
    assert "future-metric" not in pm.names("metric")
    assert any("targets geoft plugin API 99; this geoft speaks 1" in p for p in pm.problems())
    assert "rmse" in pm.names("metric")  # the rest works
