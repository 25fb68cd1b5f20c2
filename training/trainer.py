"""The trainers: ``transformers.Trainer`` for continued pretraining, TRL's ``SFTTrainer`` for chat, with
what both share: a learning rate of their own for the embedding rows, throughput in the logs, and no step
past the end when resumed from the last checkpoint."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from trl import SFTTrainer

from indictune.core.io import atomic_write_text
from indictune.training import moe
from indictune.training.throughput import flops_per_token, peak_tflops
from indictune.training.tokenizer import spm

EMBEDDING_MARKERS = ("trainable_tokens_", "modules_to_save")


class NothingLeftToTrain(Exception):
    pass


class StopWhenNothingLeftToTrain(TrainerCallback):
    """Stops a run resumed at (or past) max_steps once the checkpoint is loaded: transformers' loop checks
    for the end only after a step, so it would train one step more than the recipe asks for."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            raise NothingLeftToTrain


class IndictuneTrainerMixin:
    """Adds ``embedding_learning_rate``, logs tokens/s per GPU and MFU with the loss, adds an MoE model's router
    loss once and logs it with the experts' load, and trains no step past max_steps."""

    def configure(
        self, embedding_learning_rate: float | None, peak_tflops_per_gpu: float | None, router_aux_loss_coef: float
    ) -> None:
        self.embedding_learning_rate = embedding_learning_rate
        self.flops_per_token = flops_per_token(self.model, self.args.max_length)
        self.peak_flops = (peak_tflops(peak_tflops_per_gpu) or 0.0) * 1e12
        self._tokens, self._since = 0, None
        self.router_aux_loss_coef = router_aux_loss_coef
        top_k = moe.experts_per_token(self.model) if moe.is_moe(self.model) else None
        self.expert_load = moe.ExpertLoad(top_k) if top_k else None
        self.expert_load_total: torch.Tensor | None = None  # [layers, experts] over the run, the same on every rank
        self.add_callback(StopWhenNothingLeftToTrain())

    def train(self, *args, **kwargs):
        """Trainer.train; None, with the checkpoint's weights, optimizer and state loaded, where it had
        nothing left to train."""
        try:
            return super().train(*args, **kwargs)
        except NothingLeftToTrain:
            self.is_in_train = False
            return None

    def create_optimizer(self, model=None):
        if self.optimizer is not None or not getattr(self, "embedding_learning_rate", None):
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                groups.setdefault((name in decay, any(m in name for m in EMBEDDING_MARKERS)), []).append(param)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(
            [
                {
                    "params": params,
                    "weight_decay": self.args.weight_decay if decays else 0.0,
                    **({"lr": self.embedding_learning_rate} if embedding else {}),
                }
                for (decays, embedding), params in sorted(groups.items())
            ],
            **optimizer_kwargs,
        )
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's own loss (Trainer's, not SFTTrainer's fused head: see ChatTrainer), plus an MoE model's
        router loss, weighted by router_aux_loss_coef as a mean over the micro-batches of a step and the ranks."""
        if getattr(self, "expert_load", None) is None:
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = Trainer.compute_loss(self, model, inputs, True, num_items_in_batch)
        aux_loss = outputs.get("aux_loss")
        if self.router_aux_loss_coef and aux_loss is not None:
            # With num_items_in_batch the loss is already a mean over the accumulated micro-batches, so Trainer does
            # not divide it by their number; the router loss is one micro-batch's mean and must be.
            scaled_for_accumulation = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            steps = self.current_gradient_accumulation_steps if scaled_for_accumulation else 1
            loss = loss + self.router_aux_loss_coef * aux_loss.to(loss.device) / steps
        if model.training:
            self.expert_load.add(outputs.get("router_logits"), aux_loss, inputs.get("attention_mask"))
        return (loss, outputs) if return_outputs else loss

    def _log_expert_load(self, logs: dict[str, float]) -> None:
        counts, aux_sum, aux_batches = self.expert_load.take()
        if counts is None:
            return
        # Every rank logs, so every rank reduces the same tensors.
        counts = self.accelerator.reduce(counts.to(self.args.device), "sum")
        aux = torch.tensor([aux_sum, aux_batches], dtype=torch.float64, device=self.args.device)
        aux_sum, aux_batches = self.accelerator.reduce(aux, "sum").tolist()
        if aux_batches:
            logs["router_aux_loss"] = round(aux_sum / aux_batches, 6)
        logs.update(moe.load_summary(counts))
        self.expert_load_total = counts if self.expert_load_total is None else self.expert_load_total + counts

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        if getattr(self, "expert_load_total", None) is not None:
            os.makedirs(output_dir, exist_ok=True)
            table = json.dumps(moe.load_table(self.expert_load_total, self.expert_load.top_k), indent=1)
            atomic_write_text(Path(output_dir) / "expert_load.json", table + "\n")
        if not isinstance(self.model, PeftModel):
            super()._save(output_dir, state_dict)
            spm.copy_model_file(self.processing_class, output_dir)
        else:
            os.makedirs(output_dir, exist_ok=True)
            # The adapter carries the rows of new tokens itself (trainable_token_indices or modules_to_save).
            # Left to decide, peft would also write the whole resized embedding and output layers into it:
            # gigabytes for a Llama-3 vocabulary, and a size mismatch for servers that load adapters.
            self.model.save_pretrained(output_dir, state_dict=state_dict, save_embedding_layers=False)
            spm.save_tokenizer(self.processing_class, output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._since is None:
            self._since = time.perf_counter()
        mask = inputs.get("attention_mask")
        self._tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._since is not None:
            tokens = torch.tensor(self._tokens, dtype=torch.float64, device=self.args.device)
            tokens = self.accelerator.reduce(tokens, "sum").item() / self.accelerator.num_processes
            per_gpu = tokens / max(time.perf_counter() - self._since, 1e-9)
            logs["tokens_per_second_per_gpu"] = round(per_gpu, 1)
            if self.peak_flops:
                logs["mfu"] = round(per_gpu * self.flops_per_token / self.peak_flops, 4)
            if torch.cuda.is_available():
                logs["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            self._tokens, self._since = 0, time.perf_counter()
            if self.expert_load is not None:
                self._log_expert_load(logs)
        super().log(logs, start_time)


class PretrainingTrainer(IndictuneTrainerMixin, Trainer):
    """Continued pretraining on packed documents."""


class ChatTrainer(IndictuneTrainerMixin, SFTTrainer):
    """SFT on chat data, with the loss from the model's own forward.

    SFTTrainer scores tokens by multiplying hidden states with ``lm_head.weight`` directly. That skips
    PEFT's wrappers on the output layer, so the trainable rows of new tokens (or a fully trained output
    layer) would get no gradient; the model's forward goes through them.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False
        return IndictuneTrainerMixin.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
