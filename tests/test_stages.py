"""Each data stage on project-written text."""

import unicodedata
from pathlib import Path

import pytest

from data.stages.asr import Asr, AsrConfig, collapse_loops
from data.stages.dedup import DedupConfig, ExactDedup, dedup_key
from data.stages.identify import Identify, IdentifyConfig, guess_language
from data.stages.normalize import normalize_text
from data.stages.ocr import Ocr, OcrConfig
from data.stages.pii import redact, verhoeff_valid
from data.stages.quality import Quality, QualityConfig, duplicate_ngram_fraction, symbol_ratio
from data.text import words

HELDOUT = Path(__file__).resolve().parent.parent / "data" / "sample" / "heldout"


def record(text, lang=None, kind="web", **meta):
    return {"id": "t#0", "text": text, "lang": lang, "script": None, "source": "t", "kind": kind, "meta": meta}


# normalize ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["hi", "mr", "bn", "ta", "te", "en"])
def test_normalize_is_idempotent_and_nfc(lang):
    text = (HELDOUT / f"{lang}.txt").read_text()
    once = normalize_text(text, lang)
    assert normalize_text(once, lang) == once
    assert unicodedata.is_normalized("NFC", once)


def test_normalize_keeps_meaningful_joiners_and_colons():
    # Malayalam chillu with ZWJ, Bengali ya-phala with ZWJ, a label colon, a time, a URL.
    text = "ന്‍ র‍্যাশ नाम: सीता, समय 10:30, https://example.in/a:b"
    out = normalize_text(text, None)
    assert "\u200d" in out
    assert "नाम:" in out and "10:30" in out and "https://example.in/a:b" in out


def test_normalize_turns_a_colon_inside_a_word_into_visarga_and_fixes_danda():
    assert normalize_text("दु:ख की बात | अंत", "hi") == "दुःख की बात । अंत"


def test_normalize_whitespace_controls_and_digit_policy():
    assert normalize_text("  एक\u00a0\u00a0दो\t\x07तीन  \r\n\n\n\nचार २०२४ ", "hi") == "एक दो तीन\n\nचार २०२४"
    assert normalize_text("चार २०२४", "hi", digits="ascii") == "चार 2024"


def test_nukta_forms_compose_the_same_way():
    decomposed, composed = "क\u093c", "\u0958"  # क़ written two ways
    assert normalize_text(decomposed, "hi") == normalize_text(composed, "hi")


# identify ----------------------------------------------------------------------------------------------------------

def test_identify_script_language_and_mismatch():
    stage = Identify(IdentifyConfig())
    r = record("வணக்கம் நண்பர்களே, இது ஒரு சோதனை")
    assert stage.process(r) is None and r["lang"] == "ta" and r["script"] == "Taml" and r["script_fraction"] == 1.0
    r = record("This is English text.", lang="hi")
    assert stage.process(r) == "script_mismatch:Latn"
    assert stage.process(record("१२३ ... ४५६")) == "no_letters"
    r = record("यह हिंदी का वाक्य है with some English", lang="hi")
    assert stage.process(r) is None and 0 < r["script_fraction"] < 1


def test_shared_script_languages_are_told_apart_by_their_function_words():
    marathi = "गावातील शेतकरी आता नवीन पद्धतीने शेती करत आहेत आणि त्यांचे उत्पादन वाढले आहे."
    hindi = "गाँव के किसान अब नए तरीक़े से खेती कर रहे हैं और उनकी पैदावार बढ़ी है।"
    assert guess_language(marathi, "Deva") == "mr"
    assert guess_language(hindi, "Deva") == "hi"
    assert guess_language("আমাদের গ্রামের কৃষকেরা এখন নতুন পদ্ধতিতে চাষ করছেন এবং ফলন বেড়েছে।", "Beng") == "bn"


# ocr ---------------------------------------------------------------------------------------------------------------

def test_ocr_removes_running_headers_and_page_numbers_and_rejoins_lines():
    bodies = [
        "सुबह गाँव के लोग खेतों की ओर\nनिकल पड़ते हैं और दोपहर तक लौटते हैं।\nशाम को चौपाल पर बातें होती हैं।",
        "गाँव की पाठशाला के अध्या-\nपक बच्चों को खेतों में ले जाकर\nबीजों का अंकुरण दिखाते हैं।",
        "बरसात में नदी उफान पर होती है\nऔर लोग मिलकर किनारे पर बोरे\nरखते हैं ताकि पानी न घुसे।",
        "कार्तिक पूर्णिमा पर मेला लगता है\nऔर दूर से व्यापारी आते हैं।\nशाम को कठपुतली का खेल होता है।",
    ]
    pages = []
    for n, body in enumerate(bodies, start=1):
        header = "पुस्तक का नाम" if n % 2 == 0 else f"अध्याय एक {n}"
        pages.append(record(f"{header}\n{body}\n- {n} -", lang="hi", kind="ocr", book="b", page=n))
    reasons = Ocr(OcrConfig()).process_batch(pages)
    assert reasons == [None] * 4
    for page in pages:
        assert "पुस्तक का नाम" not in page["text"] and "अध्याय एक" not in page["text"] and "-" not in page["text"]
        assert page["ocr_lines_removed"] == 2
    assert "पाठशाला के अध्यापक बच्चों" in pages[1]["text"]  # hyphen and hard line break both gone
    assert pages[0]["text"].startswith("सुबह गाँव के लोग खेतों की ओर निकल पड़ते हैं")


