"""Export for serving: the merged folder, GGUF through llama.cpp's converter with tokenizer parity proven or
refused, the same logits and greedy output in llama.cpp as in transformers, and the Ollama template."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from indictune.export import gguf, parity, template
from indictune.export.build import ExportConfig, ExportRefused, export
from tests.conftest import FLORES_HALF, tiny_llama

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "recipes" / "chat_templates"
PROMPTS = {
    "hi": "भारत की राजधानी नई दिल्ली है और",
    "ta": "இந்தியாவின் தலைநகரம் புது தில்லி, மேலும்",
    "en": "The capital of India is New Delhi, and",
}

pytestmark = pytest.mark.real_data


def _peaked(model):
    """Weights scaled up so that a random model's next-token choice is clear (top two logits far apart):
    greedy agreement then tests the computation, not the tie-breaking of near-equal logits."""
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "norm" not in name:
                weight.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def llama3_checkpoint(llama3_extension, tmp_path_factory):
    """A tiny Llama on Llama-3's vocabulary and a LoRA adapter trained (here: random) with the extended
    tokenizer's new rows, as train.py leaves them: (base folder, adapter folder)."""
    from peft import LoraConfig, get_peft_model

    tokenizer_dir, _ = llama3_extension
    tmp = tmp_path_factory.mktemp("llama3-checkpoint")
    extended = AutoTokenizer.from_pretrained(tokenizer_dir)
    extended.chat_template = (TEMPLATES / "llama3.jinja").read_text()
    base = _peaked(tiny_llama(128256, seed=3, positions=1024))
    base.config.bos_token_id, base.config.eos_token_id = 128000, 128001
    base.save_pretrained(tmp / "base")
    base.resize_token_embeddings(len(extended), mean_resizing=False)
    new_rows = list(range(128256, len(extended)))
    torch.manual_seed(4)
    adapted = get_peft_model(
        base,
        LoraConfig(
            r=4,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj", "down_proj"],
            init_lora_weights=False,
            trainable_token_indices={"embed_tokens": new_rows, "lm_head": new_rows},
        ),
    )
    with torch.no_grad():
        for name, weight in adapted.named_parameters():
            if "trainable_tokens_delta" in name:
                weight.normal_(0, 0.5)
    adapted.save_pretrained(tmp / "adapter")
    extended.save_pretrained(tmp / "adapter")
    merged = adapted.merge_and_unload().eval()
    return tmp / "base", tmp / "adapter", merged


@pytest.fixture(scope="module")
def llama3_export(llama3_checkpoint, tmp_path_factory):
    base, adapter, _ = llama3_checkpoint
    out = tmp_path_factory.mktemp("export") / "tiny-indic"
    summary = export(
        ExportConfig(model=str(base), adapter=str(adapter), output_dir=str(out), gguf_type="f32", name="tiny")
    )
    return out, summary


