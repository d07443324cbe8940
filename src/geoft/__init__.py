"""geoft: adapt geoscience foundation models to your own data from one YAML recipe.

Importing this package is cheap: no torch, xarray or plugin module is imported here.
Plugin authors need only ``geoft.hookimpl`` and ``geoft.Ref`` (see :mod:`geoft.hookspecs`).
"""

import pluggy

from geoft.refs import Ref

__version__ = "0.1.0"

#: Decorator marking a plugin's hook implementations (``@geoft.hookimpl``).
hookimpl = pluggy.HookimplMarker("geoft")

__all__ = ["Ref", "hookimpl", "__version__"]
