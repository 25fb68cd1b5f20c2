"""The one table of languages: every stage that needs a language fact reads it here.

It covers the 22 languages of the Eighth Schedule of the Constitution of India plus English. Each
language has its ISO 639 codes, its FLORES-style code (FLORES-200 / FLORES+ / IN22: ``xxx_Scrp``), its
main script and any other script it is commonly written in, its native name, and the per-language
defaults the data stages start from (word-length bounds, stop words, ASR fillers).

Word-length bounds come from FineWeb-2's per-language configs where FineWeb-2 has the language and
are marked ``calibrated=False`` otherwise. Stop words and fillers are short lists written for this
project (the most frequent function words); an empty tuple means the project has no list yet and
the stages that use one skip that check for the language.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Script:
    code: str  # ISO 15924
    name: str
    ranges: tuple[tuple[int, int], ...]  # inclusive Unicode code point ranges
    # Code points 0-9 of the script's own digits, if it has them (used for native-digit policies).
    digit_zero: int | None = None

    def contains(self, char: str) -> bool:
        cp = ord(char)
        return any(lo <= cp <= hi for lo, hi in self.ranges)


SCRIPTS: dict[str, Script] = {
    s.code: s
    for s in (
        Script("Latn", "Latin", ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x1E00, 0x1EFF))),
        Script("Deva", "Devanagari", ((0x900, 0x97F), (0xA8E0, 0xA8FF), (0x1CD0, 0x1CFF)), 0x966),
        Script("Beng", "Bengali-Assamese", ((0x980, 0x9FF),), 0x9E6),
        Script("Guru", "Gurmukhi", ((0xA00, 0xA7F),), 0xA66),
        Script("Gujr", "Gujarati", ((0xA80, 0xAFF),), 0xAE6),
        Script("Orya", "Odia", ((0xB00, 0xB7F),), 0xB66),
        Script("Taml", "Tamil", ((0xB80, 0xBFF), (0x11FC0, 0x11FFF)), 0xBE6),
        Script("Telu", "Telugu", ((0xC00, 0xC7F),), 0xC66),
        Script("Knda", "Kannada", ((0xC80, 0xCFF),), 0xCE6),
        Script("Mlym", "Malayalam", ((0xD00, 0xD7F),), 0xD66),
        Script(
            "Arab",
            "Perso-Arabic",
            ((0x600, 0x6FF), (0x750, 0x77F), (0x8A0, 0x8FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
            0x6F0,  # Extended Arabic-Indic digits, as used for Urdu, Kashmiri and Sindhi
        ),
        Script("Mtei", "Meetei Mayek", ((0xABC0, 0xABFF), (0xAAE0, 0xAAFF)), 0xABF0),
        Script("Olck", "Ol Chiki", ((0x1C50, 0x1C7F),), 0x1C50),
    )
}


@dataclass(frozen=True)
class Language:
    code: str  # the code used everywhere in the project: ISO 639-1 where it exists, else ISO 639-3
    iso639_3: str
    name: str
    native_name: str
    script: str  # main script, a key of SCRIPTS
    flores: str | None  # FLORES-style code for the main script
    other_scripts: tuple[str, ...] = ()
    # indic-nlp-library normalizer code; None where it has none (or needs a package it does not declare).
    indicnlp: str | None = None
    min_avg_word_length: float = 2.0
    max_avg_word_length: float = 40.0
    calibrated: bool = False  # True where the word-length bounds come from FineWeb-2
    stopwords: tuple[str, ...] = ()
    fillers: tuple[str, ...] = ()  # hesitation sounds in transcripts, removed by the ASR clean-up

    @property
    def scripts(self) -> tuple[str, ...]:
        return (self.script, *self.other_scripts)

    @property
    def is_indic(self) -> bool:
        return self.code != "en"


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


LANGUAGES: tuple[Language, ...] = (
    Language(
        "as",
        "asm",
        "Assamese",
        "অসমীয়া",
        "Beng",
        "asm_Beng",
        indicnlp="as",
        min_avg_word_length=3,
        max_avg_word_length=19,
        calibrated=True,
        stopwords=_words("আৰু এই কৰা হয় যে এটা বাবে তেওঁ নাই কৰি হৈছে সৈতে"),
    ),
    Language(
        "bn",
        "ben",
        "Bengali",
        "বাংলা",
        "Beng",
        "ben_Beng",
        indicnlp="bn",
        min_avg_word_length=3,
        max_avg_word_length=24,
        calibrated=True,
        stopwords=_words("এবং ও এই যে একটি করে থেকে না হয় জন্য তার হয়েছে করা সে আর"),
        fillers=_words("উম হুম"),
    ),
    Language("brx", "brx", "Bodo", "बर'", "Deva", "brx_Deva", indicnlp="hi", stopwords=_words("आरो नि आव खौ मोनसे बे")),
    Language(
        "doi", "doi", "Dogri", "डोगरी", "Deva", "doi_Deva", indicnlp="hi", stopwords=_words("ते दा दी दे च ऐ हा नै कि इक")
    ),
    Language(
        "gu",
        "guj",
        "Gujarati",
        "ગુજરાતી",
        "Gujr",
        "guj_Gujr",
        indicnlp="gu",
        min_avg_word_length=3,
        max_avg_word_length=22,
        calibrated=True,
        stopwords=_words("અને છે એક આ તે માં ની નો ના પણ હતું કે માટે થી"),
    ),
    Language(
        "hi",
        "hin",
        "Hindi",
        "हिन्दी",
        "Deva",
        "hin_Deva",
        indicnlp="hi",
        min_avg_word_length=2,
        max_avg_word_length=21,
        calibrated=True,
        # FineWeb-2's eleven, plus four more frequent function words.
        stopwords=_words("के में है की और से का को एक हैं पर यह था लिए भी"),
        fillers=_words("अं हम्म उम्म"),
    ),
    Language(
        "kn",
        "kan",
        "Kannada",
        "ಕನ್ನಡ",
        "Knda",
        "kan_Knda",
        indicnlp="kn",
        min_avg_word_length=3,
        max_avg_word_length=67,
        calibrated=True,
        stopwords=_words("ಮತ್ತು ಒಂದು ಈ ಆ ಎಂದು ಅವರು ಇದು ಅದು ಹಾಗೂ ಕೂಡ ಇದೆ ಆದರೆ ಬಗ್ಗೆ ಮೇಲೆ"),
    ),
    Language("ks", "kas", "Kashmiri", "کٲشُر", "Arab", "kas_Arab", other_scripts=("Deva",)),
    Language(
        "kok",
        "kok",
        "Konkani",
        "कोंकणी",
        "Deva",
        "gom_Deva",
        indicnlp="kK",
        stopwords=_words("आनी आसा आसात हें ही तो ती एक पूण जाल्यार"),
    ),
    Language(
        "mai",
        "mai",
        "Maithili",
        "मैथिली",
        "Deva",
        "mai_Deva",
        indicnlp="hi",
        min_avg_word_length=3,
        max_avg_word_length=28,
        calibrated=True,
        stopwords=_words("आ अछि मे के सँ छल ई जे छथि एहि ओ"),
    ),
    Language(
        "ml",
        "mal",
        "Malayalam",
        "മലയാളം",
        "Mlym",
        "mal_Mlym",
        indicnlp="ml",
        min_avg_word_length=4,
        max_avg_word_length=37,
        calibrated=True,
        stopwords=_words("ഒരു ഈ ആ എന്ന് എന്ന ആണ് ഉണ്ട് അവൻ അത് ഇത് കൂടാതെ പക്ഷേ മാത്രം വേണ്ടി"),
    ),
    Language("mni", "mni", "Manipuri", "ꯃꯤꯇꯩꯂꯣꯟ", "Mtei", "mni_Mtei", other_scripts=("Beng",)),
    Language(
        "mr",
        "mar",
        "Marathi",
        "मराठी",
        "Deva",
        "mar_Deva",
        indicnlp="mr",
        min_avg_word_length=2,
        max_avg_word_length=35,
        calibrated=True,
        stopwords=_words("आणि आहे या व हे की ते त्या होते आहेत केले असे तर पण मध्ये"),
        fillers=_words("अं हम्म उम्म"),
    ),
    Language(
        "ne",
        "nep",
        "Nepali",
        "नेपाली",
        "Deva",
        "npi_Deva",
        indicnlp="ne",
        min_avg_word_length=3,
        max_avg_word_length=37,
        calibrated=True,
        stopwords=_words("र छ को मा ले पनि हो गर्न भएको छन् थियो यो त्यो लागि"),
    ),
    Language(
        "or",
        "ory",
        "Odia",
        "ଓଡ଼ିଆ",
        "Orya",
        "ory_Orya",
        indicnlp="or",
        min_avg_word_length=3,
        max_avg_word_length=30,
        calibrated=True,
        stopwords=_words("ଓ ଏବଂ ଏହି ଏକ ସେ ଯେ କରି ହୋଇ ପାଇଁ ଅଛି ନାହିଁ ଥିଲା କରିବା"),
    ),
    Language(
        "pa",
        "pan",
        "Punjabi",
        "ਪੰਜਾਬੀ",
        "Guru",
        "pan_Guru",
        indicnlp="pa",
        min_avg_word_length=2,
        max_avg_word_length=19,
        calibrated=True,
        stopwords=_words("ਦੇ ਦੀ ਦਾ ਅਤੇ ਹੈ ਵਿੱਚ ਨੂੰ ਇੱਕ ਤੋਂ ਹਨ ਇਸ ਕਿ ਲਈ ਨੇ"),
    ),
    Language(
        "sa",
        "san",
        "Sanskrit",
        "संस्कृतम्",
        "Deva",
        "san_Deva",
        indicnlp="sa",
        min_avg_word_length=4,
        max_avg_word_length=52,
        calibrated=True,
        stopwords=_words("च अस्ति तत् सः एव इति अपि न तु वा यत् सा"),
    ),
    Language("sat", "sat", "Santali", "ᱥᱟᱱᱛᱟᱲᱤ", "Olck", "sat_Olck"),
    # indic-nlp-library routes "sd" through its Devanagari normalizer, which is wrong for Perso-Arabic text.
    Language(
        "sd",
        "snd",
        "Sindhi",
        "سنڌي",
        "Arab",
        "snd_Arab",
        other_scripts=("Deva",),
        stopwords=_words("۽ آهي جو جي جا ۾ کي تي هڪ هن ته"),
    ),
    Language(
        "ta",
        "tam",
        "Tamil",
        "தமிழ்",
        "Taml",
        "tam_Taml",
        indicnlp="ta",
        min_avg_word_length=4,
        max_avg_word_length=37,
        calibrated=True,
        stopwords=_words(
            "மற்றும் ஒரு இந்த என்று அவர் உள்ள இது அது என போது மேலும் அந்த இல்லை என்ற ஆகும் முதல் வரை "
            "பல தனது இருந்து ஆனால் அல்லது கொண்டு மட்டும் வேண்டும் பிறகு மிகவும்"
        ),
        fillers=_words("ம்ம் ஆங்"),
    ),
    Language(
        "te",
        "tel",
        "Telugu",
        "తెలుగు",
        "Telu",
        "tel_Telu",
        indicnlp="te",
        min_avg_word_length=4,
        max_avg_word_length=68,
        calibrated=True,
        stopwords=_words("మరియు ఒక ఈ ఆ అని కూడా ఉంది అది ఇది వారు తన కానీ చాలా నుండి"),
        fillers=_words("ఉమ్ హ్మ్"),
    ),
    # indic-nlp-library's Urdu normalizer imports urduhack, which it does not declare; NFC only.
    Language(
        "ur",
        "urd",
        "Urdu",
        "اردو",
        "Arab",
        "urd_Arab",
        min_avg_word_length=2,
        max_avg_word_length=31,
        calibrated=True,
        stopwords=_words("کے میں ہے کی اور سے کا کو ایک ہیں پر یہ نے"),
    ),
    Language(
        "en",
        "eng",
        "English",
        "English",
        "Latn",
        "eng_Latn",
        min_avg_word_length=3,
        max_avg_word_length=10,
        calibrated=True,  # Gopher's bounds
        stopwords=_words("the of and to in is that for it was on with as are this"),
        fillers=_words("um uh erm hmm"),
    ),
)

EIGHTH_SCHEDULE: tuple[str, ...] = tuple(lang.code for lang in LANGUAGES if lang.is_indic)

_BY_CODE = {lang.code: lang for lang in LANGUAGES}
_BY_ANY_NAME = {
    **{lang.name.lower(): lang for lang in LANGUAGES},  # Whisper reports "hindi" as often as "hi"
    **{lang.iso639_3: lang for lang in LANGUAGES},
    **{lang.flores: lang for lang in LANGUAGES if lang.flores},
    **_BY_CODE,
}


def get(code: str) -> Language:
    """Look a language up by its project code, ISO 639-3 code, FLORES code or English name."""
    try:
        return _BY_ANY_NAME[code] if code in _BY_ANY_NAME else _BY_ANY_NAME[code.lower()]
    except (KeyError, AttributeError):
        known = ", ".join(sorted(_BY_CODE))
        raise KeyError(f"unknown language code {code!r}; known codes: {known}") from None


# For scripts several languages share: most speakers in India first. The first is what a text in that
# script is taken to be when nothing else decides; the order breaks ties in language guessing.
SHARED_SCRIPT_ORDER = {
    "Deva": ("hi", "mr", "mai", "ne", "doi", "kok", "brx", "sa", "sd", "ks"),
    "Beng": ("bn", "as", "mni"),
    "Arab": ("ur", "ks", "sd"),
}


def languages_for_script(script: str) -> tuple[Language, ...]:
    """Languages written in `script` (main or other script), in SHARED_SCRIPT_ORDER where it has one."""
    users = [lang for lang in LANGUAGES if script in lang.scripts]
    order = SHARED_SCRIPT_ORDER.get(script, ())
    return tuple(sorted(users, key=lambda lang: order.index(lang.code) if lang.code in order else len(order)))


@lru_cache(maxsize=65536)
def script_of(char: str) -> str | None:
    """The ISO 15924 code of the table script that contains `char`, or None."""
    for script in SCRIPTS.values():
        if script.contains(char):
            return script.code
    return None


def is_letter(char: str) -> bool:
    """Letters and the combining marks (matras, virama, nukta, anusvara) that belong to them.

    ``str.isalpha`` is False for Indic vowel signs, so a ratio built on it undercounts Indic text.
    """
    return unicodedata.category(char)[0] in "LM"


UNKNOWN_SCRIPT = "Zzzz"  # ISO 15924 for letters of scripts the table does not list


def script_counts(text: str) -> dict[str, int]:
    """Letters per script in `text` (combining marks count toward their script; others under Zzzz)."""
    counts: dict[str, int] = {}
    for char, n in Counter(text).items():  # each distinct character once: a document has a few hundred
        if is_letter(char):
            script = script_of(char) or UNKNOWN_SCRIPT
            counts[script] = counts.get(script, 0) + n
    return counts


def dominant_script(text: str) -> str | None:
    counts = script_counts(text)
    counts.pop(UNKNOWN_SCRIPT, None)
    return max(counts, key=counts.get) if counts else None


# FineWeb-2's per-language dup_line_frac (its configs/<lang>.yml); other languages use the quality stage's default.
DUPLICATE_LINE_FRACTION = {
    "hi": 0.206,
    "bn": 0.203,
    "mr": 0.233,
    "gu": 0.299,
    "pa": 0.328,
    "or": 0.225,
    "ta": 0.276,
    "te": 0.256,
    "kn": 0.25,
    "ml": 0.239,
    "as": 0.211,
    "ne": 0.155,
    "ur": 0.204,
    "mai": 0.335,
    "sa": 0.234,
}

# Romanized Hindi/Urdu function words that English does not use, for flagging romanized Indic text.
ROMANIZED_HINDI = frozenset(
    "hai hain ka ki ke ko mein nahi nahin aur bhi kya se ye yeh woh wo tha thi kar karna raha rahe rahi "
    "hota hoti apne apna apni kuch bahut hum tum aap mera meri mere tera teri kyun kaise lekin agar".split()
)


_NATIVE_DIGIT = re.compile(r"(?![0-9])\d")  # \d is every Unicode decimal digit (category Nd)


def to_ascii_digits(text: str) -> str:
    """Map every decimal digit (any script) to ASCII 0-9; other characters are unchanged (same length)."""
    return _NATIVE_DIGIT.sub(lambda m: str(unicodedata.digit(m.group())), text)
