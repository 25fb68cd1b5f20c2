"""Each data stage on project-written text."""

import dataclasses
import json
import random
import string
import sys
import unicodedata
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from indictune.core import languages, recipe
from indictune.core.text import comparison_key, text_word_hashes, word_hashes, words
from indictune.data import pipeline, stages
from indictune.data.readers import Source
from indictune.data.stages.asr import Asr, AsrConfig, collapse_loops
from indictune.data.stages.dedup import Dedup, DedupConfig, RepeatedLines, RepeatedLinesConfig
from indictune.data.stages.identify import Identify, IdentifyConfig, guess_language
from indictune.data.stages.normalize import Normalize, NormalizeConfig, normalize_text
from indictune.data.stages.ocr import Ocr, OcrConfig
from indictune.data.stages.pii import _VEHICLE_STATES, Pii, PiiConfig, gstin_valid, redact, verhoeff_valid
from indictune.data.stages.quality import Quality, QualityConfig, character_ratios, duplicate_ngram_fraction

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


ZWSP, ZWNJ = "\u200b", "\u200c"


@pytest.mark.parametrize(
    "lang, written, expected",
    [
        ("te", f"యూనిట్{ZWSP}కు", f"యూనిట్{ZWNJ}కు"),  # after a virama: ZWNJ keeps ట్ from becoming a subjoined క
        ("te", f"సిస్టం{ZWSP}ను", "సిస్టంను"),  # after the anusvara nothing joins: removed
        ("hi", f"इंटरनेट्{ZWSP}कैफ़े", f"इंटरनेट्{ZWNJ}कैफ़े"),
        ("hi", f"सिस्टम{ZWSP}को", "सिस्टमको"),
        ("mr", f"र्{ZWSP}क", f"र्{ZWNJ}क"),  # no reph
        ("bn", f"ক্{ZWSP}ষ", f"ক্{ZWNJ}ষ"),
        ("pa", f"ਪ੍{ZWSP}ਰ", f"ਪ੍{ZWNJ}ਰ"),  # no subjoined ra
        ("gu", f"ક્{ZWSP}ષ", f"ક્{ZWNJ}ષ"),
        ("or", f"କ୍{ZWSP}ଷ", f"କ୍{ZWNJ}ଷ"),
        ("ta", f"க்{ZWSP}ஷ", f"க்{ZWNJ}ஷ"),  # no க்ஷ ligature
        ("kn", f"ಕ್{ZWSP}ಷ", f"ಕ್{ZWNJ}ಷ"),
        ("ml", f"ക്{ZWSP}ക", f"ക്{ZWNJ}ക"),
        ("ml", f"മല{ZWSP}യാളം", "മലയാളം"),
        ("mni", f"ꯀ꯭{ZWSP}ꯁ", f"ꯀ꯭{ZWNJ}ꯁ"),
        ("sat", f"ᱥᱟᱱ{ZWSP}ᱛᱟᱲᱤ", "ᱥᱟᱱᱛᱟᱲᱤ"),
        ("ur", f"کتاب{ZWSP}گھر", "کتابگھر"),  # letters already join across it: removing it keeps them joined
        ("hi", f"क{ZWSP}ि", "कि"),  # a vowel sign belongs to the letter before it
    ],
)
def test_a_zero_width_space_inside_an_indic_word_is_a_joiner(lang, written, expected):
    out = normalize_text(written, lang)
    assert out == expected and len(words(out)) == 1
    assert normalize_text(out, lang) == out
    assert comparison_key(written) == comparison_key(out)


