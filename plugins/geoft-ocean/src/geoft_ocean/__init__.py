"""geoft-ocean: ocean sources and datasets for geoft (GLORYS-like synthetic data, Copernicus Marine)."""

__version__ = "0.1.0"
