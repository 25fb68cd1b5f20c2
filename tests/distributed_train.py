"""Helper for test_distributed: run scripts/train.py under `accelerate launch`, then score a fixed text
with the trained (possibly ZeRO-3 sharded) model on every rank; rank 0 saves what it saw to
<output_dir>/trained.pt.

    accelerate launch ... tests/distributed_train.py TEXT_FILE <train.py arguments>
"""

import importlib.util
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train.py")
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)

text = Path(sys.argv[1]).read_text().splitlines()[0]
trainer = train.main(sys.argv[2:])
model = trainer.model.eval()
ids = torch.tensor([trainer.processing_class(text)["input_ids"]])
with torch.no_grad():
    logits = model(input_ids=ids).logits
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
