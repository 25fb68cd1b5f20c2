"""Shared fixtures: the repository, the real data beside it, the prepared sample, tiny tokenizers and models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
# Packed training data is cached under $INDICTUNE_CACHE; tests (and the processes they start) use their own.
os.environ["INDICTUNE_CACHE"] = tempfile.mkdtemp(prefix="indictune-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"  # as on a cluster node: nothing is fetched, every dataset is local


def shared_data_dir() -> Path:
    return Path(os.environ.get("INDICTUNE_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; tests that need it skip only when it is absent and CI is unset."""
    path = shared_data_dir()
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the shared data is missing at {path} (set INDICTUNE_SHARED_DATA)")
        pytest.skip(f"no shared data at {path} (set INDICTUNE_SHARED_DATA)")
    return path


def run_unless_hung(command: list[str], env: dict, timeout: int, what: str) -> tuple[int, str, str]:
    """``command`` run from the repository in its own process group, with one thread per process and this venv's
    scripts first on PATH: (exit status, stdout, stderr). One still going after ``timeout`` seconds is taken for a
    hang: every process of it is killed and the test fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as run:
        try:
            stdout, stderr = run.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            stdout, stderr = run.communicate()
            pytest.fail(f"{what} hung: still running after {timeout} s\n{stdout[-2000:]}{stderr[-3000:]}")
    return run.returncode, stdout, stderr


@pytest.fixture(autouse=True)
def _run_from_repo(monkeypatch):
    """Recipes name paths relative to the repository, as users run them."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def planted() -> dict:
    return json.loads((SAMPLE / "planted.json").read_text())


@pytest.fixture(scope="session")
def prepared_sample(tmp_path_factory) -> tuple[Path, dict]:
    """The sample corpus through the data pipeline: (output dir, report)."""
    from indictune.core import recipe
    from indictune.data import pipeline

    out = tmp_path_factory.mktemp("prepared") / "sample"
    config = recipe.load(pipeline.PrepareConfig, REPO / "recipes/data/sample.yaml", [f"--output_dir={out}"])
    return out, pipeline.run(config)


@pytest.fixture(scope="session")
def base_tokenizer_dir(prepared_sample, tmp_path_factory) -> Path:
    """A small SentencePiece tokenizer trained on the sample's English only, like the demo's base."""
    from indictune.training.tokenizer.build import TokenizerConfig, build

    out = tmp_path_factory.mktemp("tokenizers") / "base"
    build(TokenizerConfig(output_dir=str(out), train_data=[str(prepared_sample[0])], languages=["en"], vocab_size=600))
    return out


@pytest.fixture(scope="session")
def extended_tokenizer_dir(prepared_sample, base_tokenizer_dir, tmp_path_factory) -> Path:
    from indictune.training.tokenizer.build import TokenizerConfig, build

    out = tmp_path_factory.mktemp("tokenizers") / "extended"
    build(
        TokenizerConfig(
            output_dir=str(out),
            train_data=[str(prepared_sample[0])],
            languages=["hi", "mr", "bn", "ta", "te"],
            base_tokenizer=str(base_tokenizer_dir),
            vocab_size=1500,
            fertility_text="data/sample/heldout/{lang}.txt",
            fertility_languages=["hi", "ta", "en"],
        )
    )
    return out


