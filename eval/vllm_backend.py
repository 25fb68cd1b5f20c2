"""Scoring through vLLM: the log-likelihoods and greedy answers of eval/scoring.py, computed by a vLLM engine.

Every request goes to the engine as token ids built by scoring.py's own encoders (the context token, then the
text; lm-evaluation-harness's split of context and choice), so both backends score the same token sequences.
vLLM is asked for the log-probability of each prompt token (``prompt_logprobs=0``: per position a dict holding
the prompt's own token, the first position ``None``), the raw log-softmax of the model's logits; a text's score
is the sum over its tokens after the context token, a choice's the sum over the choice's tokens. Answers are
greedy (``temperature=0``) up to ``max_new_tokens`` or a stop string, and their token ids are decoded with the
variant's tokenizer and cut at the first stop string exactly as scoring.generate does.

What vLLM does not give:

- No shared context for choices: vLLM never reads its prefix cache for a request that wants prompt
  log-probabilities, so each choice runs with its whole context (what ``choice_scoring: whole`` does).
- No limit on the vocabulary: log-probabilities are over every row the model has. The base is loaded as it
  is, never resized, so it has only its own rows; an adapter trained with new token rows (``modules_to_save``,
  ``trainable_token_indices``, a longer tokenizer) cannot go through vLLM's LoRA at all and is refused with
  the command that merges it, as are DoRA adapters and ranks above vLLM's largest.
- Not the same floating point: other kernels, and on GPUs scores that can move with what a request is batched
  with. Agreement with the transformers backend is to within rounding, which the suite's recheck measures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer

from indictune.eval.scoring import _check_length, _question, encode_texts, require_covered

if TYPE_CHECKING:
    from indictune.eval.suite import Variant

# The ranks vLLM sizes its LoRA slots for (MaxLoRARanks in vllm/config/lora.py); an adapter is held in the
# smallest slot that fits its rank.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VllmBackendError(ValueError):
    """Something vLLM cannot score as the transformers backend would; the message says why and what to do."""


class VllmUnavailable(VllmBackendError):
    """vLLM is not installed here."""


class AdapterNeedsMerge(VllmBackendError):
    """An adapter vLLM's LoRA cannot apply as it was trained; merged into its base, vLLM can score it."""