def test_a_zero_width_space_between_words_stays_a_space():
    assert normalize_text(f"ఆమె {ZWSP}{ZWSP}వచ్చింది", "te") == "ఆమె వచ్చింది"
    assert normalize_text(f"GPS{ZWSP}లో", "te") == "GPS లో"  # two scripts: two words
    assert normalize_text(f"ଥିଲା{ZWSP}{ZWSP}| ହେ", "or") == "ଥିଲା । ହେ"
    assert normalize_text(f"2024{ZWSP}లో", "te") == "2024 లో"
    assert normalize_text(f"zero{ZWSP}width", "en") == f"zero{ZWSP}width"  # kept where indic-nlp-library is not used
    assert comparison_key(f"GPS{ZWSP}లో") == comparison_key("GPS లో")


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
    assert guess_language(marathi, "Deva")[0] == "mr"
    assert guess_language(hindi, "Deva")[0] == "hi"
    assert guess_language("আমাদের গ্রামের কৃষকেরা এখন নতুন পদ্ধতিতে চাষ করছেন এবং ফলন বেড়েছে।", "Beng")[0] == "bn"
    assert guess_language("வணக்கம்", "Taml") == ("ta", 1.0)


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
    counts = ("asr_segments_dropped", "asr_tags_removed", "asr_fillers_removed", "asr_loop_words_removed")
    assert [r[count] for count in counts] == [2, 1, 1, 2]


def test_asr_rejects_a_transcript_that_is_mostly_a_loop():
    r = record(" ".join(["धन्यवाद।"] * 20) + " अच्छा", lang="hi", kind="asr")
    assert Asr(AsrConfig()).process(r) == "asr_repetition_loop"
    assert Asr(AsrConfig()).process(record("[noise] <unk>", lang="hi", kind="asr")) == "asr_empty"


# pii ---------------------------------------------------------------------------------------------------------------


def test_verhoeff_against_known_values():
    assert verhoeff_valid("2363") and verhoeff_valid("123451")  # check digits 3 and 1
    assert not verhoeff_valid("2364") and not verhoeff_valid("2633")  # a wrong digit, a transposition


def test_pii_types_in_ascii_and_native_digits():
    text = (
        "मेल a.b-c@example.co.in, फ़ोन +91 98765 43210 और ०९८७६५ ४३२१०, ऑफ़िस 0522-2345678, "
        "आधार 7181 9093 7865 और ७१८१ ९०९३ ७८६५, पैन ABCPK1234F, ऑर्डर 665632122330, साल 2024"
    )
    clean, counts = redact(text)
    assert {k: n for k, n in counts.items() if n} == {"email": 1, "aadhaar": 2, "pan": 1, "phone": 3}
    assert "665632122330" in clean and "2024" in clean  # fails the checksum / too short: not an identifier
    assert "[AADHAAR]" in clean and "७१८१" not in clean


def test_pii_indian_financial_and_vehicle_identifiers():
    text = (
        "GSTIN 27AAPFU0939F1ZV, गलत 27AAPFU0939F1ZA; IFSC SBIN0001234; UPI ramesh.k@okaxis और 9876543210@ybl; "
        "मेल ramesh@example.com; गाड़ी MH 12 AB 1234, DL3CAF0001, 22 BH 1234 AA; नहीं: XY 12 AB 1234, 987 654 3210"
    )
    clean, counts = redact(text)
    found = {k: n for k, n in counts.items() if n}
    assert found == {"email": 1, "upi": 2, "gstin": 1, "ifsc": 1, "vehicle": 3, "phone": 1}
    assert "27AAPFU0939F1ZA" in clean and "XY 12 AB 1234" in clean  # bad check character, no such state
    assert "[UPI]" in clean and "[EMAIL]" in clean and "ramesh" not in clean


def test_pii_after_another_number_and_after_a_plus():
    # a year before the Aadhaar number makes a twelve-digit candidate that fails the checksum and used to hide it
    assert redact("आधार संख्या २०२४ ७१८१ ९०९३ ७८६५ है")[0] == "आधार संख्या २०२४ [AADHAAR] है"
    # "91" and this mobile number pass the Verhoeff check together: a "+" says it is a phone number
    assert redact("फ़ोन +919876543200 पर")[0] == "फ़ोन [PHONE] पर"


