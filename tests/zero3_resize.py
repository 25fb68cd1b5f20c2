"""Helper for test_tokenizer: load a model (under DeepSpeed ZeRO-3 on CPU, or not), resize it for an
extended tokenizer with training.tokenizer.embeddings, print its embedding matrices as JSON.

    python tests/zero3_resize.py MODEL_DIR BASE_TOKENIZER EXTENDED_TOKENIZER PORT ZERO3(0|1)
"""

import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[4], RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
import deepspeed
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers.integrations import HfDeepSpeedConfig

sys.path.insert(0, os.getcwd())
from indictune.training.tokenizer.embeddings import resize_for_tokenizer

model_dir, base_dir, ext_dir, zero3 = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5] == "1"
ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
if zero3:
    deepspeed.init_distributed(dist_backend="gloo")
    keep = HfDeepSpeedConfig(ds)
model = LlamaForCausalLM.from_pretrained(model_dir)
partitioned = hasattr(model.get_input_embeddings().weight, "ds_id")
base_tok, ext_tok = AutoTokenizer.from_pretrained(base_dir), AutoTokenizer.from_pretrained(ext_dir)
new_ids = resize_for_tokenizer(model, ext_tok, base_tok)
out = {"partitioned": partitioned, "new_ids": new_ids}
for name, layer in (("input", model.get_input_embeddings()), ("output", model.get_output_embeddings())):
    with deepspeed.zero.GatheredParameters([layer.weight]) if zero3 else torch.no_grad():
        out[name] = layer.weight.detach().clone().tolist()
print("RESULT " + json.dumps(out))