class VllmBackend:
    """A vLLM engine holding a model and its LoRA adapters, scoring as eval/scoring.py's functions do.

    ``adapters``: the suite's variants with an adapter (``adapter_name``, ``adapter`` folder). ``engine``: an
    object with ``vllm.LLM.generate``'s signature to use instead of building one (tests run a small model).
    """

    def __init__(
        self,
        model_path: str,
        adapters: Sequence[Variant] = (),
        dtype: str = "auto",
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        engine=None,
    ):
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        # The text model's settings (multimodal configs nest them); scoring's length check reads them as
        # ``model.config``, so this backend stands in for the model there.
        self.config = config.get_text_config()
        self.vocab_size = self.config.vocab_size
        self.tokenizers = {None: AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)}
        ranks = []
        for variant in adapters:
            tokenizer = AutoTokenizer.from_pretrained(variant.adapter, trust_remote_code=trust_remote_code)
            ranks.append(_lora_rank(model_path, variant.adapter, len(tokenizer), self.vocab_size))
            self.tokenizers[variant.adapter_name] = tokenizer

        vllm = _import_vllm()
        from vllm.lora.request import LoRARequest

        self._sampling_params, self._tokens_prompt = vllm.SamplingParams, vllm.TokensPrompt
        # vLLM loads an adapter from lora_path the first time its integer id (1 and up) is requested.
        self.lora_requests = {None: None} | {
            variant.adapter_name: LoRARequest(variant.adapter_name, number, str(Path(variant.adapter).resolve()))
            for number, variant in enumerate(adapters, start=1)
        }
        self.lora_request = None
        self.device_map = None  # vLLM places the model itself
        if engine is None:
            options = {"model": model_path, "dtype": dtype, "trust_remote_code": trust_remote_code, "seed": 0}
            if tensor_parallel_size > 1:  # one model split over this many GPUs, by vLLM's own tensor parallelism
                options["tensor_parallel_size"] = tensor_parallel_size
            if adapters:
                # One adapter runs at a time; every adapter stays loaded in CPU memory between uses.
                rank = next(r for r in LORA_RANKS if r >= max(ranks))
                options.update(enable_lora=True, max_lora_rank=rank, max_loras=1, max_cpu_loras=len(adapters))
            engine = vllm.LLM(**options)
        self.engine = engine

    def use(self, variant: Variant):
        """Like the transformers backend's ``use``: a context for scoring ``variant`` (its adapter, or the base),
        its tokenizer and its vocabulary size. Requests from now on go through its adapter."""
        self.lora_request = self.lora_requests[variant.adapter_name]
        return nullcontext(), self.tokenizers[variant.adapter_name], self.vocab_size

    def text_nll(
        self, tokenizer, texts: list[str], batch_size: int = 8, desc: str = "scoring", vocab_size: int | None = None
    ) -> list[tuple[float, int]]:
        """(negative log-likelihood in nats, number of tokens) for each text, in input order."""
        self._check_vocabulary(vocab_size)
        encoded = encode_texts(tokenizer, texts, self)
        outputs = self._run(encoded, self._prompt_logprobs_params(), [1] * len(encoded), batch_size, desc)
        return [(-sum(_prompt_logprobs(o, ids, 1)), len(ids) - 1) for o, ids in zip(outputs, encoded)]

    def choice_loglikelihoods(
        self,
        tokenizer,
        questions: list[tuple[str, list[str]]],
        batch_size: int = 8,
        vocab_size: int | None = None,
        desc: str = "choices",
    ) -> list[list[float]]:
        """Summed log-probability of each choice after its question's context, in input order.

        ``questions``: (context, [continuation, ...]). Each (context, choice) pair runs whole.
        """
        self._check_vocabulary(vocab_size)
        sequences, starts, sizes, texts, text_ids = [], [], [], [], []
        for context, continuations in questions:
            question, ids = _question(tokenizer, context, continuations)
            # A choice's score starts where the choices' common prefix does.
            sequences += [question.context + rest for rest in question.rests]
            starts += [len(question.context) - question.prefix] * len(question.rests)
            sizes.append(len(question.rests))
            texts += [context + c for c in continuations]
            text_ids += ids
        require_covered(tokenizer, texts, text_ids)
        _check_length([len(s) for s in sequences], self)
        outputs = self._run(sequences, self._prompt_logprobs_params(), sizes, batch_size, desc)
        flat = [sum(_prompt_logprobs(o, ids, start)) for o, ids, start in zip(outputs, sequences, starts)]
        bounds = [0, *accumulate(sizes)]
        return [flat[low:high] for low, high in zip(bounds, bounds[1:])]

    def generate(
        self,
        tokenizer,
        prompts: list[str],
        max_new_tokens: int,
        stop: list[str],
        batch_size: int = 8,
        vocab_size: int | None = None,
        desc: str = "generating",
    ) -> list[str]:
        """Greedy continuation of each prompt, cut at the first stop string, in input order."""
        self._check_vocabulary(vocab_size)
        encoded = encode_texts(tokenizer, prompts, self, room=max_new_tokens)
        params = self._sampling_params(temperature=0, max_tokens=max_new_tokens, stop=list(stop))
        results = []
        for output in self._run(encoded, params, [1] * len(encoded), batch_size, desc):
            # The ids, not vLLM's text: decoded by the variant's tokenizer as scoring.generate decodes them.
            text = tokenizer.decode(output.outputs[0].token_ids, skip_special_tokens=True)
            for s in stop:
                text = text.split(s)[0]
            results.append(text.strip())
        return results

    def _prompt_logprobs_params(self):
        # One token must be generated; detokenize=False spares decoding every prompt token.
        return self._sampling_params(max_tokens=1, prompt_logprobs=0, temperature=0, detokenize=False)

    def _check_vocabulary(self, vocab_size: int | None) -> None:
        if vocab_size is not None and vocab_size != self.vocab_size:
            raise VllmBackendError(
                f"vLLM gives log-probabilities over all {self.vocab_size} rows of the model's output layer and "
                f"cannot limit them to the first {vocab_size}; score this with --backend transformers"
            )

    def _run(self, prompts: list[list[int]], params, sizes: list[int], batch_size: int, desc: str) -> list:
        """The engine's outputs for ``prompts`` (token ids), in input order. ``sizes[i]`` prompts belong to item
        i; at most ``batch_size`` items are in the engine at once, so that batch size 1 scores each item alone."""
        bounds = [0, *accumulate(sizes)]
        chunks = [(bounds[i], bounds[min(i + batch_size, len(sizes))]) for i in range(0, len(sizes), batch_size)]
        requests = [self._tokens_prompt(prompt_token_ids=ids) for ids in prompts]
        if len(chunks) == 1:  # vLLM's own progress bar, under this job's name
            return self.engine.generate(requests, params, use_tqdm=_progress(desc), lora_request=self.lora_request)
        outputs = []
        for low, high in tqdm(chunks, desc=desc, leave=False):
            outputs += self.engine.generate(requests[low:high], params, use_tqdm=False, lora_request=self.lora_request)
        return outputs


