"""Eval tasks and metrics: every data format, prompts and targets, rejects, offline errors, McNemar,
the paired bootstrap, chrF++ and Indic-aware answer matching."""

import json
import math
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sacrebleu.metrics import CHRF

from indictune.core.recipe import build
from indictune.eval.metrics import (
    choice_correct,
    chrf_from_statistics,
    chrf_statistics,
    exact_match,
    mcnemar_p,
    mean_delta,
    normalize_answer,
    paired_bootstrap_delta,
    token_f1,
)
from indictune.eval.tasks import MissingTaskData, Task, load_task

COPA = [
    {"premise": "लड़का गिर गया।", "choice1": "वह फिसल गया।", "choice2": "वह हँसा।", "question": "cause", "label": 0},
    {"premise": "बारिश हुई।", "choice1": "सड़क गीली हो गई।", "choice2": "सूरज निकला।", "question": "effect", "label": 0},
    {
        "premise": "दरवाज़ा खुला।",
        "choice1": "किसी ने धक्का दिया।",
        "choice2": "चाय ठंडी थी।",
        "question": "cause",
        "label": 1,
    },
]


def copa_task(path, fmt="auto") -> Task:
    return build(
        Task,
        {
            "name": "copa-fixture",
            "type": "multiple_choice",
            "metric": "accuracy",
            "languages": ["hi"],
            "data": {"path": str(path), "format": fmt, "schema": "premise, choice1, choice2, question, label"},
            "prompt": "{{ premise | trim | trim('।') }} {{ lit[question] }}",
            "choices": ["{{ choice1 }}", "{{ choice2 }}"],
            "target": "{{ label }}",
            "literals": {"hi": {"cause": "क्योंकि", "effect": "इसलिए"}},
        },
        "test",
    )


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv", "tsv"])
def test_every_file_format_gives_the_same_items(tmp_path, fmt):
    path = tmp_path / f"copa.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in COPA) + "\n")
    elif fmt == "json":
        path.write_text(json.dumps(COPA, ensure_ascii=False))
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(COPA), path)
    else:
        sep = "\t" if fmt == "tsv" else ","
        lines = [sep.join(COPA[0])] + [sep.join(str(v) for v in r.values()) for r in COPA]
        path.write_text("\n".join(lines) + "\n")
    items, rejected = copa_task(path).items("hi")
    assert not rejected
    assert [i["context"] for i in items] == ["लड़का गिर गया क्योंकि", "बारिश हुई इसलिए", "दरवाज़ा खुला क्योंकि"]
    assert items[0]["choices"] == ["वह फिसल गया।", "वह हँसा।"] and [i["gold"] for i in items] == [0, 0, 1]


def test_bad_rows_are_counted_with_their_reason(tmp_path):
    path = tmp_path / "copa.jsonl"
    rows = [json.dumps(r, ensure_ascii=False) for r in COPA]
    rows += ["{not json", "[1, 2]", json.dumps({**COPA[0], "label": 5}), json.dumps({"premise": "x", "label": 0})]
    path.write_text("\n".join(rows) + "\n")
    items, rejected = copa_task(path).items("hi")
    assert len(items) == 3
    assert rejected == {"bad_json": 1, "not_an_object": 1, "target_out_of_range": 1, "missing_field": 1}

    csv_path = tmp_path / "news.csv"
    csv_path.write_text('Text,Label\nएक खबर,Sports\nText,Label\n"दो, खबर",Auto\nतीन,Auto,extra\n')
    news = build(
        Task,
        {
            "name": "news",
            "type": "multiple_choice",
            "metric": "accuracy",
            "languages": ["hi"],
            "data": {"path": str(csv_path), "columns": {"Text": "text", "Label": "labels"}},
            "prompt": "{{ text }}",
            "choices_from": "labels",
            "target": "{{ labels }}",
        },
        "test",
    )
    items, rejected = news.items("hi")
    assert rejected == {"repeated_header": 1, "wrong_column_count": 1}
    assert [i["choices"] for i in items] == [["Auto", "Sports"]] * 2 and [i["gold"] for i in items] == [1, 0]


