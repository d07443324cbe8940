"""Multi-scale training (``train.multiscale``, design option 4 of the HRRR guide): block means
(dBZ in linear Z), masks, area weights and lat/lon of a view by hand, and a training step on a
tiny Aurora sees exactly the cropped or coarsened batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoft.errors import GeoftError
from geoft.models.aurora import AuroraSpec
from geoft.models.multiscale import View, block_all, block_mean, longitude_block_mean
from geoft.store import PreparedStore
from geoft.testing import make_tiny_store
from geoft.training.engine import StepContext

TINY = dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
            decoder_num_heads=[2, 1], embed_dim=16, num_heads=1)


def test_block_means_masks_and_longitudes_by_hand():
    x = torch.tensor([[0.0, 10.0, 1.0, 1.0], [0.0, 10.0, 3.0, 3.0]])
    torch.testing.assert_close(block_mean(x, 2), torch.tensor([[5.0, 2.0]]))
    # dBZ: 0, 10, 0, 10 dBZ -> linear 1, 10, 1, 10 -> mean 5.5 -> 7.404 dBZ (not 5 dBZ)
    dbz = block_mean(x[:, :2].repeat(1, 1), 2, dbz=True)
    torch.testing.assert_close(dbz, torch.tensor([[10 * np.log10(5.5)]], dtype=torch.float32))
    m = torch.tensor([[True, True, True, False], [True, True, True, True]])
    assert block_all(m, 2).tolist() == [[True, False]]
    lon = torch.tensor([358.0, 0.0, 10.0, 12.0], dtype=torch.float64)  # across 0 degrees
    torch.testing.assert_close(longitude_block_mean(lon, 2),
                               torch.tensor([359.0, 11.0], dtype=torch.float64))
    lon2 = torch.tensor([[359.0, 1.0], [359.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(longitude_block_mean(lon2, 2),
                               torch.tensor([[0.5]], dtype=torch.float64))
    v = View(i0=1, j0=0, rows=1, cols=2, s=2)
    w = torch.arange(1.0, 13.0).reshape(3, 4)   # rows 1-2 of a 3 x 4 grid, blocks of 2 x 2
    # block sums 30 and 38, normalised to mean 1
    torch.testing.assert_close(v.area(w), torch.tensor([[30.0, 38.0]]) / 34.0)


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    torch.set_num_threads(1)
    path = make_tiny_store(tmp_path_factory.mktemp("ms") / "store.zarr")
    options = {"architecture": "custom", "size": TINY}
    train = {"steps": 1, "multiscale": {"crop": [8, 16], "coarsen": [1, 2]}}
    s = AuroraSpec(path, options, train)
    s.build_model(torch.device("cpu"))
    return s


def test_a_training_step_sees_the_cropped_or_coarsened_batch(spec, monkeypatch):
    ds = spec.dataset("train")
    sample = spec.collate([ds[0], ds[1]])
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, batch, steps, last):
            seen["batch"] = batch
            return self.inner(batch, steps, last)

    real_loss = spec._loss

    def spy_loss(preds, targets, present, ctx, **kw):
        seen["targets"], seen["masks"], seen["area"] = targets, kw.get("masks"), kw.get("area")
        return real_loss(preds, targets, present, ctx, **kw)

    monkeypatch.setattr(spec, "_loss", spy_loss)
    module = Spy(spec.training_module(spec._model))
    rng = np.random.default_rng(0)
    scales = set()
    a = spec.adapter
    lat, lon = a._lat, a._lon
    for step in range(8):
        ctx = StepContext(torch.device("cpu"), step, True, rng, torch.Generator())
        state = rng.bit_generator.state  # the view the loss will draw
        copy = np.random.default_rng()
        copy.bit_generator.state = state
        expected = View.draw(copy, (8, 16), [1, 2], None, a.output_shape)
        total, parts = spec.loss(module, sample, ctx)
        assert torch.isfinite(total) and parts["multiscale_coarsen"] == expected.s
        scales.add(expected.s)
        b, s = seen["batch"], expected.s
        assert tuple(b.surf_vars["zos"].shape[-2:]) == (8, 16)
        i0, j0 = expected.i0, expected.j0
        rows = slice(i0, i0 + 8 * s)
        cols = slice(j0, j0 + 16 * s)
        torch.testing.assert_close(b.metadata.lat, lat[rows].reshape(8, s).mean(-1))
        torch.testing.assert_close(b.metadata.lon, lon[cols].reshape(16, s).mean(-1))
        zos = torch.as_tensor(sample["targets"]["zos"])[..., rows, cols]
        torch.testing.assert_close(seen["targets"]["zos"],
                                   zos.reshape(2, 1, 8, s, 16, s).mean(dim=(-3, -1)))
        fine_mask = a.loss_masks()["thetao"][..., rows, cols]
        assert seen["masks"]["thetao"].tolist() == fine_mask.reshape(
            -1, 8, s, 16, s).all(-1).all(-2).tolist()
        assert seen["area"].shape == (8, 16) and float(seen["area"].mean()) == pytest.approx(1)
        total.backward()
    assert scales == {1, 2}
    # validation stays on the full grid
    ctx = StepContext(torch.device("cpu"), 0, False, rng, torch.Generator())
    spec.loss(module, sample, ctx)
    assert tuple(seen["batch"].surf_vars["zos"].shape[-2:]) == a.output_shape


def test_multiscale_views_must_fit_the_grid_and_the_patches(tmp_path):
    path = make_tiny_store(tmp_path / "store.zarr")
    options = {"architecture": "custom", "size": TINY}
    with pytest.raises(GeoftError, match="train.multiscale.crop.*patch size 4"):
        AuroraSpec(path, options, {"steps": 1, "multiscale": {"crop": [6, 16]}})
    with pytest.raises(GeoftError, match="coarsen 4 x crop \\[8, 16\\] is larger than the grid"):
        AuroraSpec(path, options, {"steps": 1, "multiscale": {"crop": [8, 16],
                                                              "coarsen": [1, 4]}})
