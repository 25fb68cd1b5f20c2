"""Mixture-of-experts models: their MoE blocks as ZeRO-3 leaves, the router's load-balancing loss in the trained
loss, the load each expert gets, and LoRA on experts stored as fused 3-D parameters.

transformers 5 stores every MoE architecture it ships (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3, GPT-OSS, ...)
the same way: one experts module per layer whose parameters are [num_experts, out, in] tensors, inside a block that
also holds the router (and shared experts, where the architecture has them). That layout, and the older one of a
list of separate expert modules, is what is detected here, so no table of model types is needed.
"""

from __future__ import annotations

import torch
from torch import nn


def _dims(parameter: nn.Parameter) -> int:
    return len(getattr(parameter, "ds_shape", parameter.shape))  # ZeRO-3 leaves an empty tensor, its shape aside


def expert_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of each module that holds a layer's experts as 3-D parameters."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if hasattr(module, "num_experts") and any(_dims(p) == 3 for p in module.parameters(recurse=False))
    ]


def moe_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of each MoE block: the module holding a layer's router and its experts, either fused (the
    parent of an experts module) or separate (a module whose ``experts`` is a list of modules, as in transformers
    4.x and remote-code models such as DeepSeek's). Which experts run depends on the tokens each rank sees, so
    ZeRO-3 must fetch such a block whole (see register_zero3_leaves)."""
    fused = {id(module) for _, module in expert_modules(model)}
    return [
        (name, module)
        for name, module in model.named_modules()
        if id(getattr(module, "experts", None)) in fused
        or (isinstance(getattr(module, "experts", None), nn.ModuleList) and len(module.experts) > 1)
    ]


def is_moe(model: nn.Module) -> bool:
    """Whether `model` routes tokens to experts (also once peft has wrapped its experts)."""
    return bool(expert_modules(model) or moe_blocks(model))


class MoESetupError(ValueError):
    """An MoE setting that cannot train as asked; the message says what to set instead."""


def register_zero3_leaves(model: nn.Module) -> list[str]:
    """Flag every MoE block as a ZeRO-3 leaf, so that DeepSpeed fetches the block's parameters (router, all
    experts, their LoRA) once, when the block starts, instead of module by module; returns the classes flagged.

    Where experts are separate modules that run only for their tokens, ranks whose tokens chose different experts
    would otherwise fetch different parameters, and the gathers stop matching: NCCL waits for ever (DeepSpeed
    #4966, #5008), gloo aborts. Fused experts run on every rank whatever the routing, so there the registration
    only makes a block one gather. Call it on the model before peft wraps it.
    """
    from deepspeed.utils import set_z3_leaf_modules

    classes = sorted({type(block) for _, block in moe_blocks(model)}, key=lambda cls: cls.__name__)
    if classes:
        set_z3_leaf_modules(model, classes)
    return [cls.__name__ for cls in classes]


def router_aux_loss_coefficient(model: nn.Module, requested: float | None) -> float:
    """Set the model up to return its router logits and load-balancing loss, and return the loss's weight: the
    recipe's ``router_aux_loss_coef``, else the model config's (0.02 for Mixtral-8x7B), 0 for a model without one.

    transformers adds ``coef * aux_loss`` inside the model's forward, and Trainer then multiplies the whole loss by
    the number of ranks and leaves gradient accumulation to it, so the router loss would weigh ranks x accumulation
    steps times what the recipe says (transformers #48690). The model's own weight is set to 0 here and the trainer
    adds the term once, per micro-batch mean (IndictuneTrainerMixin.compute_loss).
    """
    config = model.config.get_text_config()
    if not hasattr(config, "output_router_logits"):
        if requested:
            raise MoESetupError(
                f"router_aux_loss_coef is {requested}, but {type(model).__name__} has no router load-balancing loss; "
                "remove router_aux_loss_coef"
            )
        return 0.0
    coef = getattr(config, "router_aux_loss_coef", 0.0) if requested is None else requested
    if coef and not hasattr(model, "router_aux_loss_coef"):
        raise MoESetupError(
            f"{type(model).__name__} reads its router loss weight from its config, which would count it once per "
            "rank; set router_aux_loss_coef: 0"
        )
    # Router logits stay on for a zero weight too: the expert load is logged from them.
    config.output_router_logits = True
    config.router_aux_loss_coef = coef
    if hasattr(model, "router_aux_loss_coef"):
        model.router_aux_loss_coef = 0.0
    return float(coef)


def experts_per_token(model: nn.Module) -> int | None:
    return getattr(model.config.get_text_config(), "num_experts_per_tok", None)


# Names transformers 4.x gave the projections of separate expert modules, by the fused parameter that holds them now.
FUSED_FROM_SEPARATE = {"gate_up_proj": ("w1", "w3", "gate_proj", "up_proj"), "down_proj": ("w2", "down_proj")}


def fused_expert_targets(model: nn.Module, target_modules: set[str] | list[str] | str | None) -> list[str]:
    """The fused expert parameters (``mlp.experts.gate_up_proj``, ...) that LoRA target names written for separate
    expert modules mean: ``w1``/``w3``/``gate_proj``/``up_proj`` and ``w2``/``down_proj``. In transformers 5 those
    names match no expert module (or only a shared expert), and peft would train the experts not at all."""
    if not isinstance(target_modules, (list, tuple, set)):
        return []
    wanted = set(target_modules)
    targets = set()
    for name, module in expert_modules(model):
        location = ".".join(name.split(".")[-2:])  # e.g. mlp.experts, the same in every layer
        for fused, separate in FUSED_FROM_SEPARATE.items():
            parameter = getattr(module, fused, None)
            if isinstance(parameter, nn.Parameter) and _dims(parameter) == 3 and wanted & set(separate):
                targets.add(f"{location}.{fused}")
    return sorted(targets)


class ExpertLoad:
    """The tokens a run routes to each expert of each layer, and its router loss, from the forwards' outputs."""

    def __init__(self, top_k: int):
        self.top_k = top_k
        self.counts: torch.Tensor | None = None  # [layers, experts], since last taken
        self.aux_sum, self.aux_batches = None, 0  # a tensor, summed on the device: no sync per micro-batch

    def add(self, router_logits: tuple[torch.Tensor, ...] | None, aux_loss: torch.Tensor | None, mask=None) -> None:
        if aux_loss is not None:
            aux = aux_loss.detach().double()
            self.aux_sum = aux if self.aux_sum is None else self.aux_sum + aux
            self.aux_batches += 1
        if not router_logits:
            return
        with torch.no_grad():
            layers = torch.stack([logits.reshape(-1, logits.shape[-1]).float() for logits in router_logits])
            chosen = layers.topk(self.top_k, dim=-1).indices.reshape(len(layers), -1)  # [layers, tokens x top_k]
            weights = torch.ones_like(chosen, dtype=torch.float64)
            if mask is not None and mask.numel() * self.top_k == chosen.shape[1]:  # padding is routed but not counted
                weights = mask.reshape(-1, 1).expand(-1, self.top_k).reshape(1, -1).to(weights).expand_as(weights)
            counts = torch.zeros(layers.shape[:1] + layers.shape[-1:], dtype=torch.float64, device=chosen.device)
            counts.scatter_add_(1, chosen, weights)
        self.counts = counts if self.counts is None else self.counts + counts

    def take(self) -> tuple[torch.Tensor | None, float, int]:
        """The counts, the router loss summed and the micro-batches it was summed over, since last taken."""
        taken = self.counts, 0.0 if self.aux_sum is None else float(self.aux_sum), self.aux_batches
        self.counts, self.aux_sum, self.aux_batches = None, None, 0
        return taken


def relative_load(counts: torch.Tensor) -> torch.Tensor:
    """Each expert's share of its layer's routed tokens relative to an even share: 1.0 is balanced, an expert near
    0 is collapsing (the router loss exists to keep it up)."""
    return counts / counts.sum(dim=1, keepdim=True).clamp(min=1) * counts.shape[1]


def load_summary(counts: torch.Tensor) -> dict[str, float]:
    """The lowest and highest relative load over all layers and experts, for the training log."""
    share = relative_load(counts)
    return {"expert_load_min": round(float(share.min()), 4), "expert_load_max": round(float(share.max()), 4)}


def load_table(counts: torch.Tensor, top_k: int) -> dict:
    """expert_load.json: the relative load of every expert of every layer over the run."""
    return {
        "tokens_per_layer": int(counts[0].sum()) // top_k,
        "experts_per_token": top_k,
        "relative_load": [[round(float(x), 4) for x in layer] for layer in relative_load(counts)],
    }