@pytest.fixture(scope="session")
def byte_level_tokenizer_dirs(prepared_sample, tmp_path_factory) -> tuple[Path, Path]:
    """A small byte-level BPE tokenizer trained on English (Llama-3 and Qwen style) and its Indic extension."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from indictune.training.tokenizer.build import TokenizerConfig, build

    english = (SAMPLE / "heldout/en.txt").read_text().splitlines() + (SAMPLE / "web/en.jsonl").read_text().splitlines()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        english,
        trainers.BpeTrainer(
            vocab_size=500,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    out = tmp_path_factory.mktemp("tokenizers")
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(
        out / "byte-level-base"
    )
    build(
        TokenizerConfig(
            output_dir=str(out / "byte-level-extended"),
            train_data=[str(prepared_sample[0])],
            languages=["hi", "ta"],
            base_tokenizer=str(out / "byte-level-base"),
            vocab_size=800,
            pre_tokenizer="keep_marks",  # GPT-2's pre-tokenizer has no regex for qwen35 to replace
        )
    )
    return out / "byte-level-base", out / "byte-level-extended"


FLORES_HALF = 498  # FLORES dev lines [0, 498) train tokenizers in the real-data tests; the rest is held out


@pytest.fixture(scope="session")
def llama3_extension(shared_data, tmp_path_factory) -> tuple[Path, dict]:
    """Llama-3's tokenizer extended (the default pre_tokenizer, qwen35) with 4,000 merges trained on the first
    half of FLORES dev plus news in Hindi, Tamil and Bengali: (its folder, build's summary)."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    from indictune.training.tokenizer.build import TokenizerConfig, build

    tmp = tmp_path_factory.mktemp("llama3-extension")
    flores = {"hi": "hin_Deva", "ta": "tam_Taml", "bn": "ben_Beng"}
    news = {"hi": "Hindi", "ta": "Tamil", "bn": "Bengal"}
    rows = []
    for lang, code in flores.items():
        lines = (shared_data / "flores200" / "dev" / f"{code}.dev").read_text().splitlines()
        rows += [(t, lang) for t in lines[:FLORES_HALF]]
        with open(shared_data / "l3cube_indicnews_shc" / f"{news[lang]}_SHC_Test.csv", encoding="utf-8") as handle:
            rows += [(r[0], lang) for r in list(csv.reader(handle))[1:] if r]
    (tmp / "train").mkdir()
    pq.write_table(
        pa.table({"text": [t for t, _ in rows], "lang": [lang for _, lang in rows]}), tmp / "train" / "part-0.parquet"
    )
    for lang, code in {**flores, "en": "eng_Latn"}.items():
        lines = (shared_data / "flores200" / "dev" / f"{code}.dev").read_text().splitlines()[FLORES_HALF:]
        (tmp / f"{lang}.txt").write_text("\n".join(lines))
    summary = build(
        TokenizerConfig(
            output_dir=str(tmp / "tokenizer"),
            train_data=[str(tmp / "train")],
            base_tokenizer=str(shared_data / "tokenizers" / "llama3"),
            vocab_size=4000,
            fertility_text=str(tmp / "{lang}.txt"),
            fertility_languages=["hi", "ta", "bn", "en"],
        )
    )
    return tmp / "tokenizer", summary


def tiny_llama(vocab_size: int, tie: bool = False, seed: int = 0, positions: int = 512):
    """A two-layer Llama-architecture model, randomly initialised."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_mixtral(vocab_size: int, seed: int = 0):
    """A two-layer Mixtral (4 experts, top-2), randomly initialised, with Mixtral-8x7B's router loss weight."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    config = MixtralConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        router_aux_loss_coef=0.02,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    return MixtralForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_mixtral_dir(base_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random Mixtral saved with the base tokenizer, as a base model folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    out = tmp_path_factory.mktemp("models") / "tiny-mixtral"
    tiny_mixtral(len(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_base_dir(base_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random Llama saved with the base tokenizer, as a base model folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    out = tmp_path_factory.mktemp("models") / "tiny-base"
    tiny_llama(len(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def long_base_dir(base_tokenizer_dir, tmp_path_factory):
    """A tiny random Llama with room for FLORES paragraphs and few-shot prompts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    out = tmp_path_factory.mktemp("models") / "tiny-long"
    tiny_llama(len(tokenizer), positions=4096).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def lora_adapter(base_dir, out, seed, safe_serialization=True):
    """A LoRA adapter whose weights are not zero, so it changes the model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", init_lora_weights=False),
    )
    model.save_pretrained(out, safe_serialization=safe_serialization)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def write_copa(folder, n=12):
    """IndicCOPA-shaped Hindi and Tamil items under folder/indiccopa, as a local copy of the task's data."""
    rows = [
        {
            "premise": f"वाक्य {i} हुआ।",
            "choice1": f"पहला उत्तर {i}",
            "choice2": f"दूसरा {i}",
            "question": "cause" if i % 2 else "effect",
            "label": i % 2,
        }
        for i in range(n)
    ]
    (folder / "indiccopa").mkdir(parents=True, exist_ok=True)
    for lang in ("hi", "ta"):
        (folder / "indiccopa" / f"{lang}.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
