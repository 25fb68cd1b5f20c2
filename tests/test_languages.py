import unicodedata

import pytest

from indictune.core import languages

EIGHTH_SCHEDULE_NAMES = {
    "Assamese",
    "Bengali",
    "Bodo",
    "Dogri",
    "Gujarati",
    "Hindi",
    "Kannada",
    "Kashmiri",
    "Konkani",
    "Maithili",
    "Malayalam",
    "Manipuri",
    "Marathi",
    "Nepali",
    "Odia",
    "Punjabi",
    "Sanskrit",
    "Santali",
    "Sindhi",
    "Tamil",
    "Telugu",
    "Urdu",
}


def test_the_table_has_the_22_scheduled_languages_and_english():
    names = {lang.name for lang in languages.LANGUAGES}
    assert names == EIGHTH_SCHEDULE_NAMES | {"English"}
    assert len(languages.EIGHTH_SCHEDULE) == 22
    codes = [lang.code for lang in languages.LANGUAGES]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("lang", languages.LANGUAGES, ids=lambda lang: lang.code)
def test_every_entry_is_consistent(lang):
    assert lang.script in languages.SCRIPTS
    assert all(s in languages.SCRIPTS for s in lang.other_scripts)
    assert lang.flores and lang.flores.endswith("_" + lang.script)
    assert len(lang.iso639_3) == 3
    assert lang.min_avg_word_length < lang.max_avg_word_length
    # The native name is written in the language's own script (Manipuri and Santali in theirs).
    letters = [c for c in lang.native_name if languages.is_letter(c)]
    assert sum(languages.script_of(c) in lang.scripts for c in letters) / len(letters) > 0.8
    for word in lang.stopwords + lang.fillers:
        assert unicodedata.is_normalized("NFC", word)
        assert languages.dominant_script(word) in (*lang.scripts, None)  # None: a sign such as Sindhi ۽ ("and")


def test_lookup_by_any_code_or_name():
    assert languages.get("hi") is languages.get("hin") is languages.get("hin_Deva") is languages.get("Hindi")
    assert languages.get("hindi").code == "hi"
    with pytest.raises(KeyError, match="unknown language code 'xx'"):
        languages.get("xx")


def test_flores_codes_match_the_shared_files(shared_data):
    stems = {p.stem for p in (shared_data / "flores200" / "dev").glob("*.dev")}
    table = {lang.flores for lang in languages.LANGUAGES}
    assert stems <= table, stems - table


def test_script_helpers_count_vowel_signs_as_letters():
    counts = languages.script_counts("हिन्दी தமிழ் abc ١٢٣")
    assert counts == {"Deva": 6, "Taml": 5, "Latn": 3}  # ह ि न ् द ी: vowel signs and virama count; digits do not
    assert languages.dominant_script("मराठी आणि English") == "Deva"
    assert languages.to_ascii_digits("२०२४ और ৩৪ and ௫") == "2024 और 34 and 5"


def test_shared_scripts_list_the_default_first():
    assert languages.languages_for_script("Deva")[0].code == "hi"
    assert languages.languages_for_script("Beng")[0].code == "bn"
    assert [lang.code for lang in languages.languages_for_script("Taml")] == ["ta"]
