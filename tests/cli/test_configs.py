"""The recipes in configs/: each parses, names only flags of its command, and flags override it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from detprune import cli
from detprune.config import load_recipe
from detprune.errors import DetpruneError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml"))
# a recipe is for 'detprune prune' unless listed here
COMMAND_OF = {"demo.yaml": "demo"}


def command_of(recipe: Path) -> str:
    return COMMAND_OF.get(recipe.name, "prune")


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


@pytest.fixture
def parser(monkeypatch) -> argparse.ArgumentParser:
    """A fresh cached parser, as ``detprune`` builds one per invocation (recipes set its defaults)."""
    monkeypatch.setattr(cli, "_PARSER", None)
    return cli.build_parser_cached()


def parse(parser: argparse.ArgumentParser, *argv: str) -> argparse.Namespace:
    return cli.parse_command_line(parser, list(argv))


def test_the_recipes_are_there():
    names = {p.name for p in RECIPES}
    assert {"demo.yaml", "yolov8n-kitti-saliency.yaml", "yolov5n-kitti-tiny-benchmark.yaml",
            "fasterrcnn-mobilenet-kitti.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_fields_are_flags_of_its_command(recipe: Path):
    fields = load_recipe(recipe)
    assert fields, f"{recipe.name} is empty"
    command = subparser(cli.build_parser(), command_of(recipe))
    actions = {a.dest: a for a in command._actions}
    assert set(fields) <= set(actions), f"unknown fields: {sorted(set(fields) - set(actions))}"
    for name, value in fields.items():
        kind = actions[name].type
        if kind in (int, float) and value is not None:
            assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{name}: {value!r} is not a number"
            assert kind is float or isinstance(value, int), f"{name}: {value!r} is not an integer"
        choices = actions[name].choices
        if choices is not None:
            assert value in choices, f"{name}: {value!r} not one of {choices}"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_into_a_valid_run(parser, recipe: Path):
    args = parse(parser, command_of(recipe), "--config", str(recipe))
    for name, value in load_recipe(recipe).items():
        assert getattr(args, name) == value
    if args.command == "prune":
        from detprune.workflow.config import pick_target as _pick_target, validate as _validate

        _pick_target(args)
        _validate(args)  # one target, values in range: the run would start


def test_a_flag_overrides_a_recipe_field(parser):
    recipe = CONFIGS / "yolov8n-kitti-saliency.yaml"
    fields = load_recipe(recipe)
    assert fields["finetune_epochs"] != 5
    args = parse(parser, "prune", "--config", str(recipe), "--finetune-epochs", "5")
    assert args.finetune_epochs == 5
    assert args.target_flops == fields["target_flops"] and args.criterion == fields["criterion"]


def test_a_flag_overrides_a_demo_recipe_field(parser):
    args = parse(parser, "demo", "--config", str(CONFIGS / "demo.yaml"), "--criteria", "saliency,random")
    assert args.criteria == "saliency,random"


def test_a_recipe_field_stands_in_for_a_required_flag_and_its_absence_is_an_error(parser, tmp_path):
    recipe = tmp_path / "no-model.yaml"
    recipe.write_text("target_flops: 0.5\n")
    with pytest.raises(SystemExit) as exc:
        parse(parser, "prune", "--config", str(recipe))
    assert exc.value.code == 2
    assert parse(parser, "prune", "--config", str(recipe), "--model", "yolov8n.yaml").model == "yolov8n.yaml"


def test_a_field_of_another_command_is_refused(parser):
    with pytest.raises(DetpruneError, match="unknown field"):
        parse(parser, "prune", "--config", str(CONFIGS / "demo.yaml"), "--model", "yolov8n.yaml")