def _prompt_logprobs(output, ids: list[int], start: int) -> list[float]:
    """Log-probabilities vLLM gave the tokens ``ids[start:]`` of a prompt it returned as ``output``."""
    positions = output.prompt_logprobs
    if positions is None or len(positions) != len(ids):
        raise VllmBackendError(
            "vLLM returned no prompt log-probabilities for a request that asked for them (prompt_logprobs=0); "
            "this vLLM version does not give them, so nothing can be scored: use a current vLLM, or "
            "--backend transformers"
        )
    values = []
    for position in range(start, len(ids)):
        at = positions[position]
        if not at or ids[position] not in at:
            raise VllmBackendError(
                f"vLLM's prompt log-probabilities at position {position} do not include the prompt's own token "
                "(prompt_logprobs=0 must return it); this vLLM version cannot be scored with: use a current vLLM, "
                "or --backend transformers"
            )
        values.append(at[ids[position]].logprob)
    return values


def _progress(desc: str):
    """A progress bar factory for vLLM (``use_tqdm``): vLLM names its bars itself, so the name is set here."""

    def bar(*args, **kwargs):
        return tqdm(*args, **{**kwargs, "desc": f"{desc} ({kwargs.get('desc', 'vLLM')})", "leave": False})

    return bar


def _lora_rank(model_path: str, adapter: str, tokenizer_size: int, vocab_size: int) -> int:
    """The LoRA rank ``adapter`` needs in vLLM; refuses an adapter that vLLM's LoRA cannot apply as trained."""
    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file() or not (folder / "adapter_model.safetensors").is_file():
        # vLLM itself would fall back to torch.load on adapter_model.bin.
        raise VllmBackendError(
            f"{adapter}: no adapter_config.json and adapter_model.safetensors; pickled weights are never loaded. "
            "Save the adapter with save_pretrained(dir, safe_serialization=True)"
        )
    settings = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    rank = max([settings.get("r", 0), *(settings.get("rank_pattern") or {}).values()])
    reasons = []
    if settings.get("modules_to_save"):
        reasons.append(f"it trains whole layers ({', '.join(settings['modules_to_save'])}: modules_to_save)")
    if settings.get("trainable_token_indices"):
        reasons.append("it trains embedding rows (trainable_token_indices)")
    if tokenizer_size > vocab_size:
        reasons.append(f"its tokenizer has {tokenizer_size} tokens and the model {vocab_size} rows")
    if settings.get("use_dora"):
        reasons.append("it is a DoRA adapter")
    if rank > LORA_RANKS[-1]:
        reasons.append(f"its rank {rank} is above vLLM's largest, {LORA_RANKS[-1]}")
    if reasons:
        raise AdapterNeedsMerge(
            f"{adapter} cannot be scored through vLLM's LoRA: {'; '.join(reasons)}. Merge it into its base first, "
            f"python scripts/export.py --model {model_path} --adapter {adapter} --formats hf --output_dir OUT, "
            f"and evaluate OUT/hf with --backend vllm (--base {model_path} to compare); or score the adapter "
            "with --backend transformers"
        )
    return rank


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise VllmUnavailable(
            "--backend vllm needs vLLM, which is not installed here: pip install vllm on a CUDA machine (it "
            "brings the torch build it needs), or score with --backend transformers"
        ) from None
    return vllm