def _fuzzed_identifiers(rng: random.Random):
    """(kind, identifier in ASCII) pairs, random but valid as the pii stage knows them."""
    upper = string.ascii_uppercase

    def digits(n, first="0123456789"):
        return rng.choice(first) + "".join(rng.choice("0123456789") for _ in range(n - 1))

    def letters(n):
        return "".join(rng.choice(upper) for _ in range(n))

    def aadhaar():
        number = digits(11, "23456789")
        number += next(d for d in "0123456789" if verhoeff_valid(number + d))
        sep = rng.choice([" ", "-", ""])
        return f"{number[:4]}{sep}{number[4:8]}{sep}{number[8:]}"

    def phone():
        if rng.random() < 0.3:
            code = digits(rng.randint(2, 4), "123456789")
            return f"0{code}{rng.choice(' -')}{digits(10 - len(code), '23456789')}"
        number = digits(10, "6789")
        body = rng.choice(
            [
                number,
                f"{number[:5]} {number[5:]}",
                f"{number[:5]}-{number[5:]}",
                f"{number[:3]} {number[3:6]} {number[6:]}",
            ]
        )
        return rng.choice(["", "", "+91 ", "+91", "+91-", "0091 ", "0"]) + body

    def pan():
        return letters(3) + rng.choice("PCHFATBLJG") + letters(1) + digits(4) + letters(1)

    def gstin():
        start = f"{rng.randint(1, 37):02d}{pan()}{rng.choice('123456789' + upper)}Z"
        return start + next(c for c in "0123456789" + upper if gstin_valid(start + c))

    def vehicle():
        sep = rng.choice([" ", "-", ""])
        if rng.random() < 0.2:
            return sep.join([digits(2), "BH", digits(4), letters(rng.randint(1, 2))])
        state = rng.choice(_VEHICLE_STATES)
        return sep.join([state, digits(rng.randint(1, 2)), letters(rng.randint(1, 3)), digits(4)])

    makers = {
        "aadhaar": aadhaar,
        "phone": phone,
        "pan": pan,
        "gstin": gstin,
        "vehicle": vehicle,
        "ifsc": lambda: letters(4) + "0" + "".join(rng.choice(upper + string.digits) for _ in range(6)),
        "email": lambda: f"{rng.choice(['ramesh', 'a.b-c', 'priya_k'])}{rng.randint(1, 99)}@example.co.in",
        "upi": lambda: f"{rng.choice(['ramesh.k', '9876543210', 'priya'])}@{rng.choice(['okaxis', 'ybl', 'paytm'])}",
    }
    while True:
        kind = rng.choice(list(makers))
        yield kind, makers[kind]()


# Every digit zero of the language table, Arabic-Indic (U+0660) and ASCII.
DIGIT_ZEROS = sorted({0x30, 0x660, *(s.digit_zero for s in languages.SCRIPTS.values() if s.digit_zero)})
NEIGHBOUR_WORDS = {
    s: [w for lang in languages.languages_for_script(s) for w in lang.stopwords or [lang.native_name]]
    for s in languages.SCRIPTS
}
NEIGHBOUR_WORDS["Deva"] += ["आधार", "नंबर", "फ़ोन", "क्रमांक"]
NEIGHBOUR_WORDS["Latn"] += ["Aadhaar", "PAN", "call", "ID"]
# What stands between an identifier and its neighbour: nothing, spaces, punctuation, joiners.
GLUE = [
    "",
    " ",
    " ",
    " ",
    "\u00a0",
    "\u200b",
    "।",
    ", ",
    ":",
    ": ",
    "(",
    ")",
    " (",
    ") ",
    "\u200d",
    "\u200c",
    " - ",
    "॥ ",
    "، ",
]


def _in_digits(text: str, zero: int) -> str:
    return "".join(chr(zero + int(c)) if c in string.digits else c for c in text)


def _neighbour(rng: random.Random, script: str, zero: int) -> str:
    """Up to three words of `script` or Latin, or numbers in any digits, separated by spaces."""
    tokens = []
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        if rng.random() < 0.7:
            tokens.append(rng.choice(NEIGHBOUR_WORDS[rng.choice([script, script, "Latn"])]))
        else:
            tokens.append(_in_digits(str(rng.choice([5, 12, 100, 1947, 2024])), rng.choice([zero, *DIGIT_ZEROS])))
    return " ".join(tokens)


