"""The Aurora adapter on a tiny prepared store: options, normalisation, batches, weights, LoRA.

Uses a real (tiny) Aurora: 75k parameters, ~0.1 s per forward on 16x32. No network.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import numpy as np
import pytest
import torch

import aurora
import aurora.normalisation as aurora_norm
from geoft.errors import GeoftError
from geoft.models.aurora import (
    AuroraAdapter,
    AuroraOptions,
    export_state_dict,
    trainable_state_dict,
)
from geoft.store import PreparedStore
from geoft.testing import make_tiny_store

TINY = dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
            decoder_num_heads=[2, 1], embed_dim=16, num_heads=1)


def tiny(**extra) -> dict:
    return {"architecture": "custom", "size": dict(TINY), **extra}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> PreparedStore:
    return PreparedStore.open(make_tiny_store(tmp_path_factory.mktemp("s") / "store.zarr"))


@pytest.fixture(scope="module")
def store_without_so(tmp_path_factory) -> PreparedStore:
    path = make_tiny_store(tmp_path_factory.mktemp("s2") / "store.zarr", level_vars=("thetao",))
    return PreparedStore.open(path)


# -- options ------------------------------------------------------------------------------------
def test_options_reject_unknown_kwarg_and_list_allowed():
    # the schema alone imports no Aurora; the class checks run where Aurora is used
    options = AuroraOptions(architecture="AuroraSmallPretrained", kwargs={"lora_rank": 4})
    with pytest.raises(GeoftError) as err:
        options.check_against_aurora()
    msg = str(err.value)
    assert "'lora_rank'" in msg and "model.options.kwargs" in msg
    assert "lora_mode" in msg and "max_history_size" in msg  # the allowed ones are listed
    # arguments inherited through **kw_args from Aurora are accepted
    AuroraOptions(architecture="AuroraSmallPretrained",
                  kwargs={"lora_mode": "all"}).check_against_aurora()


def test_options_reject_managed_kwarg_unknown_class_and_size_key():
    with pytest.raises(ValueError, match="timestep"):
        AuroraOptions(kwargs={"timestep": 6})
    with pytest.raises(GeoftError, match="AuroraSmallPretrained"):  # lists the valid classes
        AuroraOptions(architecture="AuroraTiny").check_against_aurora()
    with pytest.raises(ValueError, match="embed_dims"):
        AuroraOptions(architecture="custom", size={"embed_dims": 8})
    with pytest.raises(ValueError, match="peft"):
        AuroraOptions(lora={"engine": "aurora", "rank": 4})
    with pytest.raises(Exception, match="extra"):
        AuroraOptions(not_an_option=1)


# -- normalisation and batches -------------------------------------------------------------------
def test_normalisation_per_level_with_aurora_key_format_and_no_global_change(store):
    from geoft.models.aurora import normalisation_scope

    before = (dict(aurora_norm.locations), dict(aurora_norm.scales))
    adapter = AuroraAdapter(store, tiny())
    mean, std = store.stats("thetao")
    for level, m, s in zip((0.494, 9.573), mean, std):
        key = f"thetao_{aurora_norm.level_to_str(level)}"
        assert key == {0.494: "thetao_0_494", 9.573: "thetao_9_573"}[level]
        assert adapter.normalisation[key] == pytest.approx((m, s))
    zmean, zstd = store.stats("zos")
    assert adapter.normalisation["zos"][0] == pytest.approx(float(zmean))
    # building the adapter and the model and running it leave Aurora's global tables as they
    # were: the statistics are in force only inside the model's own forward
    model = adapter.build_model()
    with torch.no_grad():
        model(adapter.make_batch([3]))
    assert (dict(aurora_norm.locations), dict(aurora_norm.scales)) == before
    assert "thetao_0_494" not in aurora_norm.locations
    # inside the scope Aurora's own normaliser gives the store's standardisation
    x = torch.as_tensor(store.sample(3, ["so"])["so"])
    with normalisation_scope(adapter.normalisation):
        got = aurora_norm.normalise_atmos_var(x, "so", adapter.levels)
    smean, sstd = store.stats("so")
    want = (x - torch.as_tensor(smean)[:, None, None]) / torch.as_tensor(sstd)[:, None, None]
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)


def test_batch_shapes_orientation_and_utc_times(store):
    adapter = AuroraAdapter(store, tiny())
    idx = np.array([1, 5, 9])
    batch = adapter.make_batch(idx)
    assert batch.surf_vars["zos"].shape == (3, 2, 16, 32)
    assert batch.atmos_vars["thetao"].shape == (3, 2, 2, 16, 32)
    assert set(batch.static_vars) == {"lsm", "z"} and batch.static_vars["lsm"].shape == (16, 32)
    assert batch.metadata.atmos_levels == (0.494, 9.573)
    lat, lon = batch.metadata.lat, batch.metadata.lon
    assert bool(torch.all(lat[1:] < lat[:-1])) and float(lon.min()) >= 0 and float(lon.max()) < 360
    times = batch.metadata.time
    assert all(t.tzinfo is not None and t.utcoffset() == dt.timedelta(0) for t in times)
    assert [t.replace(tzinfo=None) for t in times] == list(store.times[idx].to_pydatetime())
    # history index 0 is t-1, index 1 is t
    raw = store.sample(np.array([4, 5]), ["so"])["so"]
    np.testing.assert_array_equal(batch.atmos_vars["so"][1].numpy(), raw)
    target = adapter.target(idx, lead=2)
    np.testing.assert_array_equal(target["zos"].numpy(), store.sample(idx + 2, ["zos"])["zos"])
    model = adapter.build_model()
    with torch.no_grad():
        pred = model(batch)
    assert pred.atmos_vars["so"].shape == (3, 1, 2, 16, 32)
    assert torch.isfinite(pred.surf_vars["zos"]).all()


def test_width_not_multiple_of_patch_size(tmp_path):
    store = PreparedStore.open(make_tiny_store(tmp_path / "s.zarr", n_lon=30, n_time=12))
    with pytest.raises(GeoftError) as err:
        AuroraAdapter(store, tiny())
    msg = str(err.value)
    assert "16x30" in msg and "patch size 4" in msg and "data.patch_size" in msg


def test_store_without_level_variables_is_rejected(tmp_path):
    store = PreparedStore.open(make_tiny_store(tmp_path / "s.zarr", level_vars=(), levels=None,
                                               n_time=12))
    with pytest.raises(GeoftError, match="at least one level variable"):
        AuroraAdapter(store, tiny())


def test_nan_input_names_variable_and_time(tmp_path):
    import zarr

    path = make_tiny_store(tmp_path / "s.zarr", n_time=12)
    zarr.open_group(str(path), mode="r+")["so"][5, 1, 3, 3] = np.nan
    adapter = AuroraAdapter(PreparedStore.open(path, validate=False), tiny())
    adapter.make_batch([3])  # windows without the NaN are fine
    with pytest.raises(GeoftError) as err:
        adapter.make_batch([3, 6])
    assert "'so'" in str(err.value) and "2020-01-07" in str(err.value)


# -- weights -------------------------------------------------------------------------------------
def test_hub_weights_offline_fails_fast_with_instructions(store, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    opts = tiny(weights={"kind": "hub", "repo": "microsoft/aurora",
                         "name": "aurora-0.25-small-pretrained.ckpt"})
    adapter = AuroraAdapter(store, opts)
    start = time.monotonic()
    with pytest.raises(GeoftError) as err:
        adapter.build_model()
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "huggingface-cli download microsoft/aurora aurora-0.25-small-pretrained.ckpt" in msg
    assert "kind: local" in msg


def test_local_checkpoint_non_strict_reports_missing_keys(store, store_without_so, tmp_path):
    donor = AuroraAdapter(store_without_so, tiny()).build_model()
    ckpt = tmp_path / "donor.ckpt"
    torch.save(donor.state_dict(), ckpt)

    adapter = AuroraAdapter(store, tiny(weights={"kind": "local", "path": str(ckpt)},
                                        zero_init_new_embeddings=True))
    model = adapter.build_model(report_path=tmp_path / "report.json")
    report = adapter.load_report
    assert report["new_variables"] == ["so"]
    assert report["missing"]["encoder.atmos_token_embeds.weights"]["examples"] == ["so"]
    assert report["missing"]["decoder.atmos_heads.so"]["count"] == 2  # weight and bias
    assert sum(g["count"] for g in report["unexpected"].values()) == 0
    assert (tmp_path / "report.json").exists()
    state = model.state_dict()
    for key in ("encoder.atmos_token_embeds.weights.thetao", "decoder.surf_heads.zos.weight"):
        torch.testing.assert_close(state[key], donor.state_dict()[key])
    assert torch.count_nonzero(state["encoder.atmos_token_embeds.weights.so"]) == 0
    assert {id(p) for p in adapter.new_parameters} == {
        id(p) for n, p in model.named_parameters()
        if n.endswith("weights.so") or n.startswith("decoder.atmos_heads.so.")}

    strict = AuroraAdapter(store, tiny(weights={"kind": "local", "path": str(ckpt)}, strict=True))
    with pytest.raises(GeoftError, match="decoder.atmos_heads.so"):
        strict.build_model()


# -- LoRA ------------------------------------------------------------------------------------------
def _backprop(adapter, model):
    pred = model(adapter.make_batch([2, 3]))
    (pred.atmos_vars["so"].mean() + pred.surf_vars["zos"].mean()).backward()


def test_aurora_lora_freeze_base_trains_only_lora_and_new_embeddings(store, store_without_so,
                                                                     tmp_path):
    ckpt = tmp_path / "donor.ckpt"
    torch.save(AuroraAdapter(store_without_so, tiny()).build_model().state_dict(), ckpt)
    adapter = AuroraAdapter(store, tiny(weights={"kind": "local", "path": str(ckpt)},
                                        lora={"engine": "aurora"}))
    model = adapter.build_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_" in n}
    assert lora and all("backbone" in n for n in lora)
    assert trainable - lora == {n for n, _ in model.named_parameters()
                                if n.endswith("weights.so") or n.startswith("decoder.atmos_heads.so.")}
    _backprop(adapter, model)
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == trainable
    # adapter.pt content, model.pt loads natively into the class with use_lora=True
    assert set(trainable_state_dict(model)) == trainable
    fresh = aurora.Aurora(**{**adapter.model_kwargs})
    fresh.load_state_dict(export_state_dict(model), strict=True)


def test_peft_lora_only_adapters_train_and_export_merges(store):
    adapter = AuroraAdapter(store, tiny(lora={"engine": "peft", "rank": 4, "alpha": 8}))
    model = adapter.build_model()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    _backprop(adapter, model)
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
    # Make the adapters non-trivial (B starts at zero), then export.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    exported = export_state_dict(model)
    assert not any("lora" in k or "base_layer" in k for k in exported)
    kwargs = {**adapter.model_kwargs, "use_lora": False}
    fresh = aurora.Aurora(**kwargs)
    fresh.load_state_dict(exported, strict=True)
    batch = adapter.make_batch([4])
    model.eval(), fresh.eval()
    from geoft.models.aurora import normalisation_scope

    with torch.no_grad():
        want = model(batch)
        with normalisation_scope(adapter.normalisation):  # the plain class: as documented
            got = fresh(batch)
    torch.testing.assert_close(got.atmos_vars["thetao"], want.atmos_vars["thetao"],
                               rtol=1e-4, atol=1e-4)
    assert not torch.allclose(fresh.state_dict()["backbone.encoder_layers.0.blocks.0.attn.qkv.weight"],
                              model.state_dict()["backbone.encoder_layers.0.blocks.0.attn.qkv.base_layer.weight"])


def test_activation_checkpointing_keeps_plain_keys(store):
    adapter = AuroraAdapter(store, tiny(activation_checkpointing=True))
    model = adapter.build_model()
    assert not any("_checkpoint_wrapped_module" in k for k in export_state_dict(model))
    _backprop(adapter, model)
    assert all(p.grad is not None for p in model.parameters())


def test_model_switches_reach_aurora(store):
    adapter = AuroraAdapter(store, tiny(level_condition=True, stabilise_level_agg=True,
                                        positive_atmos_vars=["so"], autocast=True))
    kw = adapter.model_kwargs
    assert kw["level_condition"] == (0.494, 9.573) and kw["positive_atmos_vars"] == ("so",)
    assert kw["timestep"] == dt.timedelta(hours=24) and kw["use_lora"] is False
    model = adapter.build_model()
    assert model.autocast and model.autocast_backbone
    assert next(model.parameters()).dtype == torch.float32  # autocast, not a bf16 cast
    keys = model.state_dict().keys()
    assert "encoder.atmos_token_embeds.layers.0_494.weights.thetao" in keys
    assert any("level_agg" in k and "ln_k" in k for k in keys)  # stabilise_level_agg's norms
    with torch.no_grad():
        pred = model(adapter.make_batch([3]))
    assert torch.isfinite(pred.atmos_vars["so"]).all()


def test_predict_difference_adds_the_last_input_and_keeps_the_state_dict(store):
    base_adapter = AuroraAdapter(store, AuroraOptions(**tiny()))
    diff_adapter = AuroraAdapter(store, AuroraOptions(**tiny(predict_difference=True)))
    base, diff = base_adapter.build_model(), diff_adapter.build_model()
    diff.load_state_dict(base.state_dict(), strict=True)  # same parameters, same keys
    assert type(diff).__name__ == "AuroraDifference" and isinstance(diff, aurora.Aurora)
    batch = base_adapter.make_batch([5, 6])
    with torch.inference_mode():
        out_base, out_diff = base.eval()(batch), diff.eval()(batch)
    # physical difference = last input minus its normalisation location, per level
    for var in ("thetao", "so"):
        loc = torch.tensor([base_adapter.normalisation[
            f"{var}_{aurora_norm.level_to_str(lv)}"][0] for lv in store.levels]
        ).view(1, 1, -1, 1, 1)
        expected = batch.atmos_vars[var][:, -1:] - loc
        torch.testing.assert_close(out_diff.atmos_vars[var] - out_base.atmos_vars[var], expected,
                                   rtol=1e-4, atol=1e-4)
    loc = base_adapter.normalisation["zos"][0]
    torch.testing.assert_close(out_diff.surf_vars["zos"] - out_base.surf_vars["zos"],
                               batch.surf_vars["zos"][:, -1:] - loc, rtol=1e-4, atol=1e-4)
    assert diff_adapter.model_config()["predict_difference"] is True


def test_predict_difference_from_random_weights_starts_at_persistence(store):
    adapter = AuroraAdapter(store, AuroraOptions(**tiny(predict_difference=True)))
    model = adapter.build_model().eval()
    batch = adapter.make_batch([5, 6])
    with torch.inference_mode():
        out = model(batch)
    for var in ("thetao", "so"):
        torch.testing.assert_close(out.atmos_vars[var], batch.atmos_vars[var][:, -1:],
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.surf_vars["zos"], batch.surf_vars["zos"][:, -1:],
                               rtol=1e-5, atol=1e-5)


def test_modulation_head_scales_the_last_state_through_auroras_hook(store):
    """model.options.modulation_heads (design option 3 of the HRRR guide): the decoder's second
    head NAME_mod combines as NAME + (1 + NAME_mod) * last input in normalised space; it starts
    at zero, trains, and leaves every other variable as it was."""
    plain = AuroraAdapter(store, AuroraOptions(**tiny()))
    adapter = AuroraAdapter(store, AuroraOptions(**tiny(modulation_heads=["zos", "so"])))
    model, base = adapter.build_model().eval(), plain.build_model().eval()
    names = dict(model.named_parameters())
    assert {"decoder.surf_heads.zos_mod.weight", "decoder.atmos_heads.so_mod.bias"} <= set(names)
    assert all(float(p.detach().abs().max()) == 0 for n, p in names.items() if "_mod." in n)
    state = {k: v for k, v in model.state_dict().items() if "_mod." not in k}
    base.load_state_dict(state, strict=True)  # the rest is the plain model's state dict
    batch = adapter.make_batch([5, 6])
    b = 0.25
    with torch.no_grad():
        for head in (model.decoder.surf_heads["zos"], model.decoder.surf_heads["zos_mod"]):
            head.weight.zero_()
        model.decoder.surf_heads["zos"].bias.zero_()
        model.decoder.surf_heads["zos_mod"].bias.fill_(b)
        out, ref = model(batch), base(batch)
    assert set(out.surf_vars) == {"zos"} and set(out.atmos_vars) == {"thetao", "so"}
    loc = adapter.normalisation["zos"][0]
    # normalised output (1 + b) * last -> physical loc + (1 + b) (x_last - loc)
    torch.testing.assert_close(out.surf_vars["zos"],
                               loc + (1 + b) * (batch.surf_vars["zos"][:, -1:] - loc),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.atmos_vars["thetao"], ref.atmos_vars["thetao"])  # untouched
    # so: zero modulation head -> main head + last input (the state passes unscaled)
    locs = torch.tensor([adapter.normalisation[f"so_{aurora_norm.level_to_str(lv)}"][0]
                         for lv in store.levels]).view(1, 1, -1, 1, 1)
    torch.testing.assert_close(out.atmos_vars["so"] - ref.atmos_vars["so"],
                               batch.atmos_vars["so"][:, -1:] - locs, rtol=1e-4, atol=1e-4)
    model.train()
    model(batch).surf_vars["zos"].square().mean().backward()
    assert float(model.decoder.surf_heads["zos_mod"].bias.grad.abs().sum()) > 0
    assert adapter.model_config()["kwargs"]["modulation_heads"] == ["zos", "so"]


def test_separate_perceiver_decodes_its_variables_apart(store):
    """model.options.separate_perceiver: the named level variables' levels come from Aurora's
    second Perceiver; perturbing it changes them and nothing else."""
    adapter = AuroraAdapter(store, AuroraOptions(**tiny(separate_perceiver=["so"])))
    model = adapter.build_model().eval()
    batch = adapter.make_batch([5, 6])
    with torch.no_grad():
        before = model(batch)
        for p in model.decoder.level_decoder_alternate.parameters():
            p.add_(0.1 * torch.randn_like(p))
        after = model(batch)
    assert not torch.allclose(before.atmos_vars["so"], after.atmos_vars["so"])
    torch.testing.assert_close(before.atmos_vars["thetao"], after.atmos_vars["thetao"])
    torch.testing.assert_close(before.surf_vars["zos"], after.surf_vars["zos"])


def test_modulation_and_separate_perceiver_name_store_variables(store):
    with pytest.raises(GeoftError, match=r"model.options.modulation_heads.*refc"):
        AuroraAdapter(store, AuroraOptions(**tiny(modulation_heads=["refc"])))
    with pytest.raises(GeoftError, match=r"model.options.separate_perceiver.*zos.*level"):
        AuroraAdapter(store, AuroraOptions(**tiny(separate_perceiver=["zos"])))
    with pytest.raises(ValueError, match="kwargs.modulation_heads is set by geoft"):
        AuroraOptions(**tiny(kwargs={"modulation_heads": ["zos"]}))


def test_positive_variables_are_normalised_about_zero_so_the_clamp_keeps_them(store):
    """Aurora clamps positive variables at 0 in *normalised* space (its pollutants have location
    0). With the store mean as location every value below the mean would be clamped to the mean
    (CAPE below its mean would all read as the mean): positive variables get location 0."""
    adapter = AuroraAdapter(store, AuroraOptions(**tiny(positive_atmos_vars=["so"])))
    mean, std = store.stats("so")
    for level, m, s in zip(store.levels, np.atleast_1d(mean), np.atleast_1d(std)):
        loc, scale = adapter.normalisation[f"so_{aurora_norm.level_to_str(level)}"]
        assert loc == 0.0 and scale == pytest.approx(np.hypot(m, s), rel=1e-6)
    assert adapter.normalisation["thetao_0_494"][0] != 0.0  # others keep the store mean
    model = adapter.build_model().eval()
    batch = adapter.make_batch([5, 6])
    m = torch.as_tensor(np.atleast_1d(mean), dtype=torch.float32).view(1, 1, -1, 1, 1)
    s = torch.as_tensor(np.atleast_1d(std), dtype=torch.float32).view(1, 1, -1, 1, 1)
    outs = []
    with torch.no_grad():
        for k in (1.0, 2.0):  # both below the mean, both positive (salinity ~ 34 psu)
            b = dataclasses.replace(batch, atmos_vars={**batch.atmos_vars,
                                                       "so": (m - k * s).expand_as(
                                                           batch.atmos_vars["so"]).clone()})
            outs.append(model(b).atmos_vars["so"])
    assert not torch.allclose(outs[0], outs[1])  # the model sees the difference


def test_asinh_transform_the_model_sees_and_undoes(store, tmp_path):
    """model.options.transforms: statistics of asinh(x / scale) from the train split, the model
    normalises T(x) through Aurora's _pre_norm_hook and returns physical values through its
    _post_unnorm_hook; the loss normalisation goes through T; a checkpoint keeps it."""
    from geoft.models import transforms as tf
    from geoft.models.aurora import build_from_config

    scale = 0.05
    plain = AuroraAdapter(store, AuroraOptions(**tiny()))
    adapter = AuroraAdapter(store, AuroraOptions(**tiny(
        transforms={"zos": {"kind": "asinh", "scale": scale}})))
    train = store.ds["zos"].isel(time=store.indices("train")).values.astype(np.float64)
    t = np.arcsinh(train / scale)[:, store.valid("zos")]
    loc, sc = adapter.normalisation["zos"]
    assert loc == pytest.approx(t.mean(), rel=1e-6) and sc == pytest.approx(t.std(), rel=1e-4)
    assert adapter.normalisation["thetao_0_494"] == plain.normalisation["thetao_0_494"]
    x = torch.tensor([-0.2, 0.0, 0.3])
    torch.testing.assert_close(adapter.normalise("zos", x),
                               (torch.asinh(x / scale) - loc) / sc)
    model = adapter.build_model().eval()
    base = plain.build_model().eval()
    base.load_state_dict(model.state_dict(), strict=True)  # no new weights
    batch = adapter.make_batch([5, 6])
    with torch.no_grad():
        out = model(batch)
    # = the plain model run by hand in T space: statistics of T, input T(x), output T^-1
    base.geoft_normalisation = dict(adapter.normalisation)
    in_t = dataclasses.replace(batch, surf_vars={
        "zos": tf.forward("asinh", scale, batch.surf_vars["zos"])})
    with torch.no_grad():
        by_hand = tf.inverse("asinh", scale, base(in_t).surf_vars["zos"])
    torch.testing.assert_close(out.surf_vars["zos"], by_hand, rtol=1e-5, atol=1e-7)
    assert torch.isfinite(out.surf_vars["zos"]).all()
    config = adapter.model_config()
    assert config["transforms"] == {"zos": ["asinh", scale]}
    again = build_from_config(config)
    again.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(batch).surf_vars["zos"], out.surf_vars["zos"])
    assert again.geoft_transforms == {"zos": ("asinh", scale)}


def test_transform_round_trips_and_names_store_variables(store):
    from geoft.models import transforms as tf

    x = np.array([-500.0, -1.0, 0.0, 2.0, 3000.0])
    for kind in ("asinh", "log1p"):
        got = tf.inverse(kind, 100.0, tf.forward(kind, 100.0, x))
        want = x if kind == "asinh" else np.maximum(x, 0)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
        assert float(tf.forward(kind, 100.0, torch.tensor(0.0))) == 0.0  # 0 stays 0
    np.testing.assert_allclose(tf.forward("log1p", 100.0, np.array([100.0])), [np.log(2)])
    with pytest.raises(GeoftError, match="model.options.transforms.*cape"):
        AuroraAdapter(store, AuroraOptions(**tiny(transforms={"cape": {"kind": "asinh",
                                                                       "scale": 100}})))
