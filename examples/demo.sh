#!/usr/bin/env bash
# The demo: a real study on the embedded backend, start to finish, on this machine.
# Expects `submit` and `worker` on PATH (the Makefile puts the venv there) and SPOTSWEEP_HOME set.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=-1
# What this machine would cost as a spot GPU instance (about a g4dn.xlarge), so that the demo shows spend.
export SPOTSWEEP_PRICE_PER_HOUR="${SPOTSWEEP_PRICE_PER_HOUR:-0.20}"
STUDY=examples/sweep.json
SIZE=$(python3 -c 'import json;print(json.load(open("examples/sweep.json"))["image_size"])')

echo "== 1. a synthetic flower dataset (5 classes x 40 images, $SIZE px), split into train and a 20% test holdout"
submit dataset synth data/flowers-raw --classes 5 --per-class 40 --size "$SIZE" --seed 7
submit dataset prepare data/flowers-raw data/flowers --test-fraction 0.2 --seed 7

echo "== 2. pretrained weights for mobilenet_v2's frozen base"
if error=$(worker weights imagenet mobilenet_v2 --image-size "$SIZE" 2>&1 >/dev/null); then
    echo "ImageNet weights for mobilenet_v2: downloaded"
else
    # Offline (or blocked): a frozen random base would leave mobilenet_v2 at chance, so calibrate one.
    reason=$(tail -n 1 <<<"$error"); reason=${reason##*-- }; reason=${reason##*] }
    echo "ImageNet weights cannot be downloaded here ($reason): mobilenet_v2's frozen base uses random weights calibrated on the training images instead (above chance, far below ImageNet's)"
    key="weights/mobilenet_v2-$SIZE-calibrated.weights.h5"
    if ! output=$(worker weights calibrate mobilenet_v2 data/flowers --image-size "$SIZE" --to "$key" 2>&1); then
        tail -n 3 <<<"$output" >&2
        exit 1
    fi
    STUDY=data/sweep-calibrated.json
    python3 - "$key" "$STUDY" <<'PY'
import json, sys
study = json.load(open("examples/sweep.json"))
study["parameters"]["weights"] = [sys.argv[1]]
json.dump(study, open(sys.argv[2], "w"), indent=1)
PY
fi

echo "== 3. the study: $(python3 -c 'import json;d=json.load(open("examples/sweep.json"));print(d["name"])') ($STUDY)"
submit study "$STUDY" --dry-run --format table
submit study "$STUDY"

echo "== 4. two workers pull jobs until the queue is empty"
worker run --until-empty --concurrency 2

echo "== 5. status and leaderboard"
submit status
submit leaderboard --top 10
submit leaderboard --matrix architecture optimizer