def _glued(rng: random.Random, left: str, core: str, right: str) -> str:
    """`core` between its neighbours; a number never touches another (they would be one longer number)."""
    before, after = rng.choice(GLUE), rng.choice(GLUE)
    if left and (left[-1] + core[0]).isalnum() and not before.strip("\u200b\u200c\u200d"):
        before = " "
    if right and (core[-1] + right[0]).isalnum() and not after.strip("\u200b\u200c\u200d"):
        after = " "
    return f"{left}{before}{core}{after}{right}"


def test_pii_is_found_whatever_script_its_digits_and_neighbours_are_in():
    rng = random.Random(20240613)
    scripts = list(NEIGHBOUR_WORDS)
    normalize = Normalize(NormalizeConfig())
    pii = Pii(PiiConfig())
    identifiers = _fuzzed_identifiers(rng)
    missed = []
    for _ in range(10_000):
        kind, identifier = next(identifiers)
        script, zero = rng.choice(scripts), rng.choice(DIGIT_ZEROS)
        written = _in_digits(identifier, zero)
        text = _glued(rng, _neighbour(rng, script, zero), written, _neighbour(rng, script, zero))
        clean, counts = redact(text)
        r = record(text, lang=languages.languages_for_script(script)[0].code)
        normalize.process(r)
        pii.process(r)  # the record-stage chain: normalize may rewrite spacing, digits and punctuation first
        for found, n in ((clean, counts[kind]), (r["text"], r[f"pii_{kind}"])):
            if n != 1 or f"[{kind.upper()}]" not in found or written in found:
                missed.append((kind, text, found))
    assert not missed, (len(missed), missed[:5])


def test_pii_leaves_numbers_that_are_no_identifiers():
    rng = random.Random(7)
    scripts = list(NEIGHBOUR_WORDS)

    def number():
        choice = rng.randrange(6)
        if choice == 0:  # twelve digits failing the Verhoeff check
            while verhoeff_valid(candidate := str(rng.randint(2 * 10**11, 10**12 - 1))):
                pass
            return rng.choice([candidate, f"{candidate[:4]} {candidate[4:8]} {candidate[8:]}"])
        if choice == 1:  # ten digits that no mobile number starts with
            return str(rng.randint(10**9, 6 * 10**9 - 1))
        if choice == 2:  # rupees in Indian grouping
            return f"{rng.randint(1, 99)},{rng.randint(10, 99)},{rng.randint(100, 999)}"
        if choice == 3:
            return f"{rng.randint(1, 28):02d}-{rng.randint(1, 12):02d}-{rng.randint(1900, 2030)}"
        if choice == 4:
            return str(rng.randint(1, 99_999_999))
        return f"{rng.randint(1, 23)}:{rng.randint(10, 59)}"

    flagged = []
    for _ in range(5000):
        script, zero = rng.choice(scripts), rng.choice(DIGIT_ZEROS)
        neighbours = NEIGHBOUR_WORDS[script]
        text = _glued(rng, rng.choice(neighbours), _in_digits(number(), zero), rng.choice(neighbours))
        if any(redact(text)[1].values()):
            flagged.append(text)
    assert not flagged, flagged[:5]


# quality -----------------------------------------------------------------------------------------------------------


def test_words_keep_vowel_signs():
    assert words("किसान खेतों में, தமிழ்நாடு!") == ["किसान", "खेतों", "में", "தமிழ்நாடு"]


def _assert_hashes_follow_words(content):
    found = words(content)
    whole = text_word_hashes(content)
    assert len(whole) == len(found), (content, found)
    assert whole.tolist() == [h for w in found for h in text_word_hashes(w).tolist()], content
    assert whole.tolist() == word_hashes(found).tolist()


