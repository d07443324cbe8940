"""Break the science on purpose, one break at a time, and check that the suite notices.

Each entry of :data:`BREAKS` is a plausible bug (a one-line change to the source) and the test
files that must catch it. For every break the script copies the project to a temporary
directory, applies the change there (the working tree is never touched), runs those tests
against the copy and records whether they failed. A break the tests do not catch ("SURVIVED")
is a hole in the safety net; the script exits 1 when there is one.

    python tests/breaks/check_breaks.py              # every break
    python tests/breaks/check_breaks.py persistence  # the breaks whose name contains a word
    python tests/breaks/check_breaks.py --list

When a refactor moves the code a break edits, the script says so ("stale: ... not found"):
update the entry to the new code rather than deleting it. Add an entry for every new test that
guards a scientific property (docs/testing.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Break:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


BREAKS: tuple[Break, ...] = (
    Break("HRRR layers matched in file order only (HLCY 1000-0 m vs USTM 0-6000 m)",
          "plugins/geoft-hrrr/src/geoft_hrrr/fields.py",
          "return _BY_KEY.get((*code, surface, tuple(sorted(levels))))",
          "return _BY_KEY.get((*code, surface, tuple(levels)))",
          ("plugins/geoft-hrrr/tests/test_grib.py",)),
    Break("Lambert rows assumed north to south (GRIB2 scans +j from the south)",
          "plugins/geoft-hrrr/src/geoft_hrrr/grib.py",
          "return x0 + self.dx * np.arange(self.nx), y0 + self.dy * np.arange(self.ny)",
          "return x0 + self.dx * np.arange(self.nx), y0 - self.dy * np.arange(self.ny)",
          ("plugins/geoft-hrrr/tests/test_grib.py",)),
    Break("reflectivity regridded by averaging dBZ instead of linear Z",
          "plugins/geoft-hrrr/src/geoft_hrrr/dataset.py",
          "z = 10.0 ** (np.asarray(block, np.float64) / 10.0)",
          "z = np.asarray(block, np.float64)",
          ("plugins/geoft-hrrr/tests/test_hrrr_dataset.py",)),
    Break("an older run's forecast wins over a newer one for the same valid time",
          "plugins/geoft-hrrr/src/geoft_hrrr/grib.py",
          "if k not in best or r.fxx < best[k].fxx:",
          "if k not in best or r.fxx > best[k].fxx:",
          ("plugins/geoft-hrrr/tests/test_grib.py",)),
    Break("MODIS view time: UTC = local solar time + lon/15 (sign flipped)",
          "plugins/geoft-land/src/geoft_land/modis.py",
          "offset_ns = np.rint((view_h - lon / 15.0) * 3600e9).astype(\"int64\")",
          "offset_ns = np.rint((view_h + lon / 15.0) * 3600e9).astype(\"int64\")",
          ("plugins/geoft-land/tests/test_modis.py",)),
    Break("land join keeps the first pixel of a point and hour, not their mean",
          "plugins/geoft-land/src/geoft_land/join.py",
          'stats = grouped.agg(["mean", "count", "std"]).reset_index()',
          'stats = grouped.agg(["first", "count", "std"]).reset_index().rename('
          'columns={"first": "mean"})',
          ("plugins/geoft-land/tests/test_era5_join.py",)),
    Break("compare: the truth taken at the initial time, not init + lead",
          "src/geoft/compare.py",
          'valid = fc["init_time"] + fc["lead"]',
          'valid = fc["init_time"] + 0 * fc["lead"]',
          ("tests/test_compare.py",)),
    Break("conservative regridding weights cells by latitude, not by sin(latitude) (area)",
          "src/geoft/compare.py",
          "s_le = np.sin(np.deg2rad(np.clip(_edges(slat), -90, 90)))",
          "s_le = np.clip(_edges(slat), -90, 90)",
          ("tests/test_compare.py",)),
    Break("scorecard bootstrap resamples forecast and reference inits independently (unpaired)",
          "src/geoft/scorecard.py",
          "np.sqrt(r[idx].mean(axis=1))",
          "np.sqrt(r[rng.integers(0, n, size=(n_boot, n))].mean(axis=1))",
          ("tests/test_scorecard.py",)),
    Break("FSDP resume loads the model shards but not the optimizer's",
          "src/geoft/training/engine.py",
          'set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],\n'
          '                       optim_state_dict=state["optim"])',
          'set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],\n'
          '                       optim_state_dict={"state": {}, "param_groups": '
          'self.optimizer.state_dict()["param_groups"]})',
          ("tests/test_fsdp.py",)),
    Break("resolved recipes written without masking secrets",
          "src/geoft/recipe.py",
          "return yaml.safe_dump(redact(data), sort_keys=False",
          "return yaml.safe_dump(data, sort_keys=False",
          ("plugins/geoft-ocean/tests/test_copernicus.py",)),
    Break("the data doctor lets infinities through",
          "src/geoft/doctor.py",
          "        if n_inf:\n            t = first_inf_time(ds, v)",
          "        if n_inf and False:\n            t = first_inf_time(ds, v)",
          ("tests/test_prepare.py",)),
    Break("rank 0 skips the stage lock (as the other ranks do)",
          "src/geoft/io.py",
          'if int(os.environ.get("RANK", "0") or 0) != 0:',
          'if int(os.environ.get("RANK", "0") or 0) != 1:',
          ("tests/test_locks.py",)),
    Break("resume continues silently with a changed training config",
          "src/geoft/training/engine.py",
          "if changed and not _ALLOW_CHANGES:",
          "if changed and False:",
          ("tests/test_resume_policy.py",)),
    Break("monthly lake cover taken from the next calendar month",
          "plugins/geoft-land/src/geoft_land/join.py",
          'row = da.get_index("month").get_indexer(era_times[ti].month)',
          'row = da.get_index("month").get_indexer(era_times[ti].month % 12 + 1)',
          ("plugins/geoft-land/tests/test_era5_join.py",)),
    Break("a climate file on another grid matched to its nearest points (interpolated)",
          "plugins/geoft-land/src/geoft_land/era5.py",
          "if (off > 0.01).any():",
          "if (off > 500.0).any():",
          ("plugins/geoft-land/tests/test_era5_join.py",)),
    Break("training masks seeded by the sample only: the same mask every epoch",
          "src/geoft/diffusion/unet.py",
          "rng = np.random.default_rng([self.seed, 31, int(epoch), int(i)])",
          "rng = np.random.default_rng([self.seed, 31, int(i)])",
          ("tests/test_densify.py",)),
    Break("ground tracks drift east (Earth turning the wrong way)",
          "src/geoft/diffusion/masks.py",
          "- mission.earth_deg_per_day * np.asarray(t_days, np.float64)",
          "+ mission.earth_deg_per_day * np.asarray(t_days, np.float64)",
          ("tests/test_masks.py",)),
    Break("Argo density per 10^5 km2 instead of 10^6",
          "src/geoft/diffusion/masks.py",
          "mean = argo_density * geometry.areas[pool].sum() / 1e6 * float(days)",
          "mean = argo_density * geometry.areas[pool].sum() / 1e5 * float(days)",
          ("tests/test_masks.py",)),
    Break("cloud size in nominal pixels, not the grid's km",
          "src/geoft/diffusion/masks.py",
          "sigma = max(0.5, float(cloud_km) / geometry.pixel_km)",
          "sigma = max(0.5, float(cloud_km) / PIXEL_KM)",
          ("tests/test_masks.py",)),
    Break("SWOT swaths without their nadir gap",
          "src/geoft/diffusion/masks.py",
          "hits = cand[(km >= inner) & (km <= outer)]",
          "hits = cand[km <= outer]",
          ("tests/test_masks.py",)),
    Break("persistence uses the state at init-1",
          "src/geoft/baselines.py",
          'init = xr.DataArray(np.asarray(init_indices, dtype=int), dims="init_time")',
          'init = xr.DataArray(np.asarray(init_indices, dtype=int) - 1, dims="init_time")',
          ("tests/test_evaluate.py",)),
    Break("skill vs persistence with its sign flipped",
          "src/geoft/evaluate.py",
          "((model - ref) / (perfect - ref))",
          "((ref - model) / (perfect - ref))",
          ("tests/test_evaluate.py",)),
    Break("climatology baseline one day late",
          "src/geoft/baselines.py",
          "store.times[idx.values.ravel()].day_of_year.values",
          '(store.times[idx.values.ravel()] + np.timedelta64(1, "D")).day_of_year.values',
          ("tests/test_evaluate.py",)),
    Break("roll-out fine-tuning computes the loss on one step only",
          "src/geoft/models/aurora.py",
          "per_var: dict[str, torch.Tensor] = {}\n    for k, pred in enumerate(preds):",
          "per_var: dict[str, torch.Tensor] = {}\n    for k, pred in enumerate(preds[:1]):",
          ("tests/test_training.py::test_rollout_loss_and_gradients_equal_explicit_forward_calls",)),
    Break("rollout_grad: last ignored",
          "src/geoft/models/aurora.py",
          'preds = module(batch, steps, cfg.rollout_grad == "last")',
          "preds = module(batch, steps, False)",
          ("tests/test_training.py::test_rollout_loss_and_gradients_equal_explicit_forward_calls",)),
    Break("metrics.jsonl not trimmed back to the checkpoint on resume",
          "src/geoft/training/engine.py",
          "self._truncate_metrics(self.counters.step)",
          "pass",
          ("tests/test_training.py::test_exact_resume_after_kill",)),
    Break("a plugin hook that raises when called takes the command down",
          "src/geoft/plugins.py",
          "except Exception as exc:  # noqa: BLE001 - any failure inside a plugin's code\n"
          "        if os.environ.get(\"GEOFT_DEBUG\"):\n"
          "            raise",
          "except Exception as exc:  # noqa: BLE001 - any failure inside a plugin's code\n"
          "        if True:\n"
          "            raise",
          ("tests/test_plugins.py",)),
    Break("SDA variance term gamma*(sigma/mu)^2 replaced by gamma*(sigma/mu)",
          "src/geoft/diffusion/sda.py",
          "gamma * (sigma / mu) ** 2",
          "gamma * (sigma / mu)",
          ("tests/test_sda.py",)),
    Break("SDA likelihood weighted 2x",
          "src/geoft/diffusion/sda.py",
          "log_p = -0.5 * (err.square() / var).sum()",
          "log_p = -1.0 * (err.square() / var).sum()",
          ("tests/test_sda.py::test_sda_ensemble_weighs_observations_comparable_to_the_prior_spread",)),
    Break("SDA likelihood weighted 0.5x",
          "src/geoft/diffusion/sda.py",
          "log_p = -0.5 * (err.square() / var).sum()",
          "log_p = -0.25 * (err.square() / var).sum()",
          ("tests/test_sda.py::test_sda_ensemble_weighs_observations_comparable_to_the_prior_spread",)),
    Break("streamed evaluation averages RMSE instead of a root mean square",
          "src/geoft/metrics.py",
          'rmse.time_reduction = "rms"',
          'rmse.time_reduction = "mean"',
          ("tests/test_evaluate.py",)),
    Break("training loss not area-weighted",
          "src/geoft/models/aurora.py",
          "weight = None if area is None else area.to(err.dtype)",
          "weight = None",
          ("tests/test_training.py::test_rollout_loss_and_gradients_equal_explicit_forward_calls",)),
    Break("replay buffer not saved in checkpoints",
          "src/geoft/training/engine.py",
          '"spec": self.spec.state_dict() if hasattr(self.spec, "state_dict") else None,',
          '"spec": None,',
          ("tests/test_engine.py",)),
    Break("superobservation error not divided by the row count",
          "src/geoft/diffusion/obs.py",
          "else np.sqrt(var_sum) / count)",
          "else np.sqrt(var_sum))",
          ("tests/test_densify.py::test_table_observations_carry_their_superobservation_error",)),
    Break("superobservations treat a profile's rows as independent (over-weighting it)",
          "src/geoft/diffusion/obs.py",
          'sigma_bar = (np.sqrt(var_sum / count) if errors == "correlated"',
          'sigma_bar = (np.sqrt(var_sum) / count if errors == "correlated"',
          ("tests/test_densify.py::test_table_observations_carry_their_superobservation_error",
           "tests/test_obs_files.py")),
    Break("samplers impose noisy observations as if exact",
          "src/geoft/diffusion/densify.py",
          "mask = mask * (torch.as_tensor(obs_error, device=device) <= 0).to(mask.dtype)",
          "mask = mask",
          ("tests/test_densify.py::test_samplers_impose_only_exact_observations",)),
    Break("densify sampler converts v to eps with mu and sigma swapped",
          "src/geoft/diffusion/densify.py",
          "out = eps_from_v(x_t, out, abar.sqrt(), (1 - abar).sqrt())",
          "out = eps_from_v(x_t, out, (1 - abar).sqrt(), abar.sqrt())",
          ("tests/test_densify_exact.py",)),
    Break("densify sampler's noise level two DDIM steps (40 train timesteps) off",
          "src/geoft/diffusion/densify.py",
          "abar = alphas_cumprod[t]\n                out = eps_from_v",
          "abar = alphas_cumprod[max(int(t) - 40, 0)]\n                out = eps_from_v",
          ("tests/test_densify_exact.py",)),
    Break("densify residual not scaled back (first guess + residual in residual units)",
          "src/geoft/diffusion/densify.py",
          "out = (first_guess + scale * out) * keep",
          "out = (first_guess + out) * keep",
          ("tests/test_densify_exact.py",)),
    Break("deferred loss reading saves a checkpoint before reading the pending losses",
          "src/geoft/training/engine.py",
          "                    losses.extend(self.settle(window))  # never save a non-finite step\n",
          "",
          ("tests/test_engine.py::test_a_deferred_non_finite_loss_stops_before_any_checkpoint_holds_it",)),
    Break("deferred loss reading drops the losses read at a checkpoint from the metrics",
          "src/geoft/training/engine.py",
          "            window.add(values[0], dict(zip(names, values[1:-1])), n)\n            losses.append",
          "            losses.append",
          ("tests/test_engine.py::test_deferred_loss_reading_trains_the_same_and_syncs_once_per_window",)),
    Break("prior network fed t instead of the UNet timestep",
          "src/geoft/diffusion/assimilate.py",
          "out = model(torch.cat([x_t, st], dim=1), schedule.unet_timestep(t))",
          "out = model(torch.cat([x_t, st], dim=1), t)",
          ("tests/test_sda.py::test_network_path_gives_the_exact_noise_prediction",)),
    Break("prior velocity converted with mu and sigma swapped",
          "src/geoft/diffusion/assimilate.py",
          "out = eps_from_v(x_t, out, schedule.mu(t), schedule.sigma(t))",
          "out = eps_from_v(x_t, out, schedule.sigma(t), schedule.mu(t))",
          ("tests/test_sda.py::test_network_path_gives_the_exact_noise_prediction",)),
    Break("DINEOF cross-validates on fully observed points",
          "src/geoft/diffusion/baselines.py",
          "candidates = np.flatnonzero(~missing & gappy[None, :])",
          "candidates = np.flatnonzero(~missing)",
          ("tests/test_obs_baselines.py::test_dineof_cross_validates_on_observed_points_of_the_gappy_frames",)),
    Break("DINEOF cross-validates on the gaps instead of observed points",
          "src/geoft/diffusion/baselines.py",
          "candidates = np.flatnonzero(~missing & gappy[None, :])",
          "candidates = np.flatnonzero(missing & gappy[None, :])",
          ("tests/test_obs_baselines.py::test_dineof_cross_validates_on_observed_points_of_the_gappy_frames",)),
    Break("DINEOF picks max modes",
          "src/geoft/diffusion/baselines.py",
          "or err < (1.0 - min_gain) * best_err:",
          "or True:",
          ("tests/test_obs_baselines.py::test_dineof_recovers_a_low_rank_stack_with_gaps",)),
    Break("DINEOF stops each rank's iteration after one step",
          "src/geoft/diffusion/baselines.py",
          "converged = err > best_err * (1.0 - tol)",
          "converged = True",
          ("tests/test_obs_baselines.py::test_dineof_recovers_a_low_rank_stack_with_gaps",)),
    Break("OI ignores the fitted observation-error nugget",
          "src/geoft/diffusion/baselines.py",
          "system[np.diag_indices_from(system)] += nugget + 1e-10",
          "system[np.diag_indices_from(system)] += 0.0 * nugget + 1e-10",
          ("tests/test_obs_baselines.py::test_oi_with_a_fitted_covariance_comes_close_to_the_exact_oi",)),
    Break("variogram fit counts empty bins (nugget pinned at 0)",
          "src/geoft/diffusion/baselines.py",
          "finite = np.isfinite(gamma) & (np.asarray(counts) > 0)",
          "finite = np.isfinite(gamma)",
          ("tests/test_obs_baselines.py::test_oi_with_a_fitted_covariance_comes_close_to_the_exact_oi",)),
    Break("spread-skill without the sqrt((M+1)/M) ensemble-size correction",
          "src/geoft/metrics.py",
          "np.sqrt((n_members + 1) / n_members) * np.sqrt(spread_variance)",
          "np.sqrt(spread_variance)",
          ("tests/test_metrics.py",)),
    Break("positive variables normalised about their mean (Aurora's clamp cuts them at the mean)",
          "src/geoft/models/aurora.py",
          "return (0.0, float(np.sqrt(m * m + s * s)) or 1.0) if var in positive else (m, s)",
          "return (m, s)",
          ("tests/test_aurora_adapter.py",)),
    Break("modulation head replaces the state instead of scaling it",
          "src/geoft/models/aurora.py",
          "done[k] = v + (1 + out[f\"{k}_mod\"]) * last",
          "done[k] = v + out[f\"{k}_mod\"] * last",
          ("tests/test_aurora_adapter.py",)),
    Break("multi-scale blocks of reflectivity averaged in dBZ",
          "src/geoft/models/multiscale.py",
          "lin = torch.pow(10.0, x / 10.0) if dbz else x",
          "lin = x",
          ("tests/test_multiscale.py",)),
    Break("physical transform not applied before Aurora's normalisation",
          "src/geoft/models/aurora.py",
          "return transforms.apply(batch, getattr(self, \"geoft_transforms\", None))",
          "return batch",
          ("tests/test_aurora_adapter.py",)),
    Break("pooled scores averaged over batches instead of recomputed from summed statistics",
          "src/geoft/evaluate.py",
          "    table = pool_statistics(combine_batches(tables, metric_names), statistics)",
          "    table = combine_batches(tables, metric_names)",
          ("tests/test_evaluate.py",)),
    Break("FSS window sums off by one cell (summed-area table padded on the wrong side)",
          "plugins/geoft-hrrr/src/geoft_hrrr/metrics.py",
          "c = np.pad(c, [(0, 0)] * (c.ndim - 2) + [(1, 0), (1, 0)])",
          "c = np.pad(c, [(0, 0)] * (c.ndim - 2) + [(0, 1), (0, 1)])",
          ("plugins/geoft-hrrr/tests/test_convective_metrics.py",)),
    Break("ensemble metrics scored on the ensemble mean, not the members",
          "src/geoft/evaluate.py",
          "given = ens if ens is not None else fc[var].expand_dims(member=1)",
          "given = fc[var].expand_dims(member=1)",
          ("tests/test_evaluate.py",)),
)


def _copy_project(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", "runs", "data", "__pycache__", "*.egg-info",
                                    ".pytest_cache", ".helper")
    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)


def run_break(brk: Break, *, verbose: bool = False) -> tuple[str, float, str]:
    """Apply ``brk`` in a copy of the project and run its tests: ``(status, seconds, tail)``
    with status ``CAUGHT``, ``SURVIVED`` or ``stale``."""
    if not (REPO / brk.file).is_file():
        return "stale", 0.0, f"{brk.file} does not exist any more"
    source = (REPO / brk.file).read_text()
    count = source.count(brk.old)
    if count != 1:
        return "stale", 0.0, f"{brk.file}: the text to break occurs {count} times (expected 1)"
    with tempfile.TemporaryDirectory(prefix="geoft-break-") as tmp:
        copy = Path(tmp) / "project"
        _copy_project(copy)
        (copy / brk.file).write_text(source.replace(brk.old, brk.new))
        paths = [str(copy / "src")] + [str(p) for p in sorted((copy / "plugins").glob("*/src"))]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1",
               "GEOFT_NO_PROGRESS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
             *[str(copy / t) for t in brk.tests]],
            cwd=copy, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        # the copy must really be what ran: pytest reports paths inside it
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        if proc.returncode == 0:
            return "SURVIVED", seconds, tail
        if proc.returncode == 1:  # tests failed: the break was caught
            return "CAUGHT", seconds, tail
        return f"error (pytest exit {proc.returncode})", seconds, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("words", nargs="*", help="run only breaks whose name contains these")
    parser.add_argument("--list", action="store_true", help="list the breaks and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's tail")
    args = parser.parse_args(argv)
    chosen = [b for b in BREAKS
              if not args.words or any(w.lower() in b.name.lower() for w in args.words)]
    if args.list:
        for b in chosen:
            print(f"{b.name}\n    {b.file}: {b.old!r} -> {b.new!r}\n    tests: {', '.join(b.tests)}")
        return 0
    bad = 0
    for b in chosen:
        status, seconds, tail = run_break(b, verbose=args.verbose)
        print(f"{status:<9} {seconds:6.1f} s  {b.name}", flush=True)
        if status != "CAUGHT":
            bad += 1
        if args.verbose or status != "CAUGHT":
            print("    " + tail.replace("\n", "\n    "))
    print(f"{len(chosen) - bad} of {len(chosen)} breaks caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
