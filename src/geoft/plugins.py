"""Plugin discovery and the registry of everything plugins register.

Plugins are found through the ``geoft`` entry-point group (installed distributions, first-party
and third-party alike), plus modules named in ``GEOFT_PLUGINS`` (comma-separated, for local
experiments). ``GEOFT_DISABLE_PLUGINS`` (comma-separated plugin names) blocks plugins.
geoft's built-in features live in :mod:`geoft.builtin`, registered first, like pytest's own.

Fault tolerance (as in tox and anemoi-utils): a plugin that fails to import, raises in a hook
or implements a hook that does not exist is recorded and reported by ``geoft plugins doctor``
and by the command that needs it; it never breaks the rest of the CLI. Set ``GEOFT_DEBUG=1`` to
raise such errors immediately.
"""

from __future__ import annotations

import importlib
import os
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any

import pluggy

from geoft import PLUGIN_API, hookspecs
from geoft.errors import GeoftError, PluginError
from geoft.refs import Ref

GROUP = "geoft"
BUILTIN = "geoft.builtin"

#: kind of registered thing -> hook that registers it
KINDS: dict[str, str] = {
    "source": "geoft_sources",
    "dataset": "geoft_datasets",
    "model": "geoft_models",
    "metric": "geoft_metrics",
    "baseline": "geoft_baselines",
    "reconstructor": "geoft_reconstructors",
    "command": "geoft_commands",
    "recipe_section": "geoft_recipe_sections",
}


def normalise(name: str) -> str:
    """Registered names compare case-insensitively with ``_`` and ``-`` the same."""
    return name.strip().lower().replace("_", "-")


@dataclass
class Entry:
    """One registered thing: ``kind`` (see :data:`KINDS`), ``name``, owning ``plugin``."""

    kind: str
    name: str
    plugin: str
    target: Any

    @property
    def reference(self) -> str:
        if isinstance(self.target, Ref):
            return self.target.target
        mod = getattr(self.target, "__module__", None) or type(self.target).__module__
        return f"{mod}:{getattr(self.target, '__qualname__', type(self.target).__qualname__)}"

    @property
    def summary(self) -> str:
        if isinstance(self.target, Ref):
            return self.target.summary
        summary = getattr(self.target, "summary", None)
        if isinstance(summary, str):
            return summary
        return (getattr(self.target, "__doc__", None) or "").strip().split("\n")[0]

    def load(self) -> Any:
        """Resolve a lazy reference; a failure names the plugin and what to do."""
        if not isinstance(self.target, Ref):
            return self.target
        try:
            return self.target.resolve()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import failure (sys.exit at import too)
            if os.environ.get("GEOFT_DEBUG"):
                raise
            raise PluginError(
                f"{self.kind} {self.name!r} from plugin {self.plugin!r} failed to load "
                f"({exc.__class__.__name__}: {exc})",
                where=self.target.target,
                fix=f"reinstall or update plugin {self.plugin!r}; `geoft plugins doctor` shows details",
            ) from exc


@contextmanager
def blame(entry: Entry, action: str):
    """Run a call into a plugin's object; an unexpected exception it raises becomes a one-line
    :class:`PluginError` naming the plugin, the registered name and the action, so a faulty
    plugin is reported like one that fails to import (``GEOFT_DEBUG=1`` re-raises as is).

    :class:`GeoftError` (a user-fixable error the plugin reports itself) and interrupts pass
    through unchanged::

        with blame(entry, "scoring thetao"):
            value = metric(forecast, truth, ...)
    """
    try:
        yield
    except GeoftError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure inside a plugin's code
        if os.environ.get("GEOFT_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise PluginError(
            f"{entry.kind} {entry.name!r} from plugin {entry.plugin!r} raised "
            f"{exc.__class__.__name__} while {action}" + (f": {first}" if first else ""),
            where=entry.reference,
            fix=(f"report it to the authors of plugin {entry.plugin!r} (rerun with --debug for "
                 "the traceback)" if entry.plugin != "builtin" else
                 "rerun with --debug for the traceback and report it"),
        ) from exc


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "distribution": self.distribution,
                "version": self.version, "ok": self.error is None, "error": self.error,
                "registered": self.registered}


