"""An optical-flow extrapolation nowcast: the standard baseline of convective nowcasting.

:func:`extrapolation` is a geoft gridded baseline (``baseline(store, init_indices, lead_steps)
-> xr.Dataset``, laid out exactly like :func:`geoft.baselines.persistence`). It estimates one
motion field per initial time from the last radar-like fields with pysteps' Lucas-Kanade
optical flow and advects every variable of the store along it with pysteps' semi-Lagrangian
scheme. pysteps (and OpenCV, which its Lucas-Kanade method needs) is imported only when the
baseline runs.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Sequence

import numpy as np
import xarray as xr

#: the variable whose motion is tracked when the store has it (composite reflectivity, dBZ)
REFLECTIVITY_VAR = "refc"
#: reflectivity below this (dBZ) is "no echo" for the motion estimate: 7 dBZ is 0.1 mm/h with
#: Marshall-Palmer (Z = 200 R^1.6), the rain/no-rain threshold of pysteps' own examples
DBZ_THRESHOLD = 7.0
#: store steps of history used for the motion field (times i-2, i-1, i)
MOTION_FRAMES = 3


def _import_pysteps():
    """pysteps' motion and extrapolation method getters (its import prints a banner: hushed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import pysteps.extrapolation
        import pysteps.motion
    return pysteps.motion.get_method, pysteps.extrapolation.get_method


def motion_variable(store) -> str:
    """``refc`` when the store has it, else its first surface variable (else the first level
    variable, whose first level is then tracked)."""
    if REFLECTIVITY_VAR in store.variables:
        return REFLECTIVITY_VAR
    if store.surface_vars:
        return store.surface_vars[0]
    return store.variables[0]


def motion_input(frames: np.ndarray, var: str) -> np.ndarray:
    """The fields handed to Lucas-Kanade: float64, NaN where not available (pysteps masks
    NaN: no features are detected within ``buffer_mask`` pixels of it). Reflectivity (dBZ) is
    clipped from below at :data:`DBZ_THRESHOLD`: dBZ is already logarithmic, an affine map of
    pysteps' usual input (rain rate in dB, 10 log10 R, since dBZ = 23 + 16 log10 R with
    Marshall-Palmer), and the feature detector rescales each image to 0..255 between its own
    min and max, so clipped dBZ is that input up to the rain threshold. The clip makes the
    no-echo background one flat value: no corners are found in clear-air noise, and pysteps'
    morphological opening (threshold = the image minimum) removes isolated echo pixels. Other
    variables are passed as they are."""
    x = np.asarray(frames, dtype=np.float64)
    if var == REFLECTIVITY_VAR:
        x = np.maximum(x, DBZ_THRESHOLD)  # NaN stays NaN
    return x


def estimate_motion(frames: np.ndarray) -> np.ndarray:
    """Dense motion ``(2, rows, cols)`` in pixels per step between consecutive ``frames``
    ``(T >= 2, rows, cols)`` (pysteps' dense Lucas-Kanade; sparse vectors of all consecutive
    pairs pooled, outliers removed, declustered and interpolated by inverse distance).
    ``V[0]`` is the motion along the columns (+ = towards higher column index) and ``V[1]``
    along the rows (+ = towards higher row index), on the arrays as given: on geoft's
    north-first grids a northward motion has ``V[1] < 0``. All zero when no feature could be
    tracked. pysteps' defaults are kept (Shi-Tomasi corners at least 10 px apart and
    ``buffer_mask=5`` px away from NaN, 50 px tracking windows on 3 pyramid levels, 3-sigma
    outliers among the 30 nearest vectors, declustering on 20 px, inverse-distance
    interpolation)."""
    try:
        import cv2  # noqa: F401 - pysteps' Lucas-Kanade runs on OpenCV
    except ImportError as exc:
        from geoft.errors import GeoftError

        raise GeoftError("the extrapolation nowcast's Lucas-Kanade motion needs OpenCV",
                         where="geoft_hrrr.nowcast",
                         fix="pip install opencv-python-headless") from exc
    motion_method, _ = _import_pysteps()
    lk = motion_method("LK")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # neighbouring vectors that agree exactly (a rigid translation) make the covariance
        # of the outlier test singular; pysteps then keeps the vector, rightly, but warns
        warnings.filterwarnings("ignore", message=".*during outlier detection",
                                category=UserWarning)
        velocity = lk(np.asarray(frames, dtype=np.float64), dense=True, verbose=False)
    velocity = np.asarray(velocity, dtype=np.float64)
    return np.where(np.isfinite(velocity), velocity, 0.0)


