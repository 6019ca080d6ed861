#!/usr/bin/env bash
# Issue 19 on the GPU machine: flux-mini-64 continued on the graded scene grammar (6-8 shapes, fine textures; the
# text encoder grows to 72 words), then its adapters on the deployed schedule family. Both runs are the CPU
# commands of the README (resumable, same files), here with CUDA + bf16 and short budgets.
# Usage (device machine): OUT=... bash scripts/gpu_graded.sh      CPU smoke: DEVICE=cpu TRAIN_MIN=0.1 ADAPT_STEPS=2 ...
# $OUT gets log.txt and model.tgz.part-* (the continued model folder with its adapters + curves), re-packed after
# each phase so a run stopped at its time limit still returns the last finished phase.
set -uo pipefail
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-cuda}
TRAIN_MIN=${TRAIN_MIN:-5}
ADAPT_STEPS=${ADAPT_STEPS:-3000}
BATCH=${BATCH:-128}
W=${WORKDIR:-/tmp/graded}
AMP=$([ "$DEVICE" = cuda ] && echo --bf16)
DT=$([ "$DEVICE" = cuda ] && echo bf16 || echo fp32)
export PYTHONUNBUFFERED=1
mkdir -p "$W" "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
pack() {  # model folder + curves, split under the 16 MiB file limit
  tar -czf "$W/model.tgz" -C "$W" model work/loss.csv work/eval.csv adapt/quality.csv adapt/eval.csv 2>/dev/null
  rm -f "$OUT/model.tgz".part-*
  split -b 15M -d "$W/model.tgz" "$OUT/model.tgz.part-"
  log "packed: $(du -h "$W/model.tgz" | cut -f1)"
}
command -v nvidia-smi >/dev/null && nvidia-smi -L | tee -a "$OUT/log.txt"
log "continue flux-mini-64 on the graded grammar for $TRAIN_MIN min"
python -m ddit_export.zoo.train --init ddit_export/zoo/weights/flux-mini-64 --out $W/model --work $W/work \
    --mix 32,64 --side 64 --name flux-mini-64 --graded-frac 0.5 --batch $BATCH --lr 5e-4 --warmup-steps 100 \
    --minutes $TRAIN_MIN --ckpt-minutes 1.5 --threads 2 --no-samples --device $DEVICE $AMP \
    --workers ${WORKERS:-6} >"$W/train.log" 2>&1
log "train rc=$?"; tail -n 3 "$W/train.log" | tee -a "$OUT/log.txt"; tail -n 2 $W/work/eval.csv | tee -a "$OUT/log.txt"
pack
log "adapters on the deployed family (ladders + step-cache plans), $ADAPT_STEPS steps"
python -m ddit_export.cli adapt --model $W/model --height 64 --width 64 --device $DEVICE --dtype $DT \
    --steps $ADAPT_STEPS --lr 3e-3 --batch 32 --rank 32 --num-prompts ${NUM_PROMPTS:-512} --coarse-mix 0.5 \
    --schedules both --quality-minutes ${QUALITY_MIN:-1} --patience 4 --eval-images ${EVAL_IMAGES:-16} \
    --work $W/adapt --quiet >"$W/adapt.log" 2>&1
log "adapt rc=$?"; tail -n 6 "$W/adapt.log" | tee -a "$OUT/log.txt"
pack
log done
