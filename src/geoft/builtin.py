"""geoft's own features, registered through the same hooks as any plugin (like pytest's
built-in plugins). Only lazy references here: importing this module is cheap."""

from geoft import Ref, hookimpl


@hookimpl
def geoft_sources():
    return {"local": Ref("geoft.sources:LocalFilesSource",
                         summary="netCDF/zarr files already on disk (globs), opened lazily")}


@hookimpl
def geoft_datasets():
    return {"canonical": Ref("geoft.sources:CanonicalDataset",
                             summary="data already in (time, [level,] lat, lon) layout")}


@hookimpl
def geoft_models():
    return {"aurora": Ref("geoft.adapters:AURORA",
                          summary="Microsoft Aurora (any size/class), full or LoRA fine-tuning"),
            "mlp": Ref("geoft.adapters:MLP",
                       summary="multilayer perceptron for prepared tables (features -> targets)")}


@hookimpl
def geoft_metrics():
    names = {"rmse": "latitude-weighted RMSE (WeatherBench 2)",
             "mse": "latitude-weighted mean squared error",
             "mae": "latitude-weighted mean absolute error",
             "bias": "latitude-weighted mean error (forecast - truth)",
             "acc": "anomaly correlation against the train day-of-year climatology",
             "crps": "fair CRPS of an ensemble (member dim)",
             "spread-skill": "ensemble spread / RMSE of the ensemble mean, corrected for size"}
    funcs = {"crps": "crps_ensemble", "spread-skill": "spread_skill"}
    return {n: Ref(f"geoft.metrics:{funcs.get(n, n)}", summary=s) for n, s in names.items()}


@hookimpl
def geoft_baselines():
    return {"persistence": Ref("geoft.baselines:persistence",
                               summary="the state at the initial time, for every lead"),
            "climatology": Ref("geoft.baselines:climatology",
                               summary="day-of-year climatology of the train split"),
            "train-mean": Ref("geoft.baselines:train_mean",
                              summary="the train-split mean (per point; per target on tables)")}


@hookimpl
def geoft_reconstructors():
    return {"diffusion-densify": Ref("geoft.adapters:DENSIFY",
                                     summary="conditional pixel-space diffusion (diffusers) from sparse obs"),
            "sda": Ref("geoft.adapters:SDA",
                       summary="score-based data assimilation with an unconditional diffusion prior")}