def test_every_record_rejected_is_an_error_naming_the_template(tmp_path):
    path = tmp_path / "copa.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in COPA))
    task = copa_task(path)
    task.prompt = "{{ premis }}"
    with pytest.raises(ValueError, match="every record was rejected.*'premis' is undefined.*copa-fixture.yaml"):
        task.items("hi")


def test_shots_are_other_items_fixed_by_the_seed(tmp_path):
    path = tmp_path / "copa.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in COPA))
    task = copa_task(path)
    items, _ = task.items("hi", shots=2, limit=1)
    again, _ = task.items("hi", shots=2, limit=1)
    assert len(items) == 1 and items == again
    examples = items[0]["context"].split("\n\n")
    assert len(examples) == 3 and examples[-1] == "लड़का गिर गया क्योंकि"
    assert set(examples[:2]) == {"बारिश हुई इसलिए सड़क गीली हो गई।", "दरवाज़ा खुला क्योंकि चाय ठंडी थी।"}
    # Every item, not only the first, gets worked examples without their own examples inside them.
    for item in task.items("hi", shots=2)[0]:
        assert item["context"].count("\n\n") == 2


def test_squad_and_parallel_formats(tmp_path):
    squad = {
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": "राम दिल्ली में रहता है।",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "राम कहाँ रहता है?",
                                "answers": [{"text": "दिल्ली", "answer_start": 4}],
                            },
                            {"id": "q2", "question": "कौन?", "answers": []},
                        ],
                    }
                ],
            }
        ]
    }
    (tmp_path / "qa.hi.json").write_text(json.dumps(squad, ensure_ascii=False))
    qa = build(
        Task,
        {
            "name": "qa",
            "type": "generation",
            "metric": "squad",
            "languages": ["hi"],
            "data": {"path": str(tmp_path / "qa.{lang}.json"), "format": "squad"},
            "prompt": "{{ context }}\nQuestion: {{ question }}\nAnswer:",
            "references": "answers",
        },
        "test",
    )
    items, rejected = qa.items("hi")
    assert [i["references"] for i in items] == [["दिल्ली"]] and rejected == {"no_reference": 1}

    (tmp_path / "eng_Latn.dev").write_text("Hello.\nGood night.\n")
    (tmp_path / "hin_Deva.dev").write_text("नमस्ते।\nशुभ रात्रि।\n")
    mt = build(
        Task,
        {
            "name": "mt",
            "type": "generation",
            "metric": "chrf",
            "languages": ["hi"],
            "direction": "to_english",
            "data": {"path": str(tmp_path / "{flores}.dev"), "format": "parallel"},
            "prompt": "{{ source_language }}: {{ source }}\n{{ target_language }}:",
            "target": "{{ target }}",
        },
        "test",
    )
    items, _ = mt.items("hi")
    assert items[1] == {"id": "1", "context": "Hindi: शुभ रात्रि।\nEnglish:", "references": ["Good night."]}


def test_missing_data_offline_names_the_task_and_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("INDICTUNE_EVAL_DATA", str(tmp_path / "nowhere"))
    task = load_task("indiccopa")
    with pytest.raises(
        MissingTaskData,
        match=r"task indiccopa \(ta\): no local copy at .*nowhere/indiccopa/ta.jsonl; "
        r"online it loads ai4bharat/IndicCOPA.*indiccopa.yaml",
    ):
        task.items("ta")


