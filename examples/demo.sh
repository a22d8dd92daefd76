#!/usr/bin/env bash
# The demo: a real study on the embedded backend, start to finish, on this machine.
# Expects `submit` and `worker` on PATH (the Makefile puts the venv there) and SPOTSWEEP_HOME set.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=-1
# What this machine would cost as a spot GPU instance (about a g4dn.xlarge), so that the demo shows spend.
export SPOTSWEEP_PRICE_PER_HOUR="${SPOTSWEEP_PRICE_PER_HOUR:-0.20}"

echo "== 1. a synthetic flower dataset (5 classes x 40 images, 128 px), split into train and a 20% test holdout"
submit dataset synth data/flowers-raw --classes 5 --per-class 40 --size 128 --seed 7
submit dataset prepare data/flowers-raw data/flowers --test-fraction 0.2 --seed 7

echo "== 2. the study: $(python3 -c 'import json;d=json.load(open("examples/sweep.json"));print(d["name"])') (examples/sweep.json)"
submit study examples/sweep.json --dry-run --format table
submit study examples/sweep.json

echo "== 3. two workers pull jobs until the queue is empty"
worker run --until-empty --concurrency 2

echo "== 4. status and leaderboard"
submit status
submit leaderboard --top 10
submit leaderboard --matrix architecture optimizer
