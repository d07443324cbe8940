"""Grids: the one place in geoft that knows the spatial dimensions of a prepared store.

Three layouts (``docs/contract.md``):

========== ============ ==================================================================
kind       dims         coordinates
========== ============ ==================================================================
latlon     (lat, lon)   1-D ``lat`` strictly decreasing (degrees_north), 1-D ``lon`` strictly
                        increasing in [0, 360) (degrees_east)
projected  (y, x)       1-D ``y`` strictly decreasing and ``x`` strictly increasing (projection
                        metres), 2-D ``lat(y, x)``/``lon(y, x)`` (lon in [0, 360)), the CRS as a
                        CF ``grid_mapping`` variable ``crs`` (e.g. Lambert conformal)
points     (point,)     ``lat(point)``, ``lon(point)`` (lon in [0, 360)); optional ``area(point)``
                        in km2 (a reduced Gaussian grid, stations, ...)
========== ============ ==================================================================

A :class:`Grid` gives what depends on the layout: the dims, cell-area weights (WeatherBench 2
latitude-band areas for lat/lon; map-factor areas from pyproj for projected grids; per-point
areas or uniform for point sets), the nearest grid cell of arbitrary lat/lon points (exact on the
sphere: a KD-tree on 3-D unit vectors, distances recomputed as float64 haversine), cropping to a
bounding box, and the coordinates to put on outputs. ``prepare``, ``evaluate``, the metrics and
the observation operators ask the store's grid; no other module names spatial dims.

Import-light: numpy at import; xarray, scipy and pyproj inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Hashable, Sequence

import numpy as np

from geoft.errors import GeoftError

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

#: Mean Earth radius (IUGG), km: haversine distances.
EARTH_RADIUS_KM = 6371.0088

#: Every spatial dim name of every layout, e.g. to tell spatial from other dims.
SPATIAL_DIMS: tuple[str, ...] = ("lat", "lon", "y", "x", "point")

CRS_VAR = "crs"

#: layout -> its grid dims
LAYOUT_DIMS: dict[str, tuple[str, ...]] = {"latlon": ("lat", "lon"), "projected": ("y", "x"),
                                           "points": ("point",)}


# ------------------------------------------------------------------------------------------
# sphere geometry
# ------------------------------------------------------------------------------------------
def unit_vectors(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """``(N, 3)`` float64 unit vectors of points on the sphere."""
    lat = np.deg2rad(np.asarray(lat_deg, np.float64).ravel())
    lon = np.deg2rad(np.asarray(lon_deg, np.float64).ravel())
    c = np.cos(lat)
    return np.stack([c * np.cos(lon), c * np.sin(lon), np.sin(lat)], axis=1)


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km (float64 haversine; broadcasts)."""
    p1, p2 = np.deg2rad(np.asarray(lat1, np.float64)), np.deg2rad(np.asarray(lat2, np.float64))
    dlat = p2 - p1
    dlon = np.deg2rad(np.asarray(lon2, np.float64) - np.asarray(lon1, np.float64))
    h = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def latitude_weights(lat) -> "xr.DataArray":
    """WeatherBench 2 cell-area weights for latitudes in degrees_north, normalised to mean 1.

    For 1-D latitudes (dim ``"lat"`` for an array; the DataArray's own dim otherwise) each
    point's weight is the area of its latitude band, ``sin(upper) - sin(lower)``, with bounds
    at the midpoints between neighbouring points and the outer bounds half a spacing beyond
    the end points, clipped to +-90. This works for increasing or decreasing latitudes and for
    regional grids, and gives a pole point a small positive weight (the polar cap it stands
    for) where ``cos(lat)`` would give 0.

    For 2-D latitudes (dims like ``(y, x)``) there are no latitude bands and the weight is
    ``cos(lat)``; a projected store's :meth:`ProjectedGrid.weights` uses true cell areas instead.

    Returns a float64 DataArray with the dims and coords of ``lat`` (``lat`` for an array),
    whose values have mean 1.
    """
    import xarray as xr

    where = "latitude_weights"
    if isinstance(lat, xr.DataArray):
        values = np.asarray(lat.values, dtype=np.float64)
        dims: tuple[Hashable, ...] = lat.dims
        coords: Any = lat.coords
    else:
        values = np.asarray(lat, dtype=np.float64)
        if values.ndim != 1:
            raise GeoftError(
                f"a latitude array must be 1-D, got shape {values.shape}", where=where,
                fix="pass 2-D latitudes as an xr.DataArray with named dims, e.g. lat(y, x)")
        dims = ("lat",)
        coords = {"lat": values}
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise GeoftError("latitudes are empty or contain NaN/inf", where=where,
                         fix="pass finite latitudes in degrees_north")
    if np.any(np.abs(values) > 90.0):
        raise GeoftError(
            f"latitudes must lie in [-90, 90] degrees, got {values.min():g}..{values.max():g}",
            where=where, fix="pass latitudes in degrees_north (not radians, not a y index)")
    if values.ndim == 2:
        weights = np.cos(np.deg2rad(values))
    elif values.ndim == 1:
        weights = _latitude_band_areas(values)
    else:
        raise GeoftError(f"latitudes must be 1-D or 2-D, got {values.ndim}-D", where=where)
    mean_weight = weights.mean()
    if not mean_weight > 0:
        raise GeoftError("all latitude weights are zero", where=where,
                         fix="check the latitudes are not all at the poles")
    return xr.DataArray(weights / mean_weight, dims=dims, coords=coords, name="latitude_weight")


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges of 1-D centres: midpoints, outer edges half a spacing beyond the ends."""
    if centres.size == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    spacing = np.diff(centres)
    return np.concatenate([[centres[0] - spacing[0] / 2], (centres[:-1] + centres[1:]) / 2,
                           [centres[-1] + spacing[-1] / 2]])


def _latitude_band_areas(lat_deg: np.ndarray) -> np.ndarray:
    """``sin(upper) - sin(lower)`` of each point's latitude band (unnormalised, >= 0)."""
    if lat_deg.size == 1:
        return np.ones(1)
    spacing = np.diff(lat_deg)
    if not (np.all(spacing > 0) or np.all(spacing < 0)):
        raise GeoftError("latitudes are not strictly monotonic", where="latitude_weights",
                         fix="sort the grid by latitude (increasing or decreasing) and drop "
                             "duplicates")
    bounds = np.clip(_edges(lat_deg), -90.0, 90.0)
    return np.abs(np.diff(np.sin(np.deg2rad(bounds))))


