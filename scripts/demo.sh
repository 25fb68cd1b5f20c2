#!/usr/bin/env bash
# The whole chain on the embedded sample, on the CPU, in a few minutes:
# prepare -> tiny base tokenizer and model (English only) -> extend the tokenizer with Indic pieces
# -> LoRA continued pretraining on Indic text -> chat SFT -> evaluate base vs adapted -> leaderboard.
# Each step is one of the user commands from the README, with a recipe from recipes/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
ACCELERATE=${ACCELERATE:-accelerate}
export TOKENIZERS_PARALLELISM=false
start=$(date +%s)
step() { printf '\n== [%3ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }

rm -rf runs/demo  # the demo always starts fresh

step "1/8 prepare the sample corpus"
"$PYTHON" scripts/prepare_data.py --config recipes/data/sample.yaml

step "2/8 train the tiny base tokenizer (English only)"
"$PYTHON" scripts/extend_tokenizer.py --config recipes/tokenizer/demo-base.yaml

step "3/8 pretrain the tiny base model on English"
"$ACCELERATE" launch --config_file recipes/accelerate/cpu.yaml scripts/train.py \
    --config recipes/train/demo/base-pretrain.yaml --disable_tqdm true

step "4/8 extend the base tokenizer with Indic pieces"
"$PYTHON" scripts/extend_tokenizer.py --config recipes/tokenizer/demo-extend.yaml

step "5/8 LoRA continued pretraining on Indic text, new embedding rows trainable"
"$ACCELERATE" launch --config_file recipes/accelerate/cpu.yaml scripts/train.py \
    --config recipes/train/demo/cpt-lora.yaml --disable_tqdm true

step "6/8 chat SFT of the merged model, loss on assistant replies"
"$ACCELERATE" launch --config_file recipes/accelerate/cpu.yaml scripts/train.py \
    --config recipes/train/demo/sft-lora.yaml --disable_tqdm true

step "7/8 evaluate the base and the adapted model"
"$PYTHON" scripts/evaluate.py --config recipes/eval/demo.yaml --model runs/demo/base --adapter runs/demo/cpt-lora

step "8/8 render the leaderboard"
"$PYTHON" scripts/leaderboard.py --db runs/demo/leaderboard.sqlite --out runs/demo/leaderboard

step "done"
cat <<MSG
Outputs:
  prepared data      runs/demo/data/           (report: runs/demo/data/report.md)
  base tokenizer     runs/demo/tokenizer-base/
  base model         runs/demo/base/
  extended tokenizer runs/demo/tokenizer/      (fertility: runs/demo/tokenizer/fertility.md)
  LoRA adapter       runs/demo/cpt-lora/       (lineage.json, recipe.yaml, merged/; TensorBoard logs under runs/demo/cpt-lora/runs/)
  chat SFT adapter   runs/demo/sft-lora/
  evaluation         runs/demo/eval/results.json
  leaderboard        runs/demo/leaderboard/leaderboard.md, leaderboard.html, *.png
MSG
