"""Recipes: strict validation with file:line errors, plugin schemas, overrides, resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geoft.errors import PluginError, RecipeError
from geoft.recipe import json_schema, load_recipe, parse_overrides

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "ocean-demo.yaml"


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(recipe):
    loaded = load_recipe(recipe)
    assert loaded.recipe.name and len(loaded.hash) == 16


def _with(tmp_path, old, new):
    text = DEMO.read_text()
    assert old in text
    path = tmp_path / "r.yaml"
    path.write_text(text.replace(old, new, 1))
    line = text[: text.index(old)].count("\n") + 1
    return path, line


def test_typo_in_train_names_file_line_key_and_allowed(tmp_path):
    path, line = _with(tmp_path, "  lr: 2.0e-3", "  learning_rte: 2.0e-3")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert f"{path}:{line}" in msg and "train.learning_rte: unknown key" in msg
    assert "allowed keys here:" in msg and " lr," in msg


def test_typo_in_plugin_source_options(tmp_path):
    path, line = _with(tmp_path, "    days: 540", "    dayz: 540")
    with pytest.raises(RecipeError, match=rf":{line}: source\.options\.dayz: unknown key.*days"):
        load_recipe(path)


def test_typo_in_nested_model_options(tmp_path):
    path, line = _with(tmp_path, "    lora: {engine: none}", "    lora: {engnie: none}")
    with pytest.raises(RecipeError, match=rf":{line}: model\.options\.lora\.engnie: unknown key"):
        load_recipe(path)


def test_bad_value_and_missing_key(tmp_path):
    path, line = _with(tmp_path, "  loss: mae", "  loss: huber")
    with pytest.raises(RecipeError, match=rf":{line}: train\.loss: .*'huber'"):
        load_recipe(path)
    path, _ = _with(tmp_path, "name: ocean-demo\n", "")
    with pytest.raises(RecipeError, match="name: required key missing"):
        load_recipe(path)


def test_overlapping_splits_and_unknown_source(tmp_path):
    path, _ = _with(tmp_path, "    val: [2015-03-01, 2015-04-15]", "    val: [2015-02-01, 2015-04-15]")
    with pytest.raises(RecipeError, match="overlap"):
        load_recipe(path)
    path, _ = _with(tmp_path, "  name: synthetic-ocean", "  name: synthetic-oceans")
    with pytest.raises(PluginError, match="unknown source 'synthetic-oceans'.*synthetic-ocean"):
        load_recipe(path)


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nworkdir: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_recipe(path)


def test_overrides_and_resolved_defaults():
    loaded = load_recipe(DEMO, overrides=parse_overrides(["train.lr=1e-4", "workdir=/tmp/x"]))
    assert loaded.parts["train"].lr == pytest.approx(1e-4)
    assert str(loaded.recipe.workdir) == "/tmp/x"
    resolved = loaded.resolved
    # defaults filled in from every schema, plugin ones included
    assert resolved["train"]["rollout_steps"] == 1
    assert resolved["model"]["options"]["lora"]["engine"] == "none"
    assert resolved["data"]["options"]["depths"] is None
    assert resolved["source"]["options"]["resolution"] == pytest.approx(1 / 12)
    assert load_recipe(DEMO).hash != loaded.hash
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_overrides(["train.lr"])


def test_schema_includes_plugin_sections():
    schema = json_schema()
    assert schema["additionalProperties"] is False
    plugin = schema["x-geoft-plugin-schemas"]
    assert "source:synthetic-ocean:Options" in plugin and "source:copernicus:Options" in plugin
    assert "model:aurora:TrainConfig" in plugin
    json.dumps(schema)
    # every default is shown, also those made by factories (lists, nested option models)
    ocean = plugin["dataset:ocean:Options"]["properties"]
    assert ocean["surface_variables"]["default"] == ["zos"]
    masks = plugin["reconstructor:diffusion-densify:Config"]["properties"]["masks"]["default"]
    assert masks[0]["kind"] == "clouds"
    aurora = plugin["model:aurora:Options"]["properties"]
    assert aurora["weights"]["default"] == {"kind": "random"}
    assert aurora["lora"]["default"]["engine"] == "none"


def test_non_mapping_recipe_and_unknown_metric(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="must be a mapping of sections, not a list"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"evaluate\.metrics\[1\]: unknown metric 'rmsee'"):
        load_recipe(DEMO, overrides=parse_overrides(["evaluate.metrics=[rmse, rmsee]"]))


def test_plugin_model_and_reconstructor_schemas_validate_their_sections(thirdparty_plugin):
    loaded = load_recipe(DEMO, overrides=parse_overrides([
        "model.name=mean-model", "model.options={value: 3}", "train={value: 4}",
        "densify={method: mean-fill, value: 2}"]))
    assert type(loaded.parts["train"]).__name__ == "Options" and loaded.parts["train"].value == 4
    assert loaded.parts["model"].value == 3 and loaded.parts["densify"].value == 2
    with pytest.raises(RecipeError, match=r"densify\.valeu: unknown key"):
        load_recipe(DEMO, overrides=parse_overrides(["model.name=mean-model", "train={}", "model.options={}",
                                                     "densify={method: mean-fill, valeu: 2}"]))


def test_aurora_checks_are_reported_at_the_recipe_line(tmp_path):
    """Model constraints live in the model: Aurora's need for a level variable, its patch size
    and its constructor arguments are reported by recipe validation with the recipe's line."""
    path, line = _with(tmp_path, "    level_variables: [thetao, so, uo, vo]",
                       "    level_variables: []")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert "data.options: Aurora needs at least one level variable" in msg
    assert f"{path}:" in msg
    path, line = _with(tmp_path, "  patch_size: 4\n  split:", "  patch_size: 6\n  split:")
    with pytest.raises(RecipeError, match=rf"{path}:{line}: data.patch_size: 6 is not a multiple "
                                          r"of the model's patch size 4"):
        load_recipe(path)
    path, line = _with(tmp_path, "    weights: {kind: random}",
                       "    weights: {kind: random}\n    kwargs: {lora_rank: 4}")
    with pytest.raises(RecipeError, match=r"model.options.kwargs: .*no constructor argument "
                                          r"'lora_rank'"):
        load_recipe(path)


def test_recipe_without_a_model_validates_and_needs_none_for_densify(tmp_path):
    """No default model: a densify-only recipe has no model section; a train section without a
    model is an error at its line."""
    import yaml

    data = yaml.safe_load((REPO / "recipes" / "ocean-densify-demo.yaml").read_text())
    assert "model" not in data
    loaded = load_recipe(data=data)
    assert loaded.recipe.model is None and "model" not in loaded.parts
    data["train"] = {"steps": 3}
    with pytest.raises(RecipeError, match="a train section needs a model section"):
        load_recipe(data=data)