# ------------------------------------------------------------------------------------------
# grids
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Nearest:
    """Result of :meth:`Grid.nearest`: ``index`` (one integer array per grid dim), ``flat``
    (index into the flattened grid), ``distance_km`` (float64 haversine)."""

    index: tuple[np.ndarray, ...]
    flat: np.ndarray
    distance_km: np.ndarray


class Grid:
    """Base of the three layouts; build one with :func:`grid_of` (from a dataset)."""

    kind: ClassVar[str] = ""
    dims: tuple[str, ...] = ()

    def __init__(self, lat: np.ndarray, lon: np.ndarray, shape: tuple[int, ...]):
        self.shape = tuple(int(s) for s in shape)
        self._lat = np.asarray(lat, np.float64)
        self._lon = np.asarray(lon, np.float64)
        self._tree = None

    # -- coordinates --------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def lat(self) -> np.ndarray:
        """Latitudes as stored (1-D for lat/lon grids, 2-D for projected, 1-D per point)."""
        return self._lat

    @property
    def lon(self) -> np.ndarray:
        return self._lon

    def lat_lon_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Latitude and longitude of every cell, each of the grid's ``shape``."""
        return self._lat, self._lon

    def sizes(self) -> dict[str, int]:
        return dict(zip(self.dims, self.shape))

    # -- weights ------------------------------------------------------------------------------
    def cell_areas_km2(self) -> np.ndarray | None:
        """Area of each cell in km2 (grid ``shape``), or None when unknown (uniform)."""
        raise NotImplementedError

    def weights(self) -> "xr.DataArray":
        """Cell-area weights over the grid dims, normalised to mean 1 (float64)."""
        import xarray as xr

        areas = self.cell_areas_km2()
        w = np.ones(self.shape) if areas is None else np.asarray(areas, np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.mean() > 0:
            raise GeoftError("cell areas are not finite and positive", where=f"{self.kind} grid",
                             fix="check the grid's coordinates and CRS")
        return xr.DataArray(w / w.mean(), dims=self.dims, name="cell_area_weight")

    def cell_radius_km(self) -> np.ndarray:
        """Half the diagonal of each cell (km, grid ``shape``): a point farther than this from
        its nearest cell centre lies outside the grid. Point sets: half the distance to the
        nearest other point times sqrt(2) (the half-diagonal of a square cell of that size)."""
        from scipy.spatial import cKDTree

        glat, glon = (a.ravel() for a in self.lat_lon_points())
        if self.size < 2:
            return np.full(self.shape, np.inf)
        _, nn = cKDTree(unit_vectors(glat, glon)).query(unit_vectors(glat, glon), k=2)
        d = haversine_km(glat, glon, glat[nn[:, 1]], glon[nn[:, 1]])
        return (d * np.sqrt(2) / 2).reshape(self.shape)

    # -- lookup -------------------------------------------------------------------------------
    def nearest(self, lat, lon, *, max_km: float | None = None,
                inside: bool = False) -> Nearest:
        """Nearest grid cell of each point (exact on the sphere). With ``max_km``, points
        farther than that get index -1 (``flat`` -1, distance kept); with ``inside``, points
        farther from their nearest cell centre than the cell's half-diagonal
        (:meth:`cell_radius_km`) do."""
        from scipy.spatial import cKDTree

        lat = np.asarray(lat, np.float64).ravel()
        lon = np.asarray(lon, np.float64).ravel()
        if self._tree is None:
            glat, glon = self.lat_lon_points()
            self._tree = cKDTree(unit_vectors(glat, glon))
        _, flat = self._tree.query(unit_vectors(lat, lon), k=1)
        flat = np.asarray(flat, np.int64)
        glat, glon = (a.ravel() for a in self.lat_lon_points())
        dist = haversine_km(lat, lon, glat[flat], glon[flat])
        if max_km is not None:
            flat = np.where(dist <= max_km, flat, -1)
        if inside:
            radius = self.cell_radius_km().ravel()
            flat = np.where((flat >= 0) & (dist <= radius[np.maximum(flat, 0)] * (1 + 1e-9)),
                            flat, -1)
        index = tuple(np.where(flat >= 0, i, -1) for i in
                      np.unravel_index(np.maximum(flat, 0), self.shape))
        return Nearest(index, flat, dist)

    def fractional_index(self, lat, lon) -> tuple[np.ndarray, np.ndarray] | None:
        """Fractional ``(row, column)`` index of each point on a 2-D grid (``row = 2.25`` is a
        quarter of the way from row 2 to row 3), for bilinear interpolation; clipped to the
        grid (a point in the half-cell beyond the outer centres gets the edge value). None
        for layouts without rows and columns (point sets)."""
        return None

    # -- outputs ------------------------------------------------------------------------------
    def coords(self, ds: "xr.Dataset") -> dict[str, Any]:
        """The grid's coordinate variables of ``ds`` (to copy onto outputs)."""
        names = [n for n, c in ds.coords.items() if set(c.dims) and set(c.dims) <= set(self.dims)]
        return {n: ds.coords[n].variable.to_base_variable() for n in names}

    def describe(self) -> str:
        return f"{self.kind} grid {' x '.join(f'{d}={n}' for d, n in self.sizes().items())}"


class LatLonGrid(Grid):
    """A regular (or irregular) lat/lon grid: dims ``(lat, lon)``."""

    kind = "latlon"
    dims = ("lat", "lon")

    def __init__(self, lat: np.ndarray, lon: np.ndarray):
        super().__init__(np.asarray(lat), np.asarray(lon), (np.size(lat), np.size(lon)))

    def lat_lon_points(self) -> tuple[np.ndarray, np.ndarray]:
        return tuple(np.meshgrid(self._lat, self._lon, indexing="ij"))  # type: ignore[return-value]

    def fractional_index(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        lat = np.asarray(lat, np.float64).ravel()
        lon = np.asarray(lon, np.float64).ravel()
        fy = fractional_position(self._lat, lat)
        # longitudes unwrapped eastwards from the first column: a box across 0 E is monotonic
        glon = np.mod(self._lon - self._lon[0], 360.0)
        olon = np.mod(lon - self._lon[0], 360.0)
        n = glon.size
        step = glon[-1] / (n - 1) if n > 1 else 360.0
        if n > 1 and glon[-1] + 1.5 * step >= 360.0:  # global: the last column wraps to the first
            fx = np.interp(olon, np.append(glon, 360.0), np.arange(n + 1.0))
            return fy, np.mod(fx, n)
        # beyond the east edge: nearer the east or (wrapped) the west edge
        east = olon > glon[-1]
        olon = np.where(east & (olon - glon[-1] > 360.0 - olon), olon - 360.0, olon)
        return fy, fractional_position(glon, olon)

    def cell_areas_km2(self) -> np.ndarray:
        # band area (sin(upper) - sin(lower)) times the longitude width of each column: the
        # WeatherBench 2 weights (uniform longitudes leave exactly the band areas after
        # normalising)
        band = _latitude_band_areas(self._lat)
        width = np.abs(np.diff(np.deg2rad(_edges(self._lon)))) if self._lon.size > 1 else \
            np.ones(1)
        return EARTH_RADIUS_KM**2 * band[:, None] * width[None, :]

    def cell_radius_km(self) -> np.ndarray:
        dy = EARTH_RADIUS_KM * np.abs(np.diff(np.deg2rad(_edges(self._lat))))
        dlon = np.abs(np.diff(np.deg2rad(_edges(self._lon)))) if self._lon.size > 1 else \
            np.full(1, np.pi)
        dx = EARTH_RADIUS_KM * np.cos(np.deg2rad(self._lat))[:, None] * dlon[None, :]
        return 0.5 * np.hypot(dx, dy[:, None])


class ProjectedGrid(Grid):
    """A grid on a map projection: dims ``(y, x)`` in projection coordinates, 2-D lat/lon, the
    CRS from the CF ``grid_mapping`` variable."""

    kind = "projected"
    dims = ("y", "x")

    def __init__(self, y: np.ndarray, x: np.ndarray, lat: np.ndarray, lon: np.ndarray, crs):
        super().__init__(lat, lon, (np.size(y), np.size(x)))
        self.y = np.asarray(y, np.float64)
        self.x = np.asarray(x, np.float64)
        self.crs = crs

    def fractional_index(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        from pyproj import Transformer

        lat = np.asarray(lat, np.float64).ravel()
        lon = np.asarray(lon, np.float64).ravel()
        to_crs = Transformer.from_crs("EPSG:4326", self.crs, always_xy=True)
        x, y = to_crs.transform(np.where(lon > 180, lon - 360, lon), lat)
        to_m = _axis_metres(self.crs)
        return (fractional_position(self.y, np.asarray(y) / to_m),
                fractional_position(self.x, np.asarray(x) / to_m))

    def cell_areas_km2(self) -> np.ndarray:
        """``dx * dy / areal_scale``: the projected cell area divided by the projection's areal
        scale factor (``k * h``, pyproj ``Proj.get_factors``) at the cell centre."""
        from pyproj import Proj

        to_m = _axis_metres(self.crs)
        dx = np.abs(np.diff(_edges(self.x))) * to_m
        dy = np.abs(np.diff(_edges(self.y))) * to_m
        factors = Proj(self.crs).get_factors(np.where(self._lon > 180, self._lon - 360, self._lon),
                                             self._lat)
        scale = np.asarray(factors.areal_scale, np.float64)
        return dy[:, None] * dx[None, :] / scale / 1e6

    def cell_radius_km(self) -> np.ndarray:
        """Half-diagonal of each cell on the ground: projected sides divided by the linear
        scale factor (the square root of the areal scale: exact for conformal projections)."""
        from pyproj import Proj

        to_m = _axis_metres(self.crs)
        dx = np.abs(np.diff(_edges(self.x))) * to_m
        dy = np.abs(np.diff(_edges(self.y))) * to_m
        factors = Proj(self.crs).get_factors(np.where(self._lon > 180, self._lon - 360, self._lon),
                                             self._lat)
        k = np.sqrt(np.asarray(factors.areal_scale, np.float64))
        return 0.5 * np.hypot(dx[None, :], dy[:, None]) / k / 1e3

    def describe(self) -> str:
        name = getattr(self.crs, "name", "projected")
        return f"{super().describe()} ({name})"


class PointGrid(Grid):
    """A set of points: dim ``point`` with ``lat``/``lon`` per point and an optional ``area``."""

    kind = "points"
    dims = ("point",)

    def __init__(self, lat: np.ndarray, lon: np.ndarray, area: np.ndarray | None = None):
        super().__init__(lat, lon, (np.size(lat),))
        self.area = None if area is None else np.asarray(area, np.float64)

    def cell_areas_km2(self) -> np.ndarray | None:
        return self.area

    def cell_radius_km(self) -> np.ndarray:
        if self.area is not None:
            return np.sqrt(self.area / 2.0)
        return super().cell_radius_km()


def fractional_position(coord: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Fractional index of ``values`` on the monotonic 1-D ``coord`` (either direction),
    clipped to ``[0, n - 1]``."""
    coord = np.asarray(coord, np.float64)
    index = np.arange(coord.size, dtype=np.float64)
    if coord.size < 2:
        return np.zeros(np.shape(values))
    if coord[0] > coord[-1]:
        coord, index = coord[::-1], index[::-1]
    return np.interp(values, coord, index)


def _axis_metres(crs) -> float:
    try:
        return float(crs.axis_info[0].unit_conversion_factor)
    except (AttributeError, IndexError):
        return 1.0


# ------------------------------------------------------------------------------------------
# from datasets
# ------------------------------------------------------------------------------------------
def layout_of(ds) -> str:
    """``latlon``, ``projected`` or ``points`` from the dims of ``ds`` (Dataset or DataArray)."""
    dims = set(ds.dims)
    if {"y", "x"} <= dims:
        return "projected"
    if "point" in dims:
        return "points"
    if {"lat", "lon"} <= dims:
        return "latlon"
    raise GeoftError(f"no grid dims in {sorted(map(str, dims))}",
                     fix="name the grid dims (lat, lon), (y, x) with 2-D lat/lon, or (point,) "
                         "with lat/lon per point (docs/contract.md)")


def crs_of(ds) -> Any:
    """The pyproj CRS of a projected dataset, from its CF ``grid_mapping`` variable."""
    from pyproj import CRS

    name = CRS_VAR if CRS_VAR in ds.variables else None
    if name is None:
        for v in ds.data_vars.values():
            gm = v.attrs.get("grid_mapping")
            if gm and gm in ds.variables:
                name = gm
                break
    if name is None:
        name = next((n for n, v in ds.variables.items() if "grid_mapping_name" in v.attrs
                     or "crs_wkt" in v.attrs), None)
    if name is None:
        raise GeoftError("a projected grid (y, x) has no CF grid_mapping variable",
                         fix="add the CRS as a variable with grid_mapping_name/crs_wkt attrs "
                             "(pyproj: CRS.to_cf()), e.g. geoft.grid.crs_variable(crs)")
    attrs = dict(ds[name].attrs)
    try:
        return CRS.from_wkt(attrs["crs_wkt"]) if "crs_wkt" in attrs else CRS.from_cf(attrs)
    except Exception as exc:  # noqa: BLE001 - pyproj's CRSError and friends
        raise GeoftError(f"cannot read the CRS from variable {name!r} ({exc})",
                         fix="write CF grid_mapping attributes (pyproj CRS.to_cf())") from exc


def crs_variable(crs) -> "xr.DataArray":
    """A CF grid-mapping variable for ``crs`` (a scalar with ``CRS.to_cf()`` attributes)."""
    import xarray as xr
    from pyproj import CRS

    crs = CRS.from_user_input(crs)
    attrs = {k: (v if isinstance(v, (str, int, float)) else list(v) if isinstance(v, tuple) else
                 str(v)) for k, v in crs.to_cf().items()}
    return xr.DataArray(np.int32(0), attrs=attrs)


def grid_of(ds) -> Grid:
    """The :class:`Grid` of a dataset in one of the three layouts."""
    kind = layout_of(ds)
    if kind == "latlon":
        return LatLonGrid(ds["lat"].values, ds["lon"].values)
    if kind == "projected":
        return ProjectedGrid(ds["y"].values, ds["x"].values, ds["lat"].values, ds["lon"].values,
                             crs_of(ds))
    area = ds["area"].values if "area" in ds.variables and ds["area"].dims == ("point",) else None
    return PointGrid(ds["lat"].values, ds["lon"].values, area)


def default_weights(data, spatial_dims: Sequence[Hashable]) -> "xr.DataArray | None":
    """WeatherBench 2 band weights when a 1-D latitude coordinate lies on the reduced dims,
    cos(lat) for 2-D latitudes, else None (uniform). Evaluation passes a store's own
    :meth:`Grid.weights` (true cell areas) instead."""
    if "lat" not in data.coords:
        return None
    lat = data.coords["lat"]
    if lat.ndim == 0 or not set(lat.dims) <= set(spatial_dims):
        return None
    return latitude_weights(lat.reset_coords(drop=True))


def spatial_dims_of(data) -> tuple[str, ...]:
    """The grid dims present in ``data`` (in the order of its dims)."""
    return tuple(str(d) for d in data.dims if d in SPATIAL_DIMS)


def validate_layout(ds) -> list[str]:
    """Problems with the grid part of a prepared store (empty when it follows the contract)."""
    try:
        kind = layout_of(ds)
    except GeoftError as exc:
        return [exc.what]
    problems: list[str] = []
    for name in ("lat", "lon"):
        if name not in ds.variables:
            problems.append(f"coordinate {name!r} missing")
    if problems:
        return problems
    lat, lon = ds["lat"].values, ds["lon"].values
    if np.any(~np.isfinite(lat)) or np.any(np.abs(lat) > 90):
        problems.append("lat must be finite and within [-90, 90]")
    if lon.size and (np.nanmin(lon) < 0 or np.nanmax(lon) >= 360):
        problems.append("lon must lie in [0, 360)")
    if kind == "latlon":
        if lat.ndim != 1 or not np.all(np.diff(lat) < 0):
            problems.append("lat must be 1-D and strictly decreasing")
        if lon.ndim != 1 or not np.all(np.diff(lon) > 0):
            problems.append("lon must be 1-D and strictly increasing")
    elif kind == "projected":
        if ds["lat"].dims != ("y", "x") or ds["lon"].dims != ("y", "x"):
            problems.append("projected grids need 2-D lat(y, x) and lon(y, x)")
        for dim, sign, word in (("y", -1, "decreasing (north first)"), ("x", 1, "increasing")):
            if dim not in ds.coords or ds[dim].ndim != 1 or not np.all(sign * np.diff(ds[dim].values) > 0):
                problems.append(f"{dim} must be a 1-D coordinate, strictly {word}")
        try:
            crs_of(ds)
        except GeoftError as exc:
            problems.append(exc.what)
    else:
        if ds["lat"].dims != ("point",) or ds["lon"].dims != ("point",):
            problems.append("point sets need lat(point) and lon(point)")
    return problems


# ------------------------------------------------------------------------------------------
# orienting and cropping canonical data (prepare)
# ------------------------------------------------------------------------------------------
def _bbox_lon_range(bbox) -> tuple[float, float] | None:
    """``(lo, hi)`` in [0, 360] for a box not crossing 0 degrees east; None for all longitudes."""
    if bbox.lon_max - bbox.lon_min >= 360:
        return None
    lo = bbox.lon_min % 360.0
    return lo, lo + (bbox.lon_max - bbox.lon_min)


def _in_box(lat: np.ndarray, lon360: np.ndarray, bbox) -> np.ndarray:
    inside = (lat >= bbox.lat_min) & (lat <= bbox.lat_max)
    rng = _bbox_lon_range(bbox)
    if rng is None:
        return inside
    lo, hi = rng
    if hi <= 360:
        return inside & (lon360 >= lo) & (lon360 <= hi)
    return inside & ((lon360 >= lo) | (lon360 <= hi - 360))  # crosses 0 degrees east


def orient(ds: "xr.Dataset", bbox=None, *, where: str = "data") -> "xr.Dataset":
    """Put canonical data into its layout's orientation and crop it to ``bbox``:

    * lat/lon: lon in [0, 360) strictly increasing, lat strictly decreasing; a box crossing
      0 degrees east is refused (one increasing [0, 360) axis cannot describe it);
    * projected: y decreasing (north first), x increasing, lon in [0, 360); the box keeps the
      smallest (y, x) rectangle holding every cell whose centre lies inside it;
    * points: lon in [0, 360); the box keeps the points inside it.
    """
    kind = layout_of(ds)
    if kind == "latlon":
        return _orient_latlon(ds, bbox, where)
    import xarray as xr

    lon = np.mod(ds["lon"].values, 360.0)
    ds = ds.assign_coords(lon=xr.Variable(ds["lon"].dims, lon, ds["lon"].attrs))
    if kind == "projected":
        for dim in ("y", "x"):
            if dim not in ds.coords or ds[dim].ndim != 1:
                raise GeoftError(f"projected data needs a 1-D {dim!r} coordinate (projection "
                                 "metres)", where=where,
                                 fix="give y/x coordinates, e.g. from pyproj (geoft.grid."
                                     "projected_xy)")
        crs_of(ds)  # a clear error early when the CRS is missing
        ds = ds.sortby("y", ascending=False).sortby("x")
        if bbox is not None:
            inside = _in_box(ds["lat"].values, ds["lon"].values, bbox)
            rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
            if rows.size == 0:
                raise _empty_box(ds, where)
            ds = ds.isel(y=slice(rows[0], rows[-1] + 1), x=slice(cols[0], cols[-1] + 1))
        return ds
    if bbox is not None:
        keep = np.flatnonzero(_in_box(ds["lat"].values, ds["lon"].values, bbox))
        if keep.size == 0:
            raise _empty_box(ds, where)
        ds = ds.isel(point=keep)
    return ds


def _empty_box(ds, where) -> GeoftError:
    lat, lon = ds["lat"].values, ds["lon"].values
    return GeoftError(f"the bbox selects no grid points (the data covers lat "
                      f"{np.nanmin(lat):.2f}..{np.nanmax(lat):.2f}, lon "
                      f"{np.nanmin(lon):.2f}..{np.nanmax(lon):.2f} (0-360))",
                      where="data.bbox", fix="check the bbox against the source's extent")


def _orient_latlon(ds, bbox, where):
    for dim in ("lat", "lon"):
        if ds[dim].ndim != 1:
            raise GeoftError(f"{dim!r} must be 1-D on a lat/lon grid", where=where,
                             fix="use dims (y, x) with 2-D lat/lon for projected grids")
    lon360 = np.mod(ds["lon"].values, 360.0)
    ds = ds.assign_coords(lon=("lon", lon360, ds["lon"].attrs)).sortby("lon")
    if bbox is not None:
        rng = _bbox_lon_range(bbox)
        if rng is not None:
            lo, hi = rng
            if hi > 360.0:
                raise GeoftError(
                    f"bbox lon {bbox.lon_min}..{bbox.lon_max} crosses 0 degrees east, which one "
                    "increasing [0, 360) longitude axis cannot describe",
                    where="data.bbox", fix="move the box east or west of 0 degrees, or split it "
                                           "in two")
            ds = ds.sel(lon=slice(lo, hi))
        lat = ds["lat"].values
        ds = ds.isel(lat=np.flatnonzero((lat >= bbox.lat_min) & (lat <= bbox.lat_max)))
    ds = ds.sortby("lat", ascending=False)
    if ds.sizes["lat"] == 0 or ds.sizes["lon"] == 0:
        raise _empty_box(ds, where) if bbox is not None else GeoftError(
            "the grid is empty", where=where)
    if (len(np.unique(ds["lon"].values)) != ds.sizes["lon"]
            or len(np.unique(ds["lat"].values)) != ds.sizes["lat"]):
        raise GeoftError("duplicate lat or lon values after converting lon to [0, 360)",
                         where=where, fix="the source grid overlaps itself; crop it with data.bbox")
    return ds


def projected_xy(lat2d: np.ndarray, lon2d: np.ndarray, crs) -> tuple[np.ndarray, np.ndarray]:
    """1-D ``y`` (first column) and ``x`` (first row) projection coordinates of a regular
    projected grid given its 2-D lat/lon (for datasets whose source omits them, e.g. cfgrib)."""
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x, _ = t.transform(np.asarray(lon2d)[0, :], np.asarray(lat2d)[0, :])
    _, y = t.transform(np.asarray(lon2d)[:, 0], np.asarray(lat2d)[:, 0])
    return np.asarray(y, np.float64), np.asarray(x, np.float64)


def fit_to_multiple(ds: "xr.Dataset", multiple: int | Sequence[int], *, how: str = "crop",
                    valid=None) -> tuple["xr.Dataset", dict[str, Any]]:
    """Crop (centred) or pad (at the end of each dim, with NaN) the 2-D grid dims of ``ds`` to
    multiples of ``multiple`` (a model's patch size). Returns the new dataset and a report:
    ``{"how", "removed" or "added": {dim: {"start": n, "end": n}}, "valid_points_removed",
    "valid_points_total"}`` (valid points from the boolean ``valid`` over the grid dims, when
    given). Point sets are returned unchanged."""
    kind = layout_of(ds)
    report: dict[str, Any] = {"how": how, "multiple": multiple, "changes": {}}
    if kind == "points":
        return ds, report
    dims = LatLonGrid.dims if kind == "latlon" else ProjectedGrid.dims
    mult = (multiple, multiple) if isinstance(multiple, int) else tuple(multiple)
    sel, pad = {}, {}
    for dim, m in zip(dims, mult):
        n = ds.sizes[dim]
        if how == "crop":
            keep = (n // m) * m
            if keep == 0:
                raise GeoftError(f"the grid has only {n} points along {dim}, fewer than the "
                                 f"multiple {m} the model needs", where="data.bbox",
                                 fix="enlarge the bbox, or set data.fit: pad")
            start = (n - keep) // 2
            sel[dim] = slice(start, start + keep)
            if keep != n:
                report["changes"][dim] = {"start": start, "end": n - keep - start}
        else:
            extra = (-n) % m
            if extra:
                pad[dim] = (0, extra)
                report["changes"][dim] = {"start": 0, "end": extra}
    if valid is not None and how == "crop":
        total = int(np.asarray(valid).sum())
        kept = int(np.asarray(valid.isel(sel) if sel else valid).sum())
        report.update(valid_points_total=total, valid_points_removed=total - kept)
    if sel:
        ds = ds.isel(sel)
    if pad:
        ds = _pad(ds, pad, kind)
    return ds, report


def _pad(ds, pad: dict[str, tuple[int, int]], kind: str):
    """Pad grid dims at their end with NaN data, extrapolating the coordinates linearly."""
    out = ds.pad(pad, mode="constant")
    if kind == "latlon":
        for dim in pad:
            vals = ds[dim].values
            step = vals[-1] - vals[-2] if vals.size > 1 else 1.0
            extra = vals[-1] + step * np.arange(1, pad[dim][1] + 1)
            new = np.concatenate([vals, extra])
            if dim == "lon":
                new = np.mod(new, 360.0)
                if np.any(np.diff(new) <= 0):
                    raise GeoftError("padding the longitudes would wrap past 360 degrees",
                                     where="data.fit", fix="use data.fit: crop, or move the box")
            if dim == "lat" and np.any(np.abs(new) > 90):
                raise GeoftError("padding the latitudes would pass a pole", where="data.fit",
                                 fix="use data.fit: crop")
            out = out.assign_coords({dim: (dim, new, ds[dim].attrs)})
        return out
    # projected: extend y/x linearly and recompute lat/lon through the CRS
    from pyproj import Transformer

    coords = {}
    for dim in ("y", "x"):
        vals = ds[dim].values
        step = vals[-1] - vals[-2] if vals.size > 1 else 1.0
        n_extra = pad.get(dim, (0, 0))[1]
        coords[dim] = np.concatenate([vals, vals[-1] + step * np.arange(1, n_extra + 1)])
    crs = crs_of(ds)
    xx, yy = np.meshgrid(coords["x"], coords["y"])
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xx, yy)
    return out.assign_coords(y=("y", coords["y"], ds["y"].attrs), x=("x", coords["x"], ds["x"].attrs),
                             lat=(("y", "x"), lat, ds["lat"].attrs),
                             lon=(("y", "x"), np.mod(lon, 360.0), ds["lon"].attrs))
