"""Physics-informed loss terms (``train.physics``): each penalty is zero when its constraint
holds, equals its hand-computed value when it does not, and pulls the prediction the right way."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from geoft.errors import GeoftError
from geoft.models.aurora import AuroraAdapter, AuroraSpec, physics_penalties
from geoft.models.aurora_options import PhysicsLoss
from geoft.store import PreparedStore
from geoft.testing import make_tiny_store

TINY = dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
            decoder_num_heads=[2, 1], embed_dim=16, num_heads=1)
SURF = ("refc", "cin", "ustm", "vstm", "10u", "10v")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    path = make_tiny_store(tmp_path_factory.mktemp("phys") / "store.zarr", surface_vars=SURF,
                           level_vars=("u", "v"), levels=(850.0, 500.0, 250.0))
    adapter = AuroraAdapter(PreparedStore.open(path), {"architecture": "custom", "size": TINY})
    model = adapter.build_model()
    with torch.no_grad():
        pred = model(adapter.make_batch(np.array([3, 4])))
    return path, adapter, pred


def _with(pred, **surf):
    fields = dict(pred.surf_vars)
    fields.update({k: v[:, None] for k, v in surf.items()})
    return dataclasses.replace(pred, surf_vars=fields)


def test_sign_penalties_are_zero_when_the_constraint_holds_and_exact_when_not(setup):
    _, adapter, pred = setup
    masks = {v: torch.ones_like(m) for v, m in adapter.loss_masks().items()}
    shape = pred.surf_vars["refc"][:, 0].shape
    ok = _with(pred, refc=torch.full(shape, 3.0), cin=torch.full(shape, -20.0))
    phys = PhysicsLoss(nonnegative={"refc": 2.0}, nonpositive={"cin": 0.5})
    terms = physics_penalties(adapter, [ok], masks, phys)
    assert float(terms["phys_nonneg_refc"]) == 0 and float(terms["phys_nonpos_cin"]) == 0
    refc = torch.full(shape, 3.0)
    refc[0, 0, 0] = -4.0  # one negative reflectivity
    cin = torch.full(shape, -20.0)
    cin[1, 2, 3] = 10.0  # one positive CIN
    bad = _with(pred, refc=refc, cin=cin)
    terms = physics_penalties(adapter, [bad, bad], masks, phys)  # two roll-out steps
    std = {v: float(adapter.normalise(v, torch.ones(1, 1)) - adapter.normalise(v, torch.zeros(1, 1)))
           for v in ("refc", "cin")}
    n = refc.numel()
    assert float(terms["phys_nonneg_refc"]) == pytest.approx(2 * 2.0 * 4.0 * std["refc"] / n,
                                                             rel=1e-5)
    assert float(terms["phys_nonpos_cin"]) == pytest.approx(2 * 0.5 * 10.0 * std["cin"] / n,
                                                            rel=1e-5)
    # the gradient raises the negative reflectivity and nothing else
    x = refc.clone().requires_grad_(True)
    physics_penalties(adapter, [_with(pred, refc=x, cin=cin)], masks,
                      PhysicsLoss(nonnegative={"refc": 1.0}))["phys_nonneg_refc"].backward()
    assert x.grad[0, 0, 0] < 0 and float(x.grad.abs().sum()) == pytest.approx(
        float(-x.grad[0, 0, 0]))


def test_storm_motion_is_the_mean_wind_plus_bunkers_deviation(setup):
    _, adapter, pred = setup
    masks = adapter.loss_masks()
    shape = pred.surf_vars["ustm"][:, 0].shape
    u10, v10 = torch.full(shape, 2.0), torch.full(shape, 4.0)
    atmos = dict(pred.atmos_vars)
    atmos["u"] = torch.stack([torch.full(shape, 8.0), torch.full(shape, 14.0),
                              torch.full(shape, 40.0)], 1)[:, None]  # 250 hPa: above 6 km
    atmos["v"] = torch.stack([torch.full(shape, 4.0), torch.full(shape, 7.0),
                              torch.full(shape, 0.0)], 1)[:, None]
    base = dataclasses.replace(pred, atmos_vars=atmos)
    mean_u, mean_v = (2 + 8 + 14) / 3, (4 + 4 + 7) / 3
    right = _with(base, ustm=torch.full(shape, mean_u + 7.5), vstm=torch.full(shape, mean_v),
                  **{"10u": u10, "10v": v10})
    phys = PhysicsLoss(storm_motion=1.0)
    assert float(physics_penalties(adapter, [right], masks, phys)["phys_storm_motion"]) < 1e-6
    still = _with(base, ustm=torch.full(shape, mean_u), vstm=torch.full(shape, mean_v),
                  **{"10u": u10, "10v": v10})
    std = float(adapter.normalise("ustm", torch.ones(1, 1)) - adapter.normalise("ustm",
                                                                             torch.zeros(1, 1)))
    got = float(physics_penalties(adapter, [still], masks, phys)["phys_storm_motion"])
    assert got == pytest.approx((7.5 * std) ** 2, rel=1e-3)


def test_physics_terms_need_their_variables(setup, tmp_path):
    path, _, _ = setup
    other = make_tiny_store(tmp_path / "s.zarr")
    with pytest.raises(GeoftError, match="train.physics needs 10u, 10v, u, ustm, v, vstm"):
        AuroraSpec(other, {"architecture": "custom", "size": TINY},
                   {"steps": 1, "device": "cpu", "physics": {"storm_motion": 1.0}})
    spec = AuroraSpec(path, {"architecture": "custom", "size": TINY},
                      {"steps": 1, "device": "cpu",
                       "physics": {"nonnegative": {"refc": 1.0}, "storm_motion": 0.1}})
    assert spec.train_config.physics.storm_motion == 0.1


def test_intensity_weights_weigh_points_by_the_target(setup):
    from geoft.models.aurora import forecast_loss

    _, adapter, pred = setup
    masks = {v: torch.ones_like(m) for v, m in adapter.loss_masks().items()}
    shape = pred.surf_vars["refc"][:, 0].shape
    target = torch.zeros(shape)
    target[0, 0, :4] = 40.0  # four storm points (>= 35: weight 5), the rest clear air
    refc = torch.zeros(shape)
    refc[0, 1, 0] = 10.0  # a false echo in clear air (weight 1)
    preds = [_with(pred, refc=refc)]
    targets = {v: (target if v == "refc" else f[:, 0].detach())[:, None]
               for v, f in {**pred.surf_vars, **pred.atmos_vars}.items() if v in adapter.variables}
    std = float(adapter.normalise("refc", torch.ones(1, 1)) - adapter.normalise("refc",
                                                                              torch.zeros(1, 1)))
    _, plain = forecast_loss(adapter, preds, targets, masks)
    _, weighted = forecast_loss(adapter, preds, targets, masks,
                                intensity={"refc": [(35.0, 5.0), (20.0, 2.0)]})
    n = target.numel()
    assert float(plain["refc"]) == pytest.approx(std * (4 * 40 + 10) / n, rel=1e-4)
    # weighted mean: the storm points count 5 times, the denominator too
    assert float(weighted["refc"]) == pytest.approx(std * (5 * 4 * 40 + 10) / (n + 4 * 4),
                                                    rel=1e-4)
    assert float(weighted["zos" if "zos" in weighted else "cin"]) == pytest.approx(
        float(plain["zos" if "zos" in plain else "cin"]))
