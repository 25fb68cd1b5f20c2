"""Every recipe that ships parses; unknown keys fail with the key, the place and the closest valid key."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from indictune.core import recipe
from indictune.data import pipeline
from indictune.eval.suite import EvalConfig
from indictune.training import config as training_config
from indictune.training.tokenizer.build import TokenizerConfig

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_data_recipes_parse(path):
    config = recipe.load(pipeline.PrepareConfig, path)
    assert config.sources


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "tokenizer").glob("*.yaml")), ids=lambda p: p.name)
def test_tokenizer_recipes_parse(path):
    assert recipe.load(TokenizerConfig, path).train_data


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_eval_recipes_parse(path):
    assert recipe.load(EvalConfig, path, ["--model", "m"]).tasks
    with pytest.raises(recipe.RecipeError, match="missing required key.*model"):
        recipe.load(EvalConfig, path)
    with pytest.raises(recipe.RecipeError, match="not both"):
        recipe.load(EvalConfig, path, ["--model", "m", "--adapter", "a", "--base", "b"])


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "export").glob("*.yaml")), ids=lambda p: p.name)
def test_export_recipes_parse(path):
    from indictune.export.build import ExportConfig

    config = recipe.load(ExportConfig, path)
    assert config.output_dir and set(config.formats) <= {"hf", "gguf", "ollama"}


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "train").rglob("*.yaml")), ids=lambda p: p.name)
def test_training_recipes_parse(path):
    cpu = [] if torch.cuda.is_available() else ["--bf16", "false"]  # GPU recipes ask for bf16
    args, training_args, model_args = training_config.parse(["--config", str(path), *cpu])
    assert args.train_data and training_args.output_dir


def test_overrides_are_typed_and_dotted(tmp_path):
    config = recipe.load(
        pipeline.PrepareConfig,
        REPO / "recipes/data/sample.yaml",
        [
            "--output_dir",
            str(tmp_path),
            "--stages.quality.min_words",
            "5",
            "--stages.pii.enabled",
            "false",
            "--sources.0.limit=3",
        ],
    )
    assert config.output_dir == str(tmp_path)
    assert config.stages.quality.min_words == 5
    assert config.stages.pii.enabled is False
    assert config.sources[0].limit == 3
    assert config.stages.normalize.enabled is True  # untouched defaults stay


def test_a_repeated_flag_collects_a_list():
    config = recipe.load(
        EvalConfig, REPO / "recipes/eval/demo.yaml", ["--model", "m", "--adapter", "a", "--adapter", "b"]
    )
    assert config.adapter == ["a", "b"] and config.model == "m"
    with pytest.raises(recipe.RecipeError, match="'model' must be a string"):
        recipe.load(EvalConfig, REPO / "recipes/eval/demo.yaml", ["--model", "m", "--model", "n"])


def test_unknown_key_in_a_file_names_the_file_and_the_closest_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: []\nstages:\n  qualty:\n    min_words: 3\n")
    with pytest.raises(recipe.RecipeError) as err:
        recipe.load(pipeline.PrepareConfig, bad)
    assert str(bad) in str(err.value)
    assert "unknown key 'stages.qualty'" in str(err.value)
    assert "did you mean 'stages.quality'" in str(err.value)


def test_unknown_key_on_the_command_line():
    with pytest.raises(
        recipe.RecipeError,
        match=r"command line: unknown key 'stages.quality.min_word'; did you mean 'stages.quality.min_words'",
    ):
        recipe.load(pipeline.PrepareConfig, REPO / "recipes/data/sample.yaml", ["--stages.quality.min_word", "3"])


def test_bad_values_are_reported_with_their_key(tmp_path):
    with pytest.raises(recipe.RecipeError, match="'stages.quality.min_words' must be an integer, got 'many'"):
        recipe.load(pipeline.PrepareConfig, REPO / "recipes/data/sample.yaml", ["--stages.quality.min_words", "many"])
    with pytest.raises(recipe.RecipeError, match="format 'docx' is not one of"):
        recipe.load(pipeline.PrepareConfig, None, ["--sources", "[{path: x, format: docx}]"])
    with pytest.raises(recipe.RecipeError, match="missing required key"):
        recipe.load(pipeline.PrepareConfig, None, [])
    not_yaml = tmp_path / "x.yaml"
    not_yaml.write_text("sources: [unclosed\n")
    with pytest.raises(recipe.RecipeError, match="not valid YAML"):
        recipe.load(pipeline.PrepareConfig, not_yaml)


def test_yaml_is_read_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("output_dir: !!python/object/apply:os.system ['echo pwned']\nsources: []\n")
    with pytest.raises(recipe.RecipeError, match="not valid YAML"):
        recipe.load(pipeline.PrepareConfig, evil)


def test_training_recipe_unknown_key_in_file(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text("train_data: [x]\noutput_dir: out\nlearning_rat: 1.0e-4\n")
    with pytest.raises(recipe.RecipeError) as err:
        training_config.parse(["--config", str(bad)])
    message = str(err.value)
    assert str(bad) in message and "unknown key 'learning_rat'" in message and "did you mean 'learning_rate'" in message


def test_training_recipe_unknown_key_on_the_command_line(tmp_path):
    good = REPO / "recipes/train/demo/cpt-lora.yaml"
    with pytest.raises(recipe.RecipeError) as err:
        training_config.parse(["--config", str(good), "--lora_alph", "8"])
    assert "command line: unknown key 'lora_alph'; did you mean 'lora_alpha'" in str(err.value)


def test_training_recipe_keys_are_the_real_trl_names():
    args, training_args, model_args = training_config.parse(
        ["--config", str(REPO / "recipes/train/demo/cpt-lora.yaml"), "--learning_rate", "1e-4", "--lora_r", "8"]
    )
    assert training_args.learning_rate == 1e-4 and model_args.lora_r == 8
    assert model_args.lora_target_modules == ["all-linear"] or model_args.lora_target_modules == "all-linear"
    assert args.trainable_embeddings == "new_rows"
    assert training_args.trust_remote_code is False


def test_scripts_print_help_and_exit_cleanly():
    for script in ("prepare_data.py", "extend_tokenizer.py", "evaluate.py", "leaderboard.py", "export.py", "chat.py"):
        result = subprocess.run(
            [sys.executable, f"scripts/{script}", "--help"], capture_output=True, text=True, cwd=REPO
        )
        assert result.returncode == 0, result.stderr
        assert "--config" in result.stdout or "usage" in result.stdout


def test_a_script_error_is_one_clear_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/prepare_data.py", "--config", "recipes/data/sample.yaml", "--stages.qualty.x", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: command line: unknown key 'stages.qualty'")


def test_a_list_of_strings_may_be_given_comma_separated():
    from indictune.export.build import ExportConfig

    config = recipe.load(ExportConfig, None, ["--model", "m", "--output_dir", "o", "--formats", "hf,gguf"])
    assert config.formats == ["hf", "gguf"]
    with pytest.raises(recipe.RecipeError, match="ollama needs gguf"):
        recipe.load(ExportConfig, None, ["--model", "m", "--output_dir", "o", "--formats", "hf,ollama"])
