"""Helper for test_distributed: run scripts/train.py under `accelerate launch`, then score a fixed text
with the trained (possibly ZeRO-3 sharded) model on every rank; rank 0 saves what it saw to
<output_dir>/trained.pt. For an MoE model each rank also scores a line of its own and saves how many of
its tokens each expert of each layer got, to <output_dir>/routing-<rank>.pt.

    accelerate launch ... tests/distributed_train.py TEXT_FILE <train.py arguments>
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train.py")
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)

if os.environ.get("WITHOUT_ZERO3_LEAVES"):  # to show what the registration prevents
    from indictune.training import moe

    moe.register_zero3_leaves = lambda model: []
lines = Path(sys.argv[1]).read_text().splitlines()
trainer = train.main(sys.argv[2:])
model = trainer.model.eval()
ids = torch.tensor([trainer.processing_class(lines[0])["input_ids"]])
with torch.no_grad():
    logits = model(input_ids=ids).logits
    top_k = getattr(model.config, "num_experts_per_tok", None)
    if top_k and hasattr(
        model.config, "output_router_logits"
    ):  # every rank scores a text of its own at the same time: routing differs between the ranks
        rank = trainer.accelerator.process_index
        own = torch.tensor([trainer.processing_class(lines[1 + rank])["input_ids"]])
        router_logits = model(input_ids=own, output_router_logits=True).router_logits
        experts = router_logits[0].shape[-1]
        routed = [
            torch.bincount(layer.topk(top_k, dim=-1).indices.flatten(), minlength=experts) for layer in router_logits
        ]
        torch.save(torch.stack(routed), Path(trainer.args.output_dir) / f"routing-{rank}.pt")
if trainer.accelerator.is_main_process:
    plugin = trainer.accelerator.state.deepspeed_plugin
    torch.save(
        {
            "input_ids": ids,
            "logits": logits,
            "world_size": trainer.accelerator.num_processes,
            "zero_stage": plugin.zero_stage if plugin else None,
            "sharded": any(hasattr(p, "ds_id") for p in model.parameters()),
            "vocab": json.loads((Path(trainer.args.output_dir) / "lineage.json").read_text())["new_token_ids"],
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "log_history": trainer.state.log_history,
        },
        Path(trainer.args.output_dir) / "trained.pt",
    )