def displacements(velocity: np.ndarray, lead_steps: int) -> np.ndarray:
    """Backward displacements ``(lead_steps, 2, rows, cols)`` of pysteps' semi-Lagrangian
    scheme (midpoint rule along the trajectories of the steady ``velocity``) for leads
    ``1..lead_steps``; ``[k, 0]`` along the columns and ``[k, 1]`` along the rows."""
    _, extrapolation_method = _import_pysteps()
    extrapolate = extrapolation_method("semilagrangian")
    out, disp = [], None
    for _ in range(lead_steps):  # one step at a time, continuing the previous trajectory
        _, disp = extrapolate(None, velocity, 1, return_displacement=True,
                              displacement_prev=disp)
        out.append(disp.copy())
    return np.stack(out)


def advect(fields: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """``fields`` ``(F, rows, cols)`` at every lead of ``disp`` -> ``(lead, F, rows, cols)``.

    The interpolation step of pysteps' semi-Lagrangian extrapolation
    (``pysteps.extrapolation.semilagrangian.extrapolate`` with its defaults: bilinear,
    ``mode="constant"``, ``outval=nan``), applied to every field with displacements computed
    once (:func:`displacements`), so the trajectories are integrated once per initial time,
    not once per variable and level. Points whose departure point lies outside the domain, or
    next to a NaN, are NaN."""
    from scipy.ndimage import map_coordinates

    rows, cols = fields.shape[-2:]
    yy, xx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    out = np.empty((disp.shape[0],) + fields.shape, dtype=fields.dtype)
    for k in range(disp.shape[0]):
        coords = [yy + disp[k, 1], xx + disp[k, 0]]
        for f in range(fields.shape[0]):
            out[k, f] = map_coordinates(fields[f], coords, mode="constant", cval=np.nan,
                                        order=1, prefilter=False)
    return out


def _motion_frames(store, init: np.ndarray) -> list[np.ndarray]:
    """Store time indices of the motion history of each init: i-2..i, only steps that exist
    and lie a whole number of store timesteps behind i (a store with a hole in time must not
    mistake a 2-step motion for a 1-step one)."""
    times = store.times
    step = np.timedelta64(store.timestep)
    out = []
    for i in init:
        idx = [j for j in range(i - MOTION_FRAMES + 1, i + 1) if j >= 0]
        ok = [j for j in idx if (times[i] - times[j]) == (i - j) * step]
        # keep the unbroken run that ends at i
        run = []
        for j in reversed(ok):
            if run and run[-1] - j != 1:
                break
            run.append(j)
        out.append(np.asarray(sorted(run), dtype=int))
    return out


def extrapolation(store, init_indices: Sequence[int], lead_steps: int, *,
                  motion_var: str | None = None) -> xr.Dataset:
    """Optical-flow extrapolation nowcast (pysteps), laid out like
    :func:`geoft.baselines.persistence`: dims ``(init_time, lead, [level,] *grid dims)``,
    physical units, NaN where not available.

    Method. For each initial time (store index ``i``) one motion field is estimated from the
    fields of ``motion_var`` (default :func:`motion_variable`: ``refc``, else the first surface
    variable) at store times ``i-2, i-1, i`` (``i-1, i`` when only those exist) with pysteps'
    dense Lucas-Kanade method (``pysteps.motion.get_method("LK")``: Shi-Tomasi corners tracked
    by OpenCV's pyramidal Lucas-Kanade between consecutive fields, vectors of both pairs pooled,
    outliers removed, interpolated to every pixel), in pixels per store timestep. Every variable
    (each level of level variables) is then advected along that one steady motion field by
    pysteps' semi-Lagrangian backward scheme (``pysteps.extrapolation.get_method(
    "semilagrangian")``) for leads ``1..lead_steps``. Motion and advection work on the same
    arrays, ``[row, col]`` as stored (north-first rows): ``V[0]`` moves along columns and
    ``V[1]`` along rows, whatever the geographic direction.

    Reflectivity. dBZ is handed to Lucas-Kanade clipped from below at :data:`DBZ_THRESHOLD`
    (7 dBZ, 0.1 mm/h Marshall-Palmer), see :func:`motion_input`; the advected ``refc`` itself is
    the unclipped dBZ field.

    NaN. Points that are invalid (the store's ``valid`` mask) or missing (gaps) at the initial
    time are set to NaN before the advection, so nothing is advected out of them (the fill
    values of the store are never moved into valid data). Points advected in from outside the
    domain (the inflow edge) are NaN, as pysteps leaves them: never zero-filled, because NaN is
    "not available" and is not scored, while a zero would be scored as a forecast of no echo
    (or 0 K). Bilinear interpolation also makes a point NaN when its departure point lies
    within one pixel of a NaN. The store's validity mask is applied to the result as
    persistence does.

    Fallbacks (each said once in a warning): an initial time without a previous step (store
    index 0, or a hole in time before it) gets persistence; so does one where no motion could
    be tracked (a zero motion field), whose extrapolation would be persistence anyway.
    """
    from geoft.baselines import _finish, _present_at
    from geoft.errors import GeoftError

    init = np.asarray(init_indices, dtype=int)
    lead_steps = int(lead_steps)
    mvar = motion_var or motion_variable(store)
    if mvar not in store.variables:
        raise GeoftError(f"motion variable {mvar!r} is not in the store (has "
                         f"{list(store.variables)})", where="evaluate.baselines.extrapolation",
                         fix="track a variable the store has")
    init_da = xr.DataArray(init, dims="init_time")

    # the state at the initial times, NaN where not available (static mask and gaps)
    nows: dict[str, xr.DataArray] = {}
    fields: dict[str, np.ndarray] = {}
    for v in store.variables:
        now = _present_at(store, v, store.ds[v].isel(time=init_da).load(), init_da)
        nows[v] = now
        fields[v] = np.where(store.valid(v), now.values, np.nan).astype(now.dtype)

    # the motion history, read once for all initial times
    history = _motion_frames(store, init)
    needed = np.unique(np.concatenate([h for h in history] + [np.zeros(0, int)]))
    frames: dict[int, np.ndarray] = {}
    if needed.size:
        raw = np.asarray(store.ds[mvar].isel(time=needed).values)
        ok = store.valid_at(mvar, needed)
        raw = np.where(ok, raw, np.nan)
        if mvar in store.level_vars:
            raw = raw[:, 0]
        frames = {int(j): raw[n] for n, j in enumerate(needed)}

    out = {v: np.empty((len(init), lead_steps) + fields[v].shape[1:], dtype=fields[v].dtype)
           for v in store.variables}
    no_history, no_motion = [], []
    for k, i in enumerate(init):
        stack = [frames[j] for j in history[k] if np.isfinite(frames[j]).any()]
        velocity = None
        if len(stack) >= 2:
            velocity = estimate_motion(motion_input(np.stack(stack), mvar))
            if not np.any(velocity):
                no_motion.append(i)
                velocity = None
        else:
            no_history.append(i)
        if velocity is None:  # persistence
            for v in store.variables:
                out[v][k] = nows[v].values[k][None]
            continue
        disp = displacements(velocity, lead_steps)
        grid_shape = fields[store.variables[0]].shape[-2:]
        sizes = [int(np.prod(fields[v].shape[1:-2], dtype=int)) for v in store.variables]
        stack_fields = np.concatenate([fields[v][k].reshape((-1,) + grid_shape)
                                       for v in store.variables])
        advected = advect(stack_fields, disp)
        start = 0
        for v, n in zip(store.variables, sizes):
            out[v][k] = advected[:, start:start + n].reshape(out[v].shape[1:])
            start += n

    for what, which in (("no earlier store time to track motion from", no_history),
                        ("no motion could be tracked", no_motion)):
        if which:
            when = ", ".join(str(store.times[i]) for i in which[:3])
            more = f" and {len(which) - 3} more" if len(which) > 3 else ""
            warnings.warn(f"extrapolation nowcast: {what} at {len(which)} initial time(s) "
                          f"({when}{more}); persistence is used there", stacklevel=2)

    data = {}
    for v in store.variables:
        template = nows[v].expand_dims(lead=lead_steps).transpose("init_time", "lead", ...)
        data[v] = template.copy(data=out[v])
    return _finish(store, data, init)