def test_every_shipped_task_parses_and_its_templates_render():
    from indictune.eval.tasks import TASKS_DIR

    fields = {
        "premise": "p",
        "choice1": "a",
        "choice2": "b",
        "question": "cause",
        "label": 1,
        "review": "r",
        "hypothesis": "h",
        "context": "c",
        "option1": "1",
        "option2": "2",
        "option3": "3",
        "option4": "4",
        "target": "option4",
        "flores_passage": "f",
        "mc_answer1": "1",
        "mc_answer2": "2",
        "mc_answer3": "3",
        "mc_answer4": "4",
        "correct_answer_num": "2",
        "text": "t",
        "labels": "x",
        "source": "s",
        "source_language": "English",
        "target_language": "Hindi",
        "answers": {"text": ["x"], "answer_start": [0]},
        "answer_number": "18",
    }
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        task = load_task(str(path))
        assert task.name == path.stem and task.description and task.languages
        for lang in task.languages:
            if task.type != "language_modeling":
                item = task._item({"id": "0", **fields}, lang, ["x"] if task.choices_from else None)
                assert isinstance(item, dict), (path, lang, item)


def test_mcnemar_matches_hand_computed_exact_values():
    # b = 1 item only the base got right, c = 5 only the candidate: p = 2 * (C(6,0) + C(6,1)) / 2^6
    base = [True] * 1 + [False] * 5 + [True] * 10 + [False] * 4
    cand = [False] * 1 + [True] * 5 + [True] * 10 + [False] * 4
    assert mcnemar_p(base, cand) == pytest.approx(2 * 7 / 64)
    assert mcnemar_p(cand, base) == pytest.approx(2 * 7 / 64)
    assert mcnemar_p(base, base) == 1.0  # identical models: no evidence of a difference
    assert mcnemar_p([True] * 10, [False] * 10) == pytest.approx(2 / 1024)


def test_paired_bootstrap_intervals():
    identical = mean_delta([1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0])
    assert identical == (0.0, 0.0, 0.0)
    delta, low, high = mean_delta([0.0] * 50 + [1.0] * 50, [1.0] * 100, samples=2000)
    assert delta == pytest.approx(0.5) and 0.38 < low < 0.5 < high < 0.62  # se = 0.05
    # Paired: a constant shift on every item has no spread at all, however noisy the items are.
    rng = np.random.default_rng(1)
    base = rng.normal(10, 3, 200)
    delta, low, high = paired_bootstrap_delta(list(base), list(base - 1.0), [5] * 200)
    assert delta == pytest.approx(-1.0 / 5 / math.log(2)) and low == pytest.approx(high)


def test_byte_normalised_choice_picks_per_byte():
    # Raw scores favour the short option; per byte the long one is more likely.
    assert choice_correct([[-6.0, -9.0]], [1]) == [False]
    assert choice_correct([[-6.0, -9.0]], [1], [[3, 9]]) == [True]


def test_chrf_statistics_add_up_to_sacrebleu_and_carry_its_signature():
    predictions = ["नमस्ते दुनिया", "आज मौसम अच्छा है", "hello"]
    references = [["नमस्ते, दुनिया"], ["आज का मौसम अच्छा है"], ["hello there"]]
    stats, signature = chrf_statistics(predictions, references)
    expected = CHRF(word_order=2).corpus_score(predictions, [[r[0] for r in references]])
    assert chrf_from_statistics(np.asarray(stats).sum(0))[0] == pytest.approx(expected.score)
    assert signature.startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:")


def test_answer_matching_is_indic_aware():
    gold = "भारत की राजधानी नई दिल्ली"
    assert exact_match("भारत की राजधानी नई\u200c दिल्ली।", [gold], "hi") == 1.0  # ZWNJ and danda
    assert exact_match(unicodedata.normalize("NFD", "ज़मीन"), ["ज़मीन"], "hi") == 1.0  # NFD vs NFC
    assert exact_match("जमीन", ["ज़मीन"], "hi") == 1.0  # with and without nukta
    assert normalize_answer("The Taj Mahal!", "en") == "taj mahal"
    assert token_f1("नई दिल्ली में", [gold], "hi") == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))
    assert token_f1("कुछ और", [gold, "कुछ और"], "hi") == 1.0
    assert token_f1("", [gold], "hi") == 0.0


