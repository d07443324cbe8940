"""geoft: adapt geoscience foundation models to your own data from one YAML recipe.

Importing this package is cheap: no torch, xarray or plugin module is imported here.
Plugin authors need only ``geoft.hookimpl`` and ``geoft.Ref`` (see :mod:`geoft.hookspecs`).
"""

import pluggy

from geoft.refs import Ref

__version__ = "0.1.0"

#: The plugin API this geoft speaks. A plugin module may declare ``GEOFT_PLUGIN_API = 1`` (the
#: version it targets); one declaring another version is reported by ``geoft plugins doctor``
#: and skipped, never fatal. Raised when a hook's call changes incompatibly.
PLUGIN_API = 1

#: Decorator marking a plugin's hook implementations (``@geoft.hookimpl``).
hookimpl = pluggy.HookimplMarker("geoft")

__all__ = ["PLUGIN_API", "Ref", "hookimpl", "__version__"]
