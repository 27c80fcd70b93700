#!/usr/bin/env bash
# Train the cascade on one CUDA GPU, resuming from the shipped weights or from an earlier run.
#
# Run from the repository root on the GPU machine, with the training shards and (where the
# machine lacks them) the wheels of this project's pure-Python dependencies beside the code:
#
#   build/shards/   packed training patches, made on a machine that has the data:
#                   python -m cascade.training.data pack --data-dir DATA --split train --patch 128 \
#                       --count 11000 --quality 90 --shard-mb 15 --out build/shards   # 9,593 patches, 61 MiB
#                   (where what travels is capped, mind the checkout: with the atlas it is 53 MiB,
#                   and --count 2000 --quality 85 gives 1,678 patches in 9.6 MB)
#   build/wheels/   optional: pip download --no-deps -d build/wheels diffusers==0.42.1 importlib_metadata zipp
#   build/site.zip  optional, smaller: those packages unpacked and zipped (2.3 MB without diffusers'
#                   pipelines/ and modular_pipelines/ subfolders, which training never imports)
#   build/gpu-run/  optional: the checkpoint.pt of an earlier call, to continue it
#
#   OUT=/path/for/results MINUTES=9 STEPS=40000 BATCH=256 scripts/train_gpu.sh
#
# Writes $OUT/checkpoint.pt (step, weights, optimizer, EMA: copy it to build/gpu-run/ to resume),
# $OUT/log.jsonl, $OUT/train.log and the EMA weights in $OUT/weights/ (copy them to cascade/weights/).
set -euo pipefail
: "${OUT:?set OUT to the results directory}"
MINUTES=${MINUTES:-9}   # one call's training time; the run resumes where it stopped
STEPS=${STEPS:-40000}   # length of the cosine schedule over all calls
BATCH=${BATCH:-256}
export PYTHONUNBUFFERED=1

if [ -d build/wheels ] && ! python3 -c "import diffusers" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site build/wheels/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -f build/site.zip ] && export PYTHONPATH=$PWD/build/site.zip${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

mkdir -p "$OUT" build/gpu-run
run=build/gpu-run
start=(--init cascade/weights)
[ -f "$run/checkpoint.pt" ] && start=()
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m cascade.training.train --data build/shards --run-dir "$run" "${start[@]}" --device cuda \
    --batch-size "$BATCH" --lr 4e-4 --warmup 300 --steps "$STEPS" --context-pad 72 --checkpoint-every 1000 \
    --own-parent-start 0 --time-limit "$MINUTES" --export "$OUT/weights" 2>&1 | tr '\r' '\n' | grep -v '^train: .*it/s' \
    | tee "$OUT/train.log"
cp "$run/checkpoint.pt" "$run/log.jsonl" "$OUT/"