def test_word_hashes_of_a_text_split_it_as_words_does(shared_data):
    """The vectorized hashing finds exactly the words of ``words``: on FLORES in every shared language, and on
    random strings of letters, marks, joiners, digits, underscores, zero-width characters and spaces."""
    for path in sorted((shared_data / "flores200" / "dev").glob("*.dev")):
        for line in path.read_text(encoding="utf-8").splitlines()[:50]:
            _assert_hashes_follow_words(line)
            _assert_hashes_follow_words(comparison_key(line))
    rng = random.Random(0)
    alphabet = "a'’-- \u0915\u094d\u093e\u200c\u200d_1२¹½‿x\u0300\n\t.ß𝔘"
    for _ in range(5000):
        _assert_hashes_follow_words("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
    assert text_word_hashes("").tolist() == [] and text_word_hashes("-- ' ").tolist() == []
    assert len(set(text_word_hashes("कुल कल प्रेम परम ab ba a-b").tolist())) == 7  # marks and order count


def test_quality_measures_and_reasons():
    stage = Quality(QualityConfig(min_words=5))
    good = record((HELDOUT / "hi.txt").read_text(), lang="hi")
    good["script_fraction"] = 1.0
    assert stage.process(good) is None and good["stopwords"] >= 2
    assert stage.process(record("बहुत छोटा", lang="hi")) == "too_short"
    spam = record("★★★ ☎☎☎ ₹₹₹ 🔥🔥🔥 बंपर सेल आज ही ख़रीदें अभी", lang="hi")
    assert character_ratios(spam["text"])[0] > 0.2 and stage.process(spam) == "too_many_symbols"
    looped = record(" ".join(["आज का राशिफल बहुत शुभ है"] * 20), lang="hi")
    assert duplicate_ngram_fraction(words(looped["text"])) > 0.9 and stage.process(looped) == "repeated_ngrams"
    english_like = record(" ".join(["अ"] * 60), lang="hi")
    assert stage.process(english_like) == "word_length_out_of_range"


# dedup -------------------------------------------------------------------------------------------------------------


def test_comparison_key_folds_spacing_case_and_digits_but_keeps_vowel_signs():
    assert comparison_key("Hello  World 2024\n") == comparison_key("hello world २०२४")
    assert comparison_key("कुल") != comparison_key("कल")  # stripping marks would make these collide
    assert comparison_key("प्रेम") != comparison_key("परम")
    assert comparison_key("क्\u200dष") == comparison_key("क्ष")


def run_corpus_stage(stage, records):
    for r in records:
        stage.observe(r)
    stage.finish_observing()
    return [stage.process(r) for r in records]


def test_exact_and_near_duplicates_keep_the_first_of_each_cluster():
    base = (HELDOUT / "hi.txt").read_text().split("\n\n")[0]
    assert len(words(base)) > 60
    tokens = base.split()
    one_word_changed = " ".join(tokens[:10] + ["बदला"] + tokens[11:])
    chained = " ".join(tokens[:30] + ["नया", "शब्द"] + tokens[32:])  # near the second, maybe not the first
    docs = [
        record(t)
        for t in (
            base,
            "अलग विषय का एक बिल्कुल अलग पाठ है जो किसी से नहीं मिलता " * 3,
            base.replace(" ", "  "),
            one_word_changed,
            chained,
        )
    ]
    for i, r in enumerate(docs):
        r["id"] = f"doc#{i}"
    reasons = run_corpus_stage(Dedup(DedupConfig()), docs)
    assert reasons == [None, None, "exact_duplicate", "near_duplicate", "near_duplicate"]
    assert [r.get("duplicate_of") for r in docs] == [None, None, "doc#0", "doc#0", "doc#0"]
    assert docs[0]["cluster_size"] == 4 and docs[1]["cluster_size"] == 1


def test_near_dedup_tells_apart_texts_that_differ_only_in_vowel_signs():
    text_a = " ".join(["कुल किताबें मेज़ पर रखी हैं और बच्चे पढ़ रहे हैं"] * 8)
    text_b = text_a.replace("कुल", "कल").replace("किताबें", "कताब").replace("बच्चे", "बचच")
    docs = [record(text_a), record(text_b)]
    docs[1]["id"] = "t#1"
    assert run_corpus_stage(Dedup(DedupConfig(exact=True)), docs) == [None, None]


def test_dedup_is_the_same_for_any_seed_order_of_calls():
    with pytest.raises(ValueError, match="multiple of bands"):
        Dedup(DedupConfig(num_perm=100, bands=14))


def test_repeated_lines_across_a_sources_documents_are_removed():
    footer = "इस लेख को साझा करें: फेसबुक | ट्विटर"
    topics = ["खेती", "बारिश", "स्कूल", "बाज़ार", "रेल", "नदी"]
    bodies = [f"यह दस्तावेज़ {topic} के बारे में अपना अलग पाठ है जिसमें कई शब्द हैं" for topic in topics]
    docs = [record(f"{body}\n{footer}") for body in bodies] + [record(footer + "\n" + footer)]
    stage = RepeatedLines(RepeatedLinesConfig(min_documents=5))
    reasons = run_corpus_stage(stage, docs)
    assert reasons == [None] * 6 + ["only_repeated_lines"]
    assert all(footer not in d["text"] and d["repeated_lines_removed"] == 1 for d in docs[:6])
    assert docs[0]["text"] == bodies[0]


# policies, flags and gates added to the stages -----------------------------------------------------------------

POLICIES = [
    dict(nukta=n, candrabindu=c, danda=d, digits=g, punctuation=p)
    for n in ("keep", "remove")
    for c in ("keep", "anusvara")
    for d in ("unicode", "keep")
    for g in ("keep", "ascii", "native")
    for p in ("keep", "ascii")
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: "-".join(p.values()))
def test_every_normalize_policy_is_idempotent_and_nfc(policy):
    text = "ज़िंदगी में “हैँ” १२ और 34 बातें|| फिर | ठीक a|b 10:30 बजे।। দুঃখ ড় — …"
    once = normalize_text(text, "hi", **policy)
    assert normalize_text(once, "hi", **policy) == once == unicodedata.normalize("NFC", once)


def test_normalize_policies_do_what_they_say():
    assert normalize_text("ज़रा हैँ", "hi", nukta="remove", candrabindu="anusvara") == "जरा हैं"
    assert (
        normalize_text("वह आया|| फिर गया।। ठीक | a|b http://x.in/a|b", "hi")
        == "वह आया॥ फिर गया॥ ठीक । a|b http://x.in/a|b"
    )
    assert normalize_text("सन 2024", "hi", digits="native") == "सन २०२४"
    assert normalize_text("उसने कहा, “हाँ” — ठीक…", "hi") == "उसने कहा, “हाँ” — ठीक…"
    assert normalize_text("उसने कहा, “हाँ” — ठीक…", "hi", punctuation="ascii") == 'उसने कहा, "हाँ" - ठीक...'
    assert normalize_text("ياك", "ur") == "یاک"  # Arabic yeh and kaf written as Urdu's


def test_identify_flags_romanized_and_code_mixed_text_and_rejects_legacy_fonts():
    stage = Identify(IdentifyConfig())
    roman = record("yeh film bahut acchi hai aur sabko dekhni chahiye, kya tum bhi aaoge")
    assert stage.process(roman) is None and roman["romanized"] and roman["lang"] == "hi" and roman["script"] == "Latn"
    english = record("This film is very good and everybody should watch it with their friends.")
    assert stage.process(english) is None and not english["romanized"] and english["lang"] == "en"
    mixed = record("मैं कल office जाऊँगा, meeting के बाद lunch करेंगे और फिर project पर काम होगा")
    assert stage.process(mixed) is None and mixed["code_mixed"] and mixed["lang"] == "hi"
    krutidev = record("vkt ge ,d u;s fo|ky; esa x;s vkSj ogk¡ cgqr vPNk yxk D;ksafd ;g gekjk gS", lang="hi")
    assert stage.process(krutidev) == "legacy_font:krutidev"
    assert Identify(IdentifyConfig(romanized="drop")).process(record(roman["text"])) == "romanized"


def test_identify_uses_a_user_supplied_fasttext_model(tmp_path):
    fasttext = pytest.importorskip("fasttext")
    hindi = (HELDOUT / "hi.txt").read_text().split("\n\n")
    marathi = (HELDOUT / "mr.txt").read_text().split("\n\n")
    lines = [f"__label__hin_Deva {' '.join(p.split())}" for p in hindi] + [
        f"__label__mar_Deva {' '.join(p.split())}" for p in marathi
    ]
    (tmp_path / "train.txt").write_text("\n".join(lines * 20) + "\n")
    fasttext.train_supervised(str(tmp_path / "train.txt"), epoch=20, verbose=0, seed=1, thread=1).save_model(
        str(tmp_path / "lid.bin")
    )
    stage = Identify(IdentifyConfig(fasttext_model=str(tmp_path / "lid.bin")))
    r = record(marathi[0])
    assert stage.process(r) is None and r["lang"] == "mr" and 0.5 < r["lang_score"] <= 1.0
    strict = Identify(IdentifyConfig(fasttext_model=str(tmp_path / "lid.bin"), min_lang_score=1.0))
    assert strict.process(record(hindi[0])) == "low_lang_score"


def test_ocr_gates_on_word_confidence_and_repairs_two_part_vowels():
    stage = Ocr(OcrConfig())
    pages = [
        record("गाँव की कहानी अाज सुनो, मैंने देखा तो वह बाेला कुछ नहीं", lang="hi", kind="ocr", book="b", mean_confidence=91.0),
        record("धुँधला पन्ना जिसे ठीक से पढ़ा नहीं जा सका", lang="hi", kind="ocr", book="b", mean_confidence=41.0),
    ]
    assert stage.process_batch(pages) == [None, "ocr_low_confidence"]
    assert "आज" in pages[0]["text"] and "बोला" in pages[0]["text"] and pages[0]["ocr_confusions_repaired"] == 2


def test_asr_drops_repetitive_paragraphs_by_folded_compression_and_implausible_rates():
    from indictune.data.stages.asr import folded_compression_ratio

    prose = (HELDOUT / "hi.txt").read_text()
    utf8_ratio = len(prose.encode()) / len(__import__("zlib").compress(prose.encode()))
    assert folded_compression_ratio(prose) < 2.4 < utf8_ratio
    loop = "धन्यवाद। धन्यवाद, धन्यवाद! " * 12
    assert folded_compression_ratio(loop) > 5
    r = record(
        f"{loop}\nआज हम बारिश के पानी को बचाने के तरीक़ों पर बात करेंगे",
        lang="hi",
        kind="asr",
        segments=[{"start": 0.0, "end": 20.0}, {"start": 25.0, "end": 29.0}],
    )
    assert Asr(AsrConfig()).process(r) == "asr_repetition_loop"
    fast = record(
        "यह वाक्य एक सेकंड से भी कम समय में बोला गया जो संभव नहीं है\nठीक है अब आगे बढ़ते हैं",
        lang="hi",
        kind="asr",
        segments=[{"start": 0.0, "end": 0.5}, {"start": 1.0, "end": 3.0}],
    )
    assert Asr(AsrConfig()).process(fast) is None and fast["text"] == "ठीक है अब आगे बढ़ते हैं"
    assert fast["asr_segments_dropped"] == 1


def test_decontaminate_drops_documents_sharing_13_grams_with_eval_sets(tmp_path):
    from indictune.data.stages.decontaminate import Decontaminate, DecontaminateConfig

    eval_sentence = "भारत के उत्तर में हिमालय पर्वत है जो दुनिया की सबसे ऊँची पर्वत श्रृंखला मानी जाती है"
    (tmp_path / "dev.txt").write_text(f"{eval_sentence}\nबहुत छोटा\n")
    (tmp_path / "qa.jsonl").write_text(
        json.dumps({"question": "गंगा नदी कहाँ से निकलती है और किन राज्यों से होकर बहती है"}, ensure_ascii=False) + "\n"
    )
    stage = Decontaminate(DecontaminateConfig(paths=[str(tmp_path / "dev.txt"), str(tmp_path / "qa.jsonl")]))
    leaked = record(f"कल की कक्षा में शिक्षक ने बताया कि {eval_sentence.replace('भारत', 'भारत')} और फिर छुट्टी हो गई")
    assert stage.process(leaked) == "eval_overlap" and leaked["eval_overlap"].endswith("dev.txt")
    question = record("पहेली: गंगा नदी कहाँ से निकलती है और किन राज्यों से होकर बहती है? उत्तर कल मिलेगा")
    assert stage.process(question) == "eval_overlap" and question["eval_overlap"].endswith("qa.jsonl")
    assert stage.process(record("बहुत छोटा सा वाक्य जो किसी परीक्षा में नहीं है और कहीं से लिया नहीं गया")) is None


def test_a_broken_evaluation_file_names_its_line(tmp_path):
    from indictune.data.stages.decontaminate import Decontaminate, DecontaminateConfig

    (tmp_path / "eval.jsonl").write_text('{"q": "ठीक"}\n{"q": \n')
    with pytest.raises(ValueError, match=r"eval\.jsonl line 2 is not JSON"):
        Decontaminate(DecontaminateConfig(paths=[str(tmp_path / "eval.jsonl")]))


# a new stage -------------------------------------------------------------------------------------------------------

SHOUTING = '''"""shouting: text written in capitals."""

from dataclasses import dataclass

import pyarrow as pa

from indictune.core.recipe import field
from indictune.data.stages import Record, Stage, StageConfig, stage


@dataclass
class ShoutingConfig(StageConfig):
    max_capitals: float = field(0.5, help="reject a text whose letters are more capitals than this")


@stage("shouting", order=65, config=ShoutingConfig, help="text in capitals")
class Shouting(Stage):
    columns = {"capitals": pa.float32()}

    def process(self, record: Record) -> str | None:
        letters = [c for c in record["text"] if c.isalpha()]
        record["capitals"] = sum(map(str.isupper, letters)) / max(len(letters), 1)
        return "shouting" if record["capitals"] > self.config.max_capitals else None
'''


@pytest.fixture
def stages_config_with_shouting(tmp_path, monkeypatch):
    """The recipe's ``stages:`` mapping once SHOUTING is a file in a folder of the stages package."""
    (tmp_path / "more_stages").mkdir()
    (tmp_path / "more_stages" / "shouting.py").write_text(SHOUTING)
    monkeypatch.setattr(stages, "__path__", [*stages.__path__, str(tmp_path / "more_stages")])
    monkeypatch.setattr(stages, "STAGES", dict(stages.STAGES))  # restored after the test, without the new stage
    stages.discover()
    yield stages.config_class()
    del sys.modules["indictune.data.stages.shouting"], stages.shouting


def test_a_new_stage_is_one_file(stages_config_with_shouting, tmp_path):
    names = [f.name for f in dataclasses.fields(stages_config_with_shouting)]
    assert names == [
        "normalize",
        "identify",
        "ocr",
        "asr",
        "pii",
        "quality",
        "shouting",
        "decontaminate",
        "repeated_lines",
        "dedup",
    ]
    with pytest.raises(recipe.RecipeError, match="did you mean 'stages.shouting.max_capitals'"):
        recipe.build(stages_config_with_shouting, {"shouting": {"max_capital": 0.6}}, "recipe", "stages.")
    settings = recipe.build(
        stages_config_with_shouting,
        {"shouting": {"max_capitals": 0.6}, "quality": {"min_words": 3}},
        "recipe",
        "stages.",
    )
    loud = "THE LOUD RIVER RUNS PAST THE OLD MILL"
    texts = ["the quiet river runs past the old mill", loud, "STOP NOW", loud]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    report = pipeline.run(
        pipeline.PrepareConfig(
            sources=[Source(path=str(tmp_path / "in.jsonl"), format="jsonl", lang="en")],
            output_dir=str(tmp_path / "out"),
            stages=settings,
        )
    )
    # After quality (the short shout is too_short), before dedup (the repeated shout is no duplicate).
    assert report["rejected"] == {"quality": {"too_short": 1}, "shouting": {"shouting": 2}}
    assert list(report["rejected"]) == ["quality", "shouting"]
    assert pq.read_table(tmp_path / "out" / "data").column("capitals").to_pylist() == [0.0]


def test_a_stage_takes_a_free_name_and_order_and_record_stages_come_first(monkeypatch):
    monkeypatch.setattr(stages, "STAGES", dict(stages.STAGES))
    for name, order, problem in (("quality", 65, "clashes with stage 'quality'"), ("late", 85, "after corpus stage")):

        class Late(stages.Stage):
            pass

        with pytest.raises(stages.StageError, match=problem):
            stages.stage(name, order=order, config=stages.StageConfig, help="")(Late)