# ---- grade-school math (MGSM format) ------------------------------------------------------------------

# Project-written problems, one per language, in MGSM's layout: question TAB numeric answer, no header.
MGSM = {
    "hi": "राम के पास 12 आम हैं। उसने 5 आम खाए और 3 और खरीदे। अब उसके पास कितने आम हैं?\t10",
    "bn": "একটি বাক্সে ২০টি কলম আছে। ৪টি বাক্সে মোট কতটি কলম?\t80",
    "te": "ఒక పుస్తకం ధర 150 రూపాయలు. 3 పుస్తకాల ధర ఎంత?\t450",
    "ta": "ஒரு வகுப்பில் 36 மாணவர்கள் உள்ளனர். அவர்களில் பாதி பேர் பெண்கள். எத்தனை பெண்கள்?\t18",
    "en": "A farmer has 1,200 eggs and sells 350 of them. How many eggs are left?\t850",
}


def write_mgsm(folder):
    for lang, line in MGSM.items():
        (folder / "mgsm").mkdir(parents=True, exist_ok=True)
        (folder / "mgsm" / f"mgsm_{lang}.tsv").write_text(line + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("answer", "number"),
    [
        ("12 - 5 = 7, 7 + 3 = 10. उत्तर 10 है।", 10),
        ("৪ × ২০ = ৮০। উত্তর: ৮০", 80),  # Bengali digits
        ("3 × 150 = ౪౫౦", 450),  # Telugu digits
        ("36 / 2 = ௧௮.", 18),  # Tamil digits
        ("उत्तर १,२०,००० रुपये है", 120000),  # Devanagari digits, Indian grouping
        ("The answer is 1,200,000.", 1200000),
        ("It costs 2.5 dollars each, so -3.75 in all", -3.75),
        ("Half of 7 is 3.5", 3.5),
    ],
)
def test_the_final_number_is_read_in_every_script_and_grouping(answer, number):
    from indictune.eval.metrics import final_number, numeric_match

    assert final_number(answer) == number
    assert numeric_match(answer, [str(number)]) == 1.0
    assert numeric_match(answer, [str(number + 1)]) == 0.0


def test_an_answer_without_a_number_scores_zero():
    from indictune.eval.metrics import final_number, numeric_match

    assert final_number("मुझे नहीं पता") is None
    assert numeric_match("मुझे नहीं पता", ["10"]) == 0.0


def test_mgsm_files_without_a_header_become_worked_answer_items(tmp_path, monkeypatch):
    monkeypatch.setenv("INDICTUNE_EVAL_DATA", str(tmp_path))
    write_mgsm(tmp_path)
    task = load_task("mgsm")
    for lang, line in MGSM.items():
        items, rejected = task.items(lang)
        question, answer = line.split("\t")
        assert not rejected and len(items) == 1 and items[0]["references"] == [answer]
        assert items[0]["context"] == f"{task.literals[lang]['question']}: {question}\n{task.literals[lang]['answer']}:"


def test_mgsm_scores_exact_final_numbers_against_a_base(tmp_path, monkeypatch):
    from indictune.eval.suite import EvalConfig, summarize

    task = load_task("mgsm")
    config = EvalConfig(tasks=["mgsm"], model="m", output_dir=str(tmp_path), bootstrap_samples=200)
    references = [["10"], ["80"], ["450"], ["18"]]
    base = {"ids": ["0", "1", "2", "3"], "predictions": ["10", "8", "45", "18"], "references": references}
    candidate = {**base, "predictions": ["= 10", "৮০", "౪౫౦", "௧௮ பெண்கள்"]}
    (row,) = summarize(task, "hi", candidate, base, config)
    assert row["metric"] == "exact_match" and row["value"] == 100.0 and row["n"] == 4
    assert row["delta"] == pytest.approx(50.0) and row["p_value"] is not None