def test_export_writes_a_merged_folder_gguf_and_modelfile_after_proving_tokenizer_parity(
    llama3_export, llama3_checkpoint
):
    out, summary = llama3_export
    parity_report = summary["tokenizer_parity"]
    assert parity_report["equal"] and parity_report["pre_tokenizer"] == "qwen35"
    # every FLORES language of the shared data, the sample, special tokens, the chat template's output
    assert {"text:hi", "text:ta", "text:bn", "text:ur", "text:en", "special tokens", "chat template"} <= set(
        parity_report["checked"]
    )
    assert sum(parity_report["checked"].values()) > 11_000
    files = set(summary["files"])
    assert {"tiny-f32.gguf", "tiny-q8_0.gguf", "tiny-Q4_K_M.gguf", "Modelfile", "hf/config.json"} <= files
    assert (out / "hf" / "model.safetensors").is_file() and not list((out / "hf").glob("*.bin"))

    # the merged folder: what the adapter computes, and its vocabulary bookkeeping
    tokenizer = AutoTokenizer.from_pretrained(out / "hf")
    merged = AutoModelForCausalLM.from_pretrained(out / "hf", use_safetensors=True)
    assert merged.config.vocab_size == len(tokenizer) == merged.get_input_embeddings().weight.shape[0]
    assert summary["vocabulary"]["padding_rows"] == 0
    ids = tokenizer(PROMPTS["hi"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, llama3_checkpoint[2](ids).logits, atol=1e-5)
    generation = json.loads((out / "hf" / "generation_config.json").read_text())
    assert {128001, 128009} <= set(generation["eos_token_id"])  # <|end_of_text|> and <|eot_id|>
    lineage = json.loads((out / "hf" / "lineage.json").read_text())
    assert lineage["exported_from"]["adapter"].endswith("adapter")
    card = (out / "hf" / "README.md").read_text()
    assert "## Made from" in card and "No evaluation of these exact weights" in card

    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny-Q4_K_M.gguf\n")
    assert 'PARAMETER stop "<|eot_id|>"' in modelfile and 'PARAMETER stop "<|end_of_text|>"' in modelfile
    loaded = parity.load(out / "tiny-Q4_K_M.gguf", vocab_only=True)
    assert loaded.metadata["tokenizer.ggml.pre"] == "qwen35"


def _logit_tolerance_check(merged, tokenizer, gguf_file: Path, tolerance: float, reference=None, **settings):
    llm = parity.load(gguf_file, n_ctx=1024, logits_all=True, n_threads=2, **settings)
    results = {}
    for lang, text in PROMPTS.items():
        for chat in (False, True):
            if chat:
                ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
                ids = ids if isinstance(ids, list) else ids["input_ids"]
            else:
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            result = parity.output_parity(reference or merged, llm, ids, n=32)
            results[lang, chat] = result
            assert result["max_abs_logit_difference"] <= tolerance * result["logit_scale"], (lang, chat, result)
            assert result["gguf_greedy"] == result["hf_greedy"], (lang, chat)
    llm.close()
    return results


def test_llama_cpp_logits_and_greedy_output_match_transformers(llama3_export):
    """Same prompt, same model: logits within tolerance and 32 greedy tokens identical, in Hindi, Tamil and
    English, with and without the chat template.

    Tolerances, relative to the largest logit. f32 GGUF with an f32 KV cache: 1e-4. llama.cpp computes in
    f32 like transformers but sums in another order; measured 8e-7, so 1e-4 still catches a wrong RoPE,
    norm or attention mask, each of which moves logits by whole percents. f16 GGUF with llama.cpp's default
    f16 KV cache (as servers run it): 2e-2, against transformers running the same f16-rounded weights. K, V
    and, on the CPU, the activations entering each f16 matrix product are rounded to f16 (11-bit mantissa,
    5e-4 relative each); an f16 KV cache alone already gives 6e-4 on the f32 GGUF.
    """
    out, _ = llama3_export
    tokenizer = AutoTokenizer.from_pretrained(out / "hf")
    merged = AutoModelForCausalLM.from_pretrained(out / "hf", use_safetensors=True).eval()
    f32 = {"type_k": gguf.llama_cpp().GGML_TYPE_F32, "type_v": gguf.llama_cpp().GGML_TYPE_F32}
    _logit_tolerance_check(merged, tokenizer, out / "tiny-f32.gguf", 1e-4, **f32)

    f16 = gguf.convert(out / "hf", out.parent / "tiny-f16.gguf", "f16", "qwen35", gguf.converter_dir())
    rounded = AutoModelForCausalLM.from_pretrained(out / "hf", use_safetensors=True).eval()
    with torch.no_grad():
        for weight in rounded.parameters():
            if weight.dim() == 2:
                weight.copy_(weight.half().float())
    _logit_tolerance_check(merged, tokenizer, f16, 2e-2, reference=rounded)


def test_a_tokenizer_llama_cpp_cannot_reproduce_is_refused(llama3_checkpoint, shared_data, tmp_path, monkeypatch):
    """The case as users met it: an extension with marks kept in words and Llama-3's digits (keep_marks).
    llama.cpp's converter takes it without a word and labels it smaug-bpe, and llama.cpp then splits Hindi
    differently. Export refuses before converting, and would refuse on parity if a type were ever wrongly
    matched; nothing is written either way."""
    from indictune.training.tokenizer import bytelevel
    from indictune.training.tokenizer.build import extend_byte_level

    base_dir, adapter, _ = llama3_checkpoint
    llama3 = bytelevel.from_tiktoken(shared_data / "tokenizers" / "llama3" / "tokenizer.model")
    hindi = (shared_data / "flores200" / "dev" / "hin_Deva.dev").read_text().splitlines()
    kept_marks, _ = extend_byte_level(llama3, hindi[:FLORES_HALF], 500, hindi[:50], 0.1, "keep_marks")
    folder = tmp_path / "keep-marks"
    kept_marks.save_pretrained(folder)
    config = json.loads((base_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": len(kept_marks)}))
    with pytest.raises(gguf.GGUFError, match="llama.cpp implements no pre-tokenizer"):
        gguf.pre_tokenizer_type(folder)

    # what the converter does on its own: accepts it, calls it smaug-bpe, and llama.cpp tokenizes otherwise
    guessed = gguf.convert(folder, tmp_path / "guessed.gguf", "f16", None, gguf.converter_dir(), vocab_only=True)
    assert parity.load(guessed, vocab_only=True).metadata["tokenizer.ggml.pre"] == "smaug-bpe"
    report = parity.tokenizer_parity(kept_marks, guessed, {"hi": hindi[FLORES_HALF:]})
    assert report.differ["hi"] > 0.9 * report.checked["hi"]

    kept_marks.save_pretrained(adapter.parent / "adapter-keep-marks")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter / name, adapter.parent / "adapter-keep-marks" / name)
    out = tmp_path / "refused"
    settings = ExportConfig(
        model=str(base_dir), adapter=str(adapter.parent / "adapter-keep-marks"), output_dir=str(out)
    )
    with pytest.raises(gguf.GGUFError, match="pre_tokenizer: qwen35"):
        export(settings)
    monkeypatch.setattr(gguf, "pre_tokenizer_type", lambda folder: "llama-bpe")  # a wrong table entry
    with pytest.raises(ExportRefused, match=r"no GGUF written: read as llama.cpp's llama-bpe .* text:hi: \d+/997"):
        export(settings)
    assert not out.exists()


def test_a_sentencepiece_extension_exports_with_parity(shared_data, tmp_path):
    """Llama-2's SentencePiece model extended with Hindi and Tamil pieces: llama.cpp reads tokenizer.model
    and must give the same ids in every FLORES language."""
    from indictune.training.tokenizer import spm
    from indictune.training.tokenizer.build import _hf_tokenizer

    lines = []
    for code in ("hin_Deva", "tam_Taml"):
        lines += (shared_data / "flores200" / "dev" / f"{code}.dev").read_text().splitlines()[:FLORES_HALF]
    base_proto = spm.load(str(shared_data / "tokenizers" / "llama2" / "tokenizer.model"))
    merged, added = spm.merge(base_proto, spm.train(lines, 3000, model_type="bpe"))
    assert added
    tokenizer = _hf_tokenizer(merged, None, False)
    tokenizer.chat_template = (TEMPLATES / "indictune.jinja").read_text()
    model_dir = tmp_path / "llama2-indic"
    model = tiny_llama(len(tokenizer))
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "tokenizer.model").write_bytes(merged.SerializeToString())
    summary = export(
        ExportConfig(model=str(model_dir), output_dir=str(tmp_path / "out"), formats=["gguf"], quantize=[], name="m")
    )
    assert summary["tokenizer_parity"]["equal"] and summary["tokenizer_parity"]["pre_tokenizer"] == "sentencepiece"
    assert sorted(summary["files"]) == ["m-f16.gguf"]
    loaded = parity.load(tmp_path / "out" / "m-f16.gguf", vocab_only=True)
    assert loaded.n_vocab() == len(tokenizer) and "[PAD" not in loaded.detokenize([len(tokenizer) - 1]).decode()


def _go_render(template_text: str, messages: list[dict], tmp_path: Path) -> str:
    if shutil.which("go") is None:
        pytest.fail("Go is needed to run Ollama's template engine: apt-get install golang-go (make test does)")
    (tmp_path / "template.tmpl").write_text(template_text)
    values = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    result = subprocess.run(
        ["go", "run", str(REPO / "tests" / "go" / "render_template.go"), str(tmp_path / "template.tmpl")],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@pytest.mark.parametrize("name", ["llama3.jinja", "indictune.jinja"])
def test_the_modelfile_template_renders_conversations_as_the_chat_template(name, tmp_path, llama3_extension):
    """Go's text/template (Ollama's engine) on the Modelfile's TEMPLATE gives exactly the Jinja template's
    text, reply prompt included, for conversations it was not read off."""
    tokenizer = AutoTokenizer.from_pretrained(llama3_extension[0])
    tokenizer.chat_template = (TEMPLATES / name).read_text()
    found = template.layout(tokenizer)
    go_template = template.ollama_template(found)
    conversations = [
        [{"role": "user", "content": "मौसम कैसा है?"}],
        [
            {"role": "system", "content": "Reply in Bengali. {{ not a template }}"},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "নমস্কার"},
            {"role": "user", "content": "line one\nline two"},
        ],
    ]
    for messages in conversations:
        expected = template.render(tokenizer, messages, add_generation_prompt=True)
        assert _go_render(go_template, messages, tmp_path) == expected


def test_the_modelfile_in_the_export_renders_like_the_chat_template(llama3_export, tmp_path):
    """The exported Modelfile leaves BOS to llama.cpp when the GGUF adds it, and otherwise keeps it."""
    out, _ = llama3_export
    tokenizer = AutoTokenizer.from_pretrained(out / "hf")
    modelfile = (out / "Modelfile").read_text()
    go_template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    messages = [{"role": "user", "content": "வணக்கம்"}, {"role": "assistant", "content": "ok"}]
    messages.append({"role": "user", "content": "2 + 2?"})
    adds_bos = tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    rendered = ("<|begin_of_text|>" if adds_bos else "") + _go_render(go_template, messages, tmp_path)
    assert rendered == template.render(tokenizer, messages, add_generation_prompt=True)


def test_a_template_that_is_not_fixed_text_around_messages_is_refused(llama3_extension):
    tokenizer = AutoTokenizer.from_pretrained(llama3_extension[0])
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['content'] | length > 12 %}[long]{% endif %}<{{ m['role'] }}>"
        "{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    with pytest.raises(template.TemplateLayoutError, match="not fixed text around each message"):
        template.layout(tokenizer)


def test_chat_streams_replies_through_the_chat_template(llama3_export):
    """scripts/chat.py on the merged folder: two turns piped in, each reply streamed; the reply is the model's
    greedy continuation of the conversation rendered by its template."""
    out, _ = llama3_export
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chat.py"), "--model", str(out / "hf"), "--temperature", "0"]
        + ["--max_new_tokens", "8"],
        input="नमस्ते\nவணக்கம்\n",
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    tokenizer = AutoTokenizer.from_pretrained(out / "hf")
    model = AutoModelForCausalLM.from_pretrained(out / "hf", use_safetensors=True).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "नमस्ते"}], add_generation_prompt=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    first = parity.hf_greedy(model, ids, 8)
    stops = set(json.loads((out / "hf" / "generation_config.json").read_text())["eos_token_id"])
    first = first[: next((i for i, t in enumerate(first) if t in stops), len(first))]
    assert result.stdout.startswith(tokenizer.decode(first, skip_special_tokens=True) + "\n")
    assert result.stdout.count("\n") >= 2  # the second turn was answered too
