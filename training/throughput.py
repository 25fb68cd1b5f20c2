"""Training throughput: tokens per second per accelerator and model FLOPs utilisation (MFU).

FLOPs per token follow torchtitan's convention: 6·N + 12·L·d·T for full training, where N counts the
parameters that do matrix products (everything but the input embedding lookup; the output layer
counts), L the layers, d the attention width and T the sequence length. With a frozen base (LoRA),
the base weights need no weight gradients: 4·N, plus 6 per trainable parameter. Recomputation by
gradient checkpointing is not counted, so MFU compares runs with and without it fairly.
"""

from __future__ import annotations

import torch

# Dense bf16 peaks without sparsity, in TFLOPS, matched against torch.cuda.get_device_name in this order.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("A10G", 125.0),
    ("L4", 121.0),
)


def peak_tflops(override: float | None = None) -> float | None:
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def _numel(param: torch.nn.Parameter) -> int:
    return getattr(param, "ds_numel", param.numel())  # the full size of a ZeRO-3 partitioned parameter


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token of `model` (a transformers or PEFT model) at sequence length `seq_len`."""
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is None or output.weight is embedding
    adapter_markers = ("lora_", "trainable_tokens_", "modules_to_save")
    matmul = trainable_extra = 0
    base_trainable = False
    for name, param in model.named_parameters():
        if any(marker in name for marker in adapter_markers):
            trainable_extra += _numel(param) if param.requires_grad else 0
            continue
        if param is embedding and not tied:
            base_trainable |= param.requires_grad
            continue
        matmul += _numel(param)
        base_trainable |= param.requires_grad
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    if base_trainable:
        return 6 * (matmul + trainable_extra) + attention
    return 4 * matmul + 6 * trainable_extra + attention
