#!/usr/bin/env bash
# README command 1: set everything up, then run the main job on the bundled default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${LINGREG_VENV:-.venv}/bin/lingreg" demo "$@"
