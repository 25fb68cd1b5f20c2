"""A Llama whose MLPs are mixtures of separate expert modules, run only for the tokens routed to them: the layout of
transformers 4.x's Mixtral and of remote-code MoE models (DeepSeek's, for one). Loaded with trust_remote_code."""

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM


class ListMoeConfig(LlamaConfig):
    model_type = "list_moe"

    def __init__(self, num_local_experts=4, num_experts_per_tok=1, **kwargs):
        self.num_local_experts = num_local_experts
        self.num_experts_per_tok = num_experts_per_tok
        super().__init__(**kwargs)


class Expert(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)

    def forward(self, x):
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class ListMoeBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_local_experts, bias=False)
        self.experts = nn.ModuleList(Expert(config) for _ in range(config.num_local_experts))

    def forward(self, hidden_states):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        weights, chosen = torch.softmax(self.gate(x), dim=-1).topk(self.top_k, dim=-1)
        out = torch.zeros_like(x)
        for index, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == index)
            if len(token):  # an expert no token chose does not run
                out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        return out.reshape(shape)


class ListMoeForCausalLM(LlamaForCausalLM):
    config_class = ListMoeConfig

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            layer.mlp = ListMoeBlock(config)
        self.post_init()
