"""Recipe schema pieces shared by ``densify`` and ``assimilate`` (import-light: pydantic only):
the UNet size, observation masks, observation files, and the training settings both diffusion
models train with through the one training engine (:func:`engine_config`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from geoft.schema import Strict


class UNetOptions(Strict):
    """Size of the diffusers ``UNet2DModel``: one resolution level per entry of
    ``block_out_channels`` (the field is padded to a multiple of ``2**(levels-1)``)."""

    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64], min_length=1)
    layers_per_block: int = Field(1, ge=1)
    attention: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


def _as_range(v: float | tuple[float, float] | list[float]) -> tuple[float, float]:
    """A value or a ``[low, high]`` pair as ``(low, high)`` floats."""
    return (float(v), float(v)) if isinstance(v, (int, float)) else (float(v[0]), float(v[1]))


class ObservingOptions(Strict):
    """How a simulated observing system sees the grid (the one generator in
    :mod:`geoft.diffusion.masks`, shared by densify and assimilate): ``days``, the window
    ``tracks`` and ``argo`` observe (a value or a ``[low, high]`` range drawn per training
    pair; instead of an occlusion/fraction: the real systems' coverage over that time);
    ``missions``: the altimeters of ``tracks`` (default jason-3, sentinel-3a, sentinel-3b;
    ``swot`` for its wide swaths); ``footprint_km``: a nadir altimeter's footprint;
    ``cloud_km``: the size of cloud blobs; ``argo_density``: Argo profiles per 10^6 km2 of
    ocean and day (about 1 for the real array)."""

    days: float | tuple[float, float] | None = None
    missions: list[str] | None = None
    footprint_km: float = Field(7.0, gt=0)
    cloud_km: float = Field(50.0, gt=0)
    argo_density: float = Field(1.0, gt=0)

    @field_validator("days")
    @classmethod
    def _check_days(cls, v):
        if v is not None:
            low, high = _as_range(v)
            if not 0.0 <= low <= high:
                raise ValueError("days must satisfy 0 <= low <= high")
        return v

    @field_validator("missions")
    @classmethod
    def _check_missions(cls, v):
        from geoft.diffusion.masks import MISSIONS

        unknown = [m for m in v or [] if m not in MISSIONS]
        if unknown:
            raise ValueError(f"unknown mission(s) {unknown}; choose from {sorted(MISSIONS)}")
        return v

    @property
    def days_range(self) -> tuple[float, float] | None:
        return None if self.days is None else _as_range(self.days)

    def observing(self) -> dict:
        """The generator options of :func:`geoft.diffusion.masks.observation_mask`."""
        return {"missions": self.missions, "footprint_km": self.footprint_km,
                "cloud_km": self.cloud_km, "argo_density": self.argo_density}


DEFAULT_OCCLUSION = (0.5, 0.95)
DEFAULT_ARGO_DAYS = (1.0, 30.0)


class MaskOptions(ObservingOptions):
    """One way of observing for training pairs (and the OSSE): ``kind`` (pixels, tracks,
    clouds, argo), ``occlusion`` = share of pixels hidden, a value or a ``[low, high]`` range
    drawn uniformly per training pair (default [0.5, 0.95]), or for ``tracks`` and ``argo``
    a window of ``days`` (argo's default, [1, 30] days at the real array's density);
    ``channels``: indices into ``variables`` this kind observes (default all);
    ``eval_occlusion`` / ``eval_days``: the OSSE test masks' (default the middle of the
    range). ``noise``: the observation error of this kind, in standard deviations of each
    variable (z-units), a value or a ``[low, high]`` range drawn per training pair; densify
    adds it to the training observations and conditions on it (0: exact observations).
    See :class:`ObservingOptions` for missions, footprints, cloud sizes and Argo density."""

    kind: Literal["pixels", "tracks", "clouds", "argo"]
    occlusion: float | tuple[float, float] | None = None
    channels: list[int] | None = None
    eval_occlusion: float | None = None
    eval_days: float | None = Field(None, ge=0.0)
    noise: float | tuple[float, float] = 0.0

    @field_validator("occlusion")
    @classmethod
    def _check_occlusion(cls, v):
        if v is None:
            return v
        low, high = _as_range(v)
        if not (0.0 <= low <= high < 1.0):
            raise ValueError("occlusion must satisfy 0 <= low <= high < 1")
        return v

    @field_validator("noise")
    @classmethod
    def _check_noise(cls, v):
        low, high = _as_range(v)
        if not (0.0 <= low <= high):
            raise ValueError("noise must satisfy 0 <= low <= high (standard deviations)")
        return v

    @model_validator(mode="after")
    def _window(self):
        if self.days is not None and self.kind not in ("tracks", "argo"):
            raise ValueError(f"days is a window of tracks or argo, not of {self.kind}: give "
                             "an occlusion")
        if self.days is not None and self.occlusion is not None:
            raise ValueError("give occlusion or days, not both")
        if self.eval_days is not None and self.days_range is None:
            raise ValueError("eval_days needs days (a window) on this mask")
        if self.kind == "argo" and self.occlusion is None and self.days is None:
            self.days = DEFAULT_ARGO_DAYS
        return self

    @property
    def noise_range(self) -> tuple[float, float]:
        return _as_range(self.noise)

    @field_validator("eval_occlusion")
    @classmethod
    def _check_eval(cls, v):
        if v is not None and not 0.0 <= v < 1.0:
            raise ValueError("eval_occlusion must lie in [0, 1)")
        return v

    @property
    def occlusion_range(self) -> tuple[float, float]:
        return DEFAULT_OCCLUSION if self.occlusion is None else _as_range(self.occlusion)

    @property
    def test_occlusion(self) -> float | None:
        """The OSSE occlusion (None when this kind observes a window of days)."""
        if self.days is not None:
            return None
        if self.eval_occlusion is not None:
            return float(self.eval_occlusion)
        low, high = self.occlusion_range
        return 0.5 * (low + high)

    @property
    def test_days(self) -> float | None:
        """The OSSE window in days (None when this kind observes an occlusion)."""
        if self.days is None:
            return None
        if self.eval_days is not None:
            return float(self.eval_days)
        low, high = self.days_range
        return 0.5 * (low + high)

    def describe_test(self) -> dict:
        """What the OSSE test masks are, for reports."""
        if self.days is not None:
            return {"kind": self.kind, "days": self.test_days}
        return {"kind": self.kind, "occlusion": self.test_occlusion}


class TableObservations(Strict):
    """Observation-file mode.

    ``table``: CSV/parquet with columns time, lat, lon, variable, [level,] value, error in
    physical units, or a netCDF file of points, along-track samples or profiles (Argo,
    Copernicus Marine in-situ and along-track files; see obs.read_netcdf_observations), whose
    variable names ``variables`` maps to geoft's (``{TEMP: thetao}``) and whose errors come
    from its ``*_ERROR`` variables or ``errors`` (``{thetao: 0.02}``, physical units).
    ``times``: the analysis times (default: the store's times with observations within
    ``time_window``, else the observation times rounded to ``time_window``); each analysis uses
    the observations within ``time_window`` of its time.
    ``interpolation``: assimilate's observation operator, ``bilinear`` (four pixels, two
    levels) or ``nearest``; densify always grids observations onto their nearest pixel.
    ``superobs``: average the observations that share a pixel into one (densify always
    does); ``superob_error``: ``correlated`` (their rms error: a dense profile weighs as much
    as one observation) or ``independent`` (``sqrt(sum sigma^2) / n``).
    """

    table: str
    times: list[str] | None = None
    time_window: str = "12h"
    variables: dict[str, str] | None = None
    errors: dict[str, float] | None = None
    interpolation: Literal["bilinear", "nearest"] = "bilinear"
    superobs: bool = True
    superob_error: Literal["correlated", "independent"] = "correlated"

    @field_validator("time_window")
    @classmethod
    def _window(cls, value: str) -> str:
        import pandas as pd

        try:
            if pd.Timedelta(value) < pd.Timedelta(0):
                raise ValueError
        except ValueError:
            raise ValueError(f"time_window {value!r} is not a non-negative duration "
                             "(e.g. '12h', '3D')") from None
        return value


class DiffusionTraining(Strict):
    """Settings every diffusion model of geoft trains with (densify's conditional model,
    assimilate's prior): the channels, the network, and the engine's optimisation settings
    (AdamW, warm-up + cosine, gradient clipping, EMA of the weights, checkpoints, the log).

    ``variables``: channels, ``"zos"`` (surface variable), ``"thetao:K"`` (level index ``K``,
    0 = top, of a level variable) or ``"thetao"`` (all levels); required, no default.
    """

    variables: list[str] = Field(min_length=1)
    latlon: bool = True  # lat/lon feature channels as conditioning
    model: UNetOptions = Field(default_factory=UNetOptions)
    # what the network predicts: "v" (velocity; bounded x0 estimates at every noise level) or
    # plain "epsilon"; samplers always receive epsilon (see unet.eps_from_v)
    parameterization: Literal["v", "epsilon"] = "v"
    # bf16: the network's forward pass under torch.autocast (bfloat16 matmuls/convolutions,
    # no loss scaling needed); the loss, the optimiser and the weights stay float32
    precision: Literal["fp32", "bf16"] = "fp32"
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    ema_decay: float = Field(0.999, gt=0, le=1)
    checkpoint_every: int = Field(250, ge=1)
    log_every: int = Field(25, ge=1)
    # read the loss from the device every that many steps (None: every step on the CPU,
    # every `log_every` steps on a GPU, so the host never waits for the device mid-window)
    sync_every: int | None = Field(None, ge=1)
    cache: bool = True  # keep read samples in memory (only if the selection fits 2 GiB)
    # DataLoader processes that read samples and draw their observation masks (and the linear
    # first guess) ahead of the training step; None: 0 on the CPU (the cores train), 4 on a GPU.
    # Each keeps its own sample cache.
    num_workers: int | None = Field(None, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU "
                                    "(1 is fastest for small models on a busy 2-core machine)")


def engine_config(cfg: DiffusionTraining):
    """The training engine's :class:`~geoft.training.config.TrainConfig` for a diffusion
    section: no validation split (the score is the reconstruction's evaluation), the two
    newest checkpoints kept, ``num_workers`` loader processes (default: 0 on the CPU, 4 on a
    GPU)."""
    from geoft.training.config import TrainConfig
    from geoft.training.engine import resolve_device

    cuda = resolve_device(cfg.device).type == "cuda"
    workers = cfg.num_workers
    if workers is None:
        workers = 4 if cuda else 0

    return TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                       weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                       grad_clip=cfg.grad_clip or None, ema_decay=cfg.ema_decay,
                       checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                       sync_every=cfg.sync_every or (cfg.log_every if cuda else 1),
                       keep_checkpoints=2, num_workers=workers, seed=cfg.seed,
                       device=cfg.device,
                       cpu_threads=cfg.cpu_threads, val_every=10**9)
