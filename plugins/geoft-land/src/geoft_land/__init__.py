"""geoft-land: ERA5 on its native (reduced Gaussian) grid joined to MODIS land-surface
temperature, as a table for a tabular model (after the ML4L workflow)."""

__version__ = "0.1.0"
