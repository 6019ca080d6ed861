#!/usr/bin/env bash
# flux-mini at 64x64 on the GPU machine (issue 11): two runs side by side on one GPU, then adapters at 64x64.
#   A: progressive: flux-mini's shipped weights and architecture, continued on 32x32 and 64x64 batches;
#   B: a wider trunk (width 192, 3+3 blocks, 23 MB) trained from scratch on the same mix.
# Usage (device machine): OUT=... bash scripts/gpu_train64.sh      CPU smoke: DEVICE=cpu TRAIN_MIN=0.1 ADAPT_MIN=0.05 ...
# Everything lands in $OUT as few files: log.txt, A.tgz, B.tgz.part-* (model folder + loss/eval csv), re-packed
# after each phase so a run stopped at its time limit still returns the last finished phase.
set -uo pipefail
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-cuda}
TRAIN_MIN=${TRAIN_MIN:-3.5}
ADAPT_MIN=${ADAPT_MIN:-1.5}
BATCH=${BATCH:-128}
W=${WORKDIR:-/tmp/t64}
AMP=$([ "$DEVICE" = cuda ] && echo --bf16)
DT=$([ "$DEVICE" = cuda ] && echo bf16 || echo fp32)
export PYTHONUNBUFFERED=1
mkdir -p "$W" "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
pack() {  # pack RUN: model folder + curves, split under the 16 MiB file limit
  local r=$1
  tar -czf "$W/$r.tgz" -C "$W/$r" model work/loss.csv work/eval.csv 2>/dev/null
  rm -f "$OUT/$r.tgz".part-*
  split -b 15M -d "$W/$r.tgz" "$OUT/$r.tgz.part-"
  log "packed $r: $(du -h "$W/$r.tgz" | cut -f1)"
}
command -v nvidia-smi >/dev/null && nvidia-smi -L | tee -a "$OUT/log.txt"
common="--mix 32,64 --side 64 --name flux-mini-64 --device $DEVICE $AMP --workers ${WORKERS:-6} --batch $BATCH
        --minutes $TRAIN_MIN --ckpt-minutes 1.5 --threads 2 --no-samples"
log "train A and B for $TRAIN_MIN min"
python -m ddit_export.zoo.train --out $W/A/model --work $W/A/work $common --init ddit_export/zoo/weights/flux-mini \
    --lr 5e-4 --warmup-steps 100 >"$W/A.log" 2>&1 &
pa=$!
python -m ddit_export.zoo.train --out $W/B/model --work $W/B/work $common --width 192 --heads 4 --double-blocks 3 \
    --single-blocks 3 --lr 1e-3 --warmup-steps 200 >"$W/B.log" 2>&1 &
pb=$!
wait $pa; ra=$?; wait $pb; rb=$?
log "train rc A=$ra B=$rb"; tail -n 3 "$W/A.log" "$W/B.log" | tee -a "$OUT/log.txt"
for r in A B; do tail -n 2 $W/$r/work/eval.csv | tee -a "$OUT/log.txt"; pack $r; done
log "adapters at 64x64 for $ADAPT_MIN min"
for r in A B; do
  python -m ddit_export.cli adapt --model $W/$r/model --height 64 --width 64 --device $DEVICE --dtype $DT \
      --minutes $ADAPT_MIN --lr 5e-3 --batch 32 --rank 32 --num-prompts ${NUM_PROMPTS:-384} --coarse-mix 0.25 --eval-images ${EVAL_IMAGES:-16} \
      --work $W/$r/adapt >"$W/$r-adapt.log" 2>&1 &
done
wait
for r in A B; do tail -n 12 "$W/$r-adapt.log" | tee -a "$OUT/log.txt"; mkdir -p $W/$r/work; pack $r; done
log done
