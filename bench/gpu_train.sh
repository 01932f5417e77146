#!/usr/bin/env bash
# The model issue on a lent GPU machine (device tool): train a larger CLOUD model than this 2-core CPU allows
# (the shipped one is 4 layers x 128 wide, two hours on one thread) and bring back its card, with the test
# metrics `train` computes, and its weights. Results under $OUT.
#
# Prepared here (the GPU machine has no network and no ../shared), under the ignored .gpu/ and .whl/:
#   mkdir -p .gpu/data/cloud_reference
#   cp ../shared/data/{mp37k,mp_elastic3k,phonon_thermo1k,perov5_partial,carbon24_partial}.parquet .gpu/data/
#   cp ../shared/data/cloud_reference/pretrain_cloud_10k.csv .gpu/data/cloud_reference/
#   wheels as for bench/gpu_checks.sh, but in .whl-train/ and with polars 1.20.0 (31 MiB, not 1.33.1's 37:
#   the call carries at most 64 MiB, and the tree is ~9, these data 13)
# Run (device tool): carry [".whl-train", ".gpu/data"], command `bash bench/gpu_train.sh` (D=384 L=8 ... before
# it to change the size or recipe; defaults below), timeout_s 590.
# Back under $OUT: machine.txt, train.log, card.json and the weights in 15 MiB parts (the device returns files
# of up to 16 MiB): `cat model.safetensors.part-* > FOLDER/model.safetensors`, card.json beside it, and
# `cloud-screen evaluate --model FOLDER --data ../shared/data --out metrics.json` here checks the card's numbers.
# Dry run on a CPU machine: PY=.venv/bin/python OUT=/tmp/out DEVICE=cpu SMALL=1 bash bench/gpu_train.sh
set -u
WHEELS=${WHEELS:-.whl-train}
source "$(dirname "$0")/gpu_env.sh"
if [ -n "${SMALL:-}" ]; then  # dry run: the same steps, a tiny model
    D=32 L=1 H=2 PRE=1 FINE=2 BATCH=256 MINUTES=5
fi
# Size and recipe: the shipped recipe (pool pairs, element features, numeric amounts, lr 7e-4) on a wider,
# deeper model and a larger batch; fine-tuning stops at MINUTES (from the start, data encoding included) with
# the best epoch so far, so the bundle is written inside the call's limit whatever the GPU's speed.
export D=${D:-256} L=${L:-6} H=${H:-8} PRE=${PRE:-20} FINE=${FINE:-100} BATCH=${BATCH:-256} LR=${LR:-7e-4}
export MINUTES=${MINUTES:-7} DATA=$PWD/.gpu/data MODEL=/tmp/cloud-model DEVICE
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/cloud-cache}  # encoded training strings
timeout 570 $PY - <<'EOF' 2>&1 | tee "$OUT/train.log"
import logging
import os
import sys

from cloud_core.train import TrainSettings, train

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
e = os.environ
sys.argv = ["bench/gpu_train.sh", *(f"{k}={e[k]}" for k in ("D", "L", "H", "PRE", "FINE", "BATCH", "LR", "MINUTES"))]
settings = TrainSettings(
    device=e["DEVICE"],
    d_model=int(e["D"]),
    n_layer=int(e["L"]),
    n_head=int(e["H"]),
    pretrain_epochs=int(e["PRE"]),
    finetune_epochs=int(e["FINE"]),
    batch_size=int(e["BATCH"]),
    lr=float(e["LR"]),
    time_limit_minutes=float(e["MINUTES"]),
    data_dir=e["DATA"],
    out=e["MODEL"],
    name=f"cloud-screen-gpu-{e['D']}x{e['L']}",
)
print("bundle written to", train(settings), flush=True)
EOF
cp "$MODEL/card.json" "$OUT/" && split -b 15M -d "$MODEL/model.safetensors" "$OUT/model.safetensors.part-"
ls -la "$OUT"