class GeoftPluginManager:
    """Loads plugins once and answers ``get(kind, name)``."""

    def __init__(self, *, load_entry_points: bool = True, extra_modules: list[str] | None = None):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.clashes: list[str] = []
        self._entries: dict[str, dict[str, Entry]] | None = None
        blocked = {normalise(n) for n in os.environ.get("GEOFT_DISABLE_PLUGINS", "").split(",") if n}

        self._register_module(BUILTIN, name="builtin", distribution="geoft")
        if load_entry_points:
            for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
                if normalise(ep.name) in blocked or ep.value == BUILTIN:
                    continue
                dist = ep.dist.name if ep.dist else None
                version = ep.dist.version if ep.dist else None
                self._register(lambda ep=ep: ep.load(), name=ep.name, module=ep.value,
                               distribution=dist, version=version)
        inline = [m for m in os.environ.get("GEOFT_PLUGINS", "").split(",") if m.strip()]
        for module in [*inline, *(extra_modules or [])]:
            if normalise(module) not in blocked:
                self._register_module(module.strip(), name=module.strip())
        self._check_pending()

    # -- loading ---------------------------------------------------------------------------
    def _register_module(self, module: str, *, name: str, distribution: str | None = None):
        version = None
        if distribution:
            try:
                version = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                version = None
        self._register(lambda: importlib.import_module(module), name=name, module=module,
                       distribution=distribution, version=version)

    def _register(self, loader, *, name, module, distribution=None, version=None):
        info = PluginInfo(name=name, module=module, distribution=distribution, version=version)
        self.plugins[name] = info
        try:
            obj = loader()
            target = getattr(obj, "GEOFT_PLUGIN_API", None)
            if target is not None and str(target) != str(PLUGIN_API):
                info.error = (f"targets geoft plugin API {target}; this geoft speaks "
                              f"{PLUGIN_API}: skipped (update the plugin or geoft)")
                return
            self.pm.register(obj, name=name)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin (even one calling sys.exit at import) must not break geoft
            if os.environ.get("GEOFT_DEBUG"):
                raise
            info.error = f"failed to import: {exc.__class__.__name__}: {exc}"
            info.traceback = traceback.format_exc()  # type: ignore[attr-defined]

    def _check_pending(self):
        """Unregister plugins that implement hooks geoft does not have (like tox does)."""
        for name, info in self.plugins.items():
            plugin = self.pm.get_plugin(name)
            if plugin is None:
                continue
            unknown = [a for a in dir(plugin) if a.startswith("geoft_")
                       and callable(getattr(plugin, a))
                       and not (getattr(self.pm.hook, a, None) and getattr(self.pm.hook, a).has_spec())]
            if unknown:
                self.pm.unregister(plugin)
                info.error = (f"implements unknown hook(s) {', '.join(unknown)}; "
                              f"known hooks: {', '.join(KINDS.values())}")

    # -- registry --------------------------------------------------------------------------
    @property
    def entries(self) -> dict[str, dict[str, Entry]]:
        """``{kind: {normalised name: Entry}}``, built on first use by calling every hook of
        every plugin separately, so a failure is attributed to its plugin."""
        if self._entries is None:
            self._entries = {kind: {} for kind in KINDS}
            for plugin_name, plugin in self.pm.list_name_plugin():
                info = self.plugins[plugin_name]
                for kind, hook in KINDS.items():
                    impl = next((i for i in getattr(self.pm.hook, hook).get_hookimpls()
                                 if i.plugin is plugin), None)
                    if impl is None:
                        continue
                    try:
                        result = impl.function() or {}
                        if not isinstance(result, dict):
                            raise TypeError(f"{hook} must return a dict, got {type(result).__name__}")
                    except (Exception, SystemExit) as exc:  # noqa: BLE001
                        if os.environ.get("GEOFT_DEBUG"):
                            raise
                        message = f"hook {hook} raised {exc.__class__.__name__}: {exc}"
                        # every failing hook is reported, not only the last one
                        info.error = f"{info.error}; {message}" if info.error else message
                        continue
                    for name, target in result.items():
                        key = normalise(name)
                        other = self._entries[kind].get(key)
                        if other is not None:
                            self.clashes.append(
                                f"{kind} {name!r} is registered by both plugin {other.plugin!r} "
                                f"and plugin {plugin_name!r}")
                            continue
                        self._entries[kind][key] = Entry(kind, name, plugin_name, target)
                        info.registered.setdefault(kind, []).append(name)
        return self._entries

    def names(self, kind: str) -> list[str]:
        return sorted(e.name for e in self.entries[kind].values())

    def entry(self, kind: str, name: str) -> Entry:
        key = normalise(name)
        entries = self.entries  # builds the registry (and finds clashes) on first use
        clash = [c for c in self.clashes if c.startswith(f"{kind} ") and
                 normalise(c.split("'")[1]) == key]
        if clash:
            raise PluginError(clash[0], fix="uninstall or disable one of them "
                              "(GEOFT_DISABLE_PLUGINS=name)")
        found = entries[kind].get(key)
        if found is None:
            broken = [p.name for p in self.plugins.values() if p.error]
            hint = (f"; plugin(s) {', '.join(broken)} failed to load (`geoft plugins doctor`)"
                    if broken else "")
            raise PluginError(
                f"unknown {kind} {name!r}{hint}",
                fix=f"use one of: {', '.join(self.names(kind)) or '(none registered)'}, "
                    f"or install the plugin that provides it",
            )
        return found

    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).load()

    def problems(self) -> list[str]:
        """Everything ``geoft plugins doctor`` reports: broken plugins and name clashes."""
        _ = self.entries
        out = [f"plugin {p.name!r} ({p.module}): {p.error}" for p in self.plugins.values() if p.error]
        return out + self.clashes


@lru_cache(maxsize=1)
def get_plugin_manager() -> GeoftPluginManager:
    return GeoftPluginManager()


def reset_plugin_manager() -> None:
    """Forget loaded plugins (tests, or after installing a plugin in-process)."""
    get_plugin_manager.cache_clear()
