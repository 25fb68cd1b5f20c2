"""Stage settings: every number has its range, checked when the recipe is loaded and listed by --help."""

import dataclasses
import types
import typing

import pytest

from indictune.core import recipe
from indictune.data import pipeline, stages
from indictune.data.stages.dedup import Dedup, DedupConfig


def load(*overrides: str):
    return recipe.load(pipeline.PrepareConfig, None, ["--sources", "[{path: x, format: jsonl}]", *overrides])


def _is_number(tp) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType, list):
        return any(_is_number(arg) for arg in typing.get_args(tp))
    return tp in (int, float)


def test_every_number_of_every_stage_has_a_range():
    unbounded = [
        f"{name}.{f.name}"
        for name, cls in stages.STAGES.items()
        for f in dataclasses.fields(cls.config_class)
        if _is_number(typing.get_type_hints(cls.config_class)[f.name])
        and f.metadata.get("minimum") is None
        and f.metadata.get("maximum") is None
    ]
    assert not unbounded


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("dedup.num_perm", "0", "'stages.dedup.num_perm' must be at least 1"),
        ("dedup.threshold", "7", "'stages.dedup.threshold' must be at least 0 and at most 1, got 7"),
        ("dedup.bands", "0", "'stages.dedup.bands' must be at least 1"),
        ("dedup.ngram", "0", "'stages.dedup.ngram' must be at least 1"),
        ("dedup.ngram", "100000", "'stages.dedup.ngram' must be at least 1 and at most 256"),
        ("dedup.seed", "-1", "'stages.dedup.seed' must be at least 0"),
        ("quality.min_words", "-5", "'stages.quality.min_words' must be at least 0, got -5"),
        ("quality.max_duplicate_line_fraction", "1.5", "'stages.quality.max_duplicate_line_fraction' must be"),
        ("identify.min_lang_score", "2", "'stages.identify.min_lang_score' must be"),
        ("ocr.min_mean_confidence", "101", "'stages.ocr.min_mean_confidence' must be at least 0 and at most 100"),
        ("asr.max_no_speech_prob", "-0.1", "'stages.asr.max_no_speech_prob' must be"),
        ("asr.min_avg_logprob", "0.5", "'stages.asr.min_avg_logprob' must be at most 0"),
        ("asr.chars_per_second", "[-1, 30]", "'stages.asr.chars_per_second' must be at least 0, got -1"),
        ("pii.drop_if_more_than", "-1", "'stages.pii.drop_if_more_than' must be at least 0"),
        ("repeated_lines.min_documents", "1", "'stages.repeated_lines.min_documents' must be at least 2"),
        ("decontaminate.ngram", "0", "'stages.decontaminate.ngram' must be at least 1"),
        ("decontaminate.min_words", "0", "'stages.decontaminate.min_words' must be at least 1"),
        # rules across fields, from the configs' __post_init__
        ("dedup.num_perm", "100", "stages.dedup: num_perm (100) must be a multiple of bands (14)"),
        ("asr.chars_per_second", "[30, 1]", "stages.asr: chars_per_second must be [min, max] with min <= max"),
        ("asr.chars_per_second", "[5]", "stages.asr: chars_per_second must be [min, max]"),
        ("repeated_lines.kinds", "[web, pdf]", "'stages.repeated_lines.kinds.1' must be one of 'web', 'ocr', 'asr'"),
    ],
)
def test_a_stage_setting_out_of_its_range_is_refused_when_the_recipe_is_loaded(key, value, message):
    with pytest.raises(recipe.RecipeError, match="^recipe: ") as caught:
        load(f"--stages.{key}", value)
    assert message in str(caught.value)


def test_help_lists_the_ranges():
    lines = recipe.describe(pipeline.PrepareConfig)
    assert any(
        line.startswith("  --stages.dedup.num_perm (default: 112)") and "(minimum 1, maximum 1024)" in line
        for line in lines
    )
    assert any(
        line.startswith("  --stages.quality.min_script_fraction") and "(minimum 0, maximum 1)" in line for line in lines
    )


def test_settings_made_in_code_are_checked_too():
    with pytest.raises(ValueError, match="'num_perm' must be at least 1"):
        Dedup(DedupConfig(num_perm=0, bands=1))
    with pytest.raises(ValueError, match="'bands' must be at least 1"):
        DedupConfig(bands=0)


def _doc(i: int, words: list[str]) -> dict:
    return {"id": f"d#{i}", "text": " ".join(words), "lang": "hi", "source": "s", "kind": "web", "meta": {}}


def test_shingles_longer_than_the_documents():
    assert load("--stages.dedup.ngram", "100").stages.dedup.ngram == 100
    letters = "कखगघचछजझटठडढतथदधनपफबभमयरलवसह"
    vocabulary = [a + b for a in letters for b in letters][:400]  # 400 different words (digits would fold to 0)
    short = vocabulary[:70]  # shorter than a shingle: the whole document is one
    other_short = vocabulary[70:140]
    long = vocabulary[140:400]
    docs = [_doc(i, words) for i, words in enumerate([short, other_short, short, long, long[:-1] + ["अलग"], ["एक"]])]
    stage = Dedup(DedupConfig(ngram=100, exact=False))
    for d in docs:
        stage.observe(d)
    stage.finish_observing()
    reasons = [stage.process(d) for d in docs]
    assert reasons == [None, None, "near_duplicate", None, "near_duplicate", None]
    assert docs[2]["duplicate_of"] == "d#0" and docs[4]["duplicate_of"] == "d#3"
