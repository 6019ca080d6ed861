#!/usr/bin/env bash
# GPU check for the project's GPU machine: GPU-marked tests, then the CUDA-graph generation benchmark.
#
#   OUT=/some/folder bash scripts/gpu_check.sh          # run from the repository root; everything goes to $OUT
#
# The machine has PyTorch with CUDA, no diffusers, no TensorRT and no internet. Missing pure-Python packages come
# from wheels carried in .whl/ (git-ignored: pass it along, e.g. the device tool's carry=[".whl"]; 64 MiB max).
# Fill .whl/ on a machine with internet (3.12 = the GPU machine's Python; check $OUT/env.txt after a first run):
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       diffusers huggingface_hub hf-xet safetensors regex requests urllib3 idna certifi charset-normalizer \
#       pyyaml importlib_metadata zipp tqdm click
#
# (the list is what importing diffusers' FLUX transformer needs beyond torch; $OUT/missing.txt names the modules
# still missing after the install, if any). Wheels are installed with
#   pip install --no-index --no-deps --target /tmp/ddit-site .whl/*.whl
# and put on PYTHONPATH, so carry only packages the machine lacks. Budget: 6 minutes in all (GPU_CHECK_SECONDS=N
# for another total); each step has its own
# timeout and the benchmark writes its results after every phase. The benchmark ends with the replay table of the
# Pareto rows (PLANS=file to override docs/results/pareto-flux-mini-replay-rows.json); the whole check stays under 6 minutes.
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"
START=$(date +%s)
SITE=/tmp/ddit-site
log() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$OUT/check.log"; }
status=0

log "environment"
{ nvidia-smi || echo "nvidia-smi failed"; } > "$OUT/nvidia-smi.txt" 2>&1
python - > "$OUT/env.txt" 2>&1 <<'EOF'
import platform, sys
print("python", sys.version)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
except Exception as e:
    print("torch import failed:", e)
for m in ("tensorrt", "onnx", "onnxruntime", "diffusers"):
    try:
        mod = __import__(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(m, "absent:", type(e).__name__)
EOF
cat "$OUT/env.txt"

NEEDED="diffusers safetensors huggingface_hub regex requests yaml tqdm click numpy PIL"
missing() { python -c "
import importlib.util, sys
print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" $NEEDED; }
MISSING=$(missing)
if [ -n "$MISSING" ]; then
  log "missing: $MISSING"
  if compgen -G ".whl/*.whl" > /dev/null; then
    log "installing $(ls .whl/*.whl | wc -l) wheel(s) from .whl/ into $SITE"
    timeout 120 python -m pip install --no-index --no-deps --target "$SITE" .whl/*.whl > "$OUT/pip.log" 2>&1 \
      || log "pip install failed (see pip.log)"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    log "no .whl/ folder with wheels: see the header of this script for how to fill it"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MISSING=$(missing)
echo "$MISSING" > "$OUT/missing.txt"
if [ -n "$MISSING" ]; then
  log "still missing: $MISSING; tests and benchmark may fail"
fi

log "GPU tests (tests/runtime/test_torch_cuda.py, tests/runtime/test_tensorrt.py)"
timeout 180 python -m pytest -p no:cacheprovider -q -m "gpu or trt" -rs \
  tests/runtime/test_torch_cuda.py tests/runtime/test_tensorrt.py \
  --junitxml "$OUT/pytest.xml" > "$OUT/pytest.txt" 2>&1
rc=$?
tail -n 30 "$OUT/pytest.txt"
log "tests exit code $rc"
[ $rc -eq 0 ] || [ $rc -eq 5 ] || status=1

# TensorRT: did its tests run at all? (skipped tests count as passed for pytest's exit code)
TRT_SUMMARY=$(python - "$OUT/pytest.xml" <<'EOF2'
import importlib.util, sys, xml.etree.ElementTree as ET
cases = []
try:
    cases = [c for c in ET.parse(sys.argv[1]).iter("testcase") if c.get("classname", "").endswith("test_tensorrt")]
except Exception:
    pass
ran = [c for c in cases if c.find("skipped") is None]
bad = [c for c in ran if c.find("failure") is not None or c.find("error") is not None]
if importlib.util.find_spec("tensorrt") is None or not ran:
    why = "tensorrt is not installed here" if importlib.util.find_spec("tensorrt") is None else "no test ran"
    print(f"TensorRT: not run ({why}; {len(cases)} TensorRT GPU test(s) skipped)")
else:
    print(f"TensorRT: {len(ran) - len(bad)} of {len(ran)} GPU test(s) passed" + (" - FAILED" if bad else ""))
EOF2
)
log "$TRT_SUMMARY"

ELAPSED=$(( $(date +%s) - START ))
BUDGET=$(( ${GPU_CHECK_SECONDS:-330} - ELAPSED - 30 ))  # finish within 6 minutes (GPU_CHECK_SECONDS) with a margin
if [ -n "${GPU_CHECK_SKIP_BENCH:-}" ]; then
  log "benchmark skipped (GPU_CHECK_SKIP_BENCH)"
elif [ $BUDGET -lt 60 ]; then
  log "only ${BUDGET}s left: benchmark skipped"
  status=1
else
  # phases 1-3 (steps, switches, DDiT generations) and the replay of the Pareto rows
  # (docs/results/pareto-flux-mini-replay-rows.json: sizes + cache decisions) share what is left after the model build
  REST=$(( BUDGET - 90 > 45 ? BUDGET - 90 : 45 ))
  log "benchmark (time budget ${BUDGET}s: generations $(( REST / 2 ))s, replay $(( REST / 2 ))s)"
  timeout $(( BUDGET + 30 )) python scripts/gpu_bench.py --out "$OUT" --time-budget $(( REST / 2 )) \
    --replay-budget $(( REST / 2 )) ${SCHEDULES:+--schedules "$SCHEDULES"} ${PLANS:+--plans "$PLANS"} \
    2>&1 | tee "$OUT/bench.log"
  rc=${PIPESTATUS[0]}
  log "benchmark exit code $rc"
  [ $rc -eq 0 ] || status=1
fi
log "summary: status $status; $TRT_SUMMARY"
log "done (status $status); results in $OUT"
exit $status
