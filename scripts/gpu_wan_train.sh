#!/usr/bin/env bash
# Continue wan-mini's training on the GPU machine (issue 23 item 1): the same resumable run the CPU sessions
# continue (zoo/train_wan.py), on CUDA with bf16 autocast, then the motion probe on both splits.
#
#   WORK=runs/wan-cont MINUTES=7 OUT=/some/folder bash scripts/gpu_wan_train.sh       # from the repository root
#   bash scripts/gpu_wan_train.sh --dry-run      only the checks (CUDA, the run folder), then exit
#
# WORK: a train_wan run folder (ckpt.pt, state.json; git-ignored under runs/: carry it, e.g. carry=["runs/wan-cont"]:
# its ckpt.pt is about 30 MB). Without WORK/ckpt.pt the run starts (--init, a fresh optimiser) from INIT: by default
# checkpoints/wan-mini (the continued weights the CPU sessions commit, see checkpoints/README.md) when it is there,
# else the shipped wan-mini. Copy $OUT/model over checkpoints/wan-mini to keep what the run learned. The
# checkpoint is the same file on either device: copy WORK back and a CPU session resumes it. MINUTES of training
# (default 7) leave room in a 10-minute call for the probe; checkpoints every CKPT_MINUTES (default 2).
# Output in $OUT: train.log, probe.jsonl (the probe on PROBE_N clips per split, default 32), env.txt, and WORK's
# state.json, loss.png, samples.png, ckpt.pt and model/ (the exported EMA weights).
set -uo pipefail

DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run|--check-only) DRY=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_wan_train: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done
: "${WORK:=runs/wan-cont}"
: "${MINUTES:=7}"
: "${CKPT_MINUTES:=2}"
: "${PROBE_N:=32}"
: "${OUT:=out/gpu-wan-train}"
if [[ -z "${INIT:-}" ]]; then
  if [[ -f checkpoints/wan-mini/ddit_model.json ]]; then INIT=checkpoints/wan-mini; else INIT=ddit_export/zoo/weights/wan-mini; fi
fi
PY=${PYTHON:-python}

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "error: gpu_wan_train needs a CUDA device (torch sees none); on the CPU run python -m ddit_export.zoo.train_wan" >&2
  exit 3
fi
if [[ -f "$WORK/ckpt.pt" ]]; then
  echo "resuming $WORK"
elif [[ -f "$INIT/ddit_model.json" ]]; then
  echo "no $WORK/ckpt.pt: starting from $INIT"
else
  echo "error: INIT=$INIT is not a wan-mini model folder (no ddit_model.json)" >&2
  exit 2
fi
[[ "$DRY" == 1 ]] && { echo "checks passed"; exit 0; }

mkdir -p "$OUT"
{ $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null; } > "$OUT/env.txt"
$PY -m ddit_export.zoo.train_wan --work "$WORK" --minutes "$MINUTES" --ckpt-minutes "$CKPT_MINUTES" --device cuda \
  --bf16 --layers 6 --batch 32 --probe-n 16 --init "$INIT" 2>&1 | tee "$OUT/train.log"
rc=${PIPESTATUS[0]}
cp -r "$WORK/state.json" "$WORK/loss.png" "$WORK/samples.png" "$WORK/ckpt.pt" "$WORK/model" "$OUT/" 2>/dev/null
[[ $rc == 0 ]] || { echo "error: training exited with $rc (see $OUT/train.log)" >&2; exit "$rc"; }
$PY -m ddit_export.zoo.train_wan --probe "$WORK/model" --probe-n "$PROBE_N" --threads 8 > "$OUT/probe.jsonl"
cat "$OUT/probe.jsonl"