def test_ocr_repairs_detached_vowel_signs_and_drops_garbage_pages():
    pages = [
        record("क िसान और प◌ुराना पेड़ गाँव में हैं और बच्चे खेलते हैं।", lang="hi", kind="ocr", book="b", page=1),
        record("~~ ||| ## @@ ^^ ■■■ □□□ ▪▪▪ ■■■ □□□ ▪▪▪ *** ### ^^^", lang="hi", kind="ocr", book="b", page=2),
        record("   ", lang="hi", kind="ocr", book="b", page=3),
    ]
    assert Ocr(OcrConfig()).process_batch(pages) == [None, "ocr_garbage", "ocr_empty_page"]
    assert "किसान" in pages[0]["text"] and "पुराना" in pages[0]["text"]


# asr ---------------------------------------------------------------------------------------------------------------

def test_collapse_loops_keeps_one_copy_and_counts_the_rest():
    assert collapse_loops("धन्यवाद। धन्यवाद। धन्यवाद। धन्यवाद।".split()) == (["धन्यवाद।"], 3)
    assert collapse_loops("a b c a b c a b c d".split()) == (["a", "b", "c", "d"], 6)
    assert collapse_loops("धीरे धीरे चलो".split()) == (["धीरे", "धीरे", "चलो"], 0)  # reduplication is language
    assert collapse_loops(["x"]) == (["x"], 0)


def test_asr_cleans_segments_with_their_scores():
    lines = ["अं नमस्ते दोस्तों [संगीत]", "वक्ता 2: आज की बात", "उम्म ये ये", "शांति", "धन्यवाद। धन्यवाद। धन्यवाद।"]
    segments = [
        {"start": 0, "end": 2, "avg_logprob": -0.2},
        {"start": 2, "end": 4, "avg_logprob": -0.3},
        {"start": 4, "end": 5, "avg_logprob": -1.6},
        {"start": 5, "end": 6, "avg_logprob": -0.3, "no_speech_prob": 0.9},
        {"start": 9, "end": 10, "avg_logprob": -0.3},
    ]
    r = record("\n".join(lines), lang="hi", kind="asr", segments=segments)
    assert Asr(AsrConfig()).process(r) is None
    assert r["text"] == "नमस्ते दोस्तों आज की बात\n\nधन्यवाद।"  # a pause of three seconds starts a paragraph
    assert (r["asr_segments_dropped"], r["asr_tags_removed"], r["asr_fillers_removed"], r["asr_loop_words_removed"]) == (2, 1, 1, 2)


def test_asr_rejects_a_transcript_that_is_mostly_a_loop():
    r = record(" ".join(["धन्यवाद।"] * 20) + " अच्छा", lang="hi", kind="asr")
    assert Asr(AsrConfig()).process(r) == "asr_repetition_loop"
    assert Asr(AsrConfig()).process(record("[noise] <unk>", lang="hi", kind="asr")) == "asr_empty"


# pii ---------------------------------------------------------------------------------------------------------------

def test_verhoeff_against_known_values():
    assert verhoeff_valid("2363") and verhoeff_valid("123451")  # check digits 3 and 1
    assert not verhoeff_valid("2364") and not verhoeff_valid("2633")  # a wrong digit, a transposition


def test_pii_types_in_ascii_and_native_digits():
    text = ("मेल a.b-c@example.co.in, फ़ोन +91 98765 43210 और ०९८७६५ ४३२१०, ऑफ़िस 0522-2345678, "
            "आधार 7181 9093 7865 और ७१८१ ९०९३ ७८६५, पैन ABCPK1234F, ऑर्डर 665632122330, साल 2024")
    clean, counts = redact(text)
    assert counts == {"email": 1, "aadhaar": 2, "pan": 1, "phone": 3}
    assert "665632122330" in clean and "2024" in clean  # fails the checksum / too short: not an identifier
    assert "[AADHAAR]" in clean and "७१८१" not in clean


# quality -----------------------------------------------------------------------------------------------------------

def test_words_keep_vowel_signs():
    assert words("किसान खेतों में, தமிழ்நாடு!") == ["किसान", "खेतों", "में", "தமிழ்நாடு"]


def test_quality_measures_and_reasons():
    stage = Quality(QualityConfig(min_words=5))
    good = record((HELDOUT / "hi.txt").read_text(), lang="hi")
    good["script_fraction"] = 1.0
    assert stage.process(good) is None and good["stopwords"] >= 2
    assert stage.process(record("बहुत छोटा", lang="hi")) == "too_short"
    spam = record("★★★ ☎☎☎ ₹₹₹ 🔥🔥🔥 बंपर सेल आज ही ख़रीदें अभी", lang="hi")
    assert symbol_ratio(spam["text"]) > 0.2 and stage.process(spam) == "too_many_symbols"
    looped = record(" ".join(["आज का राशिफल बहुत शुभ है"] * 20), lang="hi")
    assert duplicate_ngram_fraction(words(looped["text"])) > 0.9 and stage.process(looped) == "repeated_ngrams"
    english_like = record(" ".join(["अ"] * 60), lang="hi")
    assert stage.process(english_like) == "word_length_out_of_range"


# dedup -------------------------------------------------------------------------------------------------------------

def test_dedup_key_folds_spacing_and_case_but_keeps_vowel_signs():
    assert dedup_key("Hello  World\n") == dedup_key("hello world")
    assert dedup_key("कुल") != dedup_key("कल")  # stripping marks would make these collide
    assert dedup_key("क्\u200dष") == dedup_key("क्ष")


def test_exact_dedup_names_the_first_copy():
    stage = ExactDedup(DedupConfig())
    first, second = record("एक ही पाठ"), record("एक  ही पाठ")
    first["id"], second["id"] = "a#0", "b#3"
    assert stage.process(first) is None
    assert stage.process(second) == "duplicate_of:a#0"
