#!/usr/bin/env bash
# GPU check of the C++ runtime (issue 12): compile the bundle's AOTInductor package for CUDA, build runtime/cpp
# against the machine's torch, and measure per-step time per size, peak RSS (3 sizes vs 1) and the switching cost.
#
#   BUNDLE=engines/flux-mini OUT=/some/folder bash scripts/gpu_cpp.sh     # from the repository root
#
# BUNDLE: a flux-mini bundle built on a CPU machine (`ddit-export build --model flux-mini --out engines/flux-mini`;
# git-ignored: carry it, e.g. carry=["engines/flux-mini", ".whl"]). The GPU machine lacks diffusers: fill .whl/ as
# scripts/gpu_check.sh's header says (plus nlohmann-json); the script installs them into /tmp/ddit-site.
# Output, at most 3 files in $OUT: cpp-gpu.log (every step's output), bench-cpp-gpu.json (the numbers),
# env.txt (python, torch, CUDA, GPU, nvcc). Budget about 6 minutes (each step has its own timeout).
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
: "${BUNDLE:=engines/flux-mini}"
mkdir -p "$OUT"
LOG="$OUT/cpp-gpu.log"
START=$(date +%s)
log() { echo "[gpu_cpp $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
{ python -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"; nvcc --version 2>&1 | tail -1;
  cmake --version | head -1; g++ --version | head -1; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$LOG"
if compgen -G ".whl/*.whl" > /dev/null; then
  timeout 120 python -m pip install -q --no-index --no-deps --target /tmp/ddit-site .whl/*.whl >> "$LOG" 2>&1
  export PYTHONPATH="/tmp/ddit-site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
B=/tmp/ddit-cpp-gpu/bundle
rm -rf /tmp/ddit-cpp-gpu && mkdir -p /tmp/ddit-cpp-gpu && cp -r "$BUNDLE" "$B"

log "AOTInductor compile for cuda (prepare_aoti)"
timeout 300 python - "$B" >> "$LOG" 2>&1 <<'PY'
import sys, time
from ddit_export.export.aoti import prepare_aoti
from ddit_export.settings import BuildSettings
t0 = time.time()
prepare_aoti(sys.argv[1], BuildSettings(model="flux-mini"), device="cuda")
print(f"aoti compile for cuda: {time.time() - t0:.1f} s")
PY
log "aoti exit code $?"

log "cmake configure + build"
TP=$(python -c "import torch; print(torch.utils.cmake_prefix_path)")
NJ=$(python -c "import nlohmann_json; print(nlohmann_json.get_include())" 2>/dev/null || echo "")
timeout 240 bash -c "cmake -S runtime/cpp -B /tmp/ddit-cpp-gpu/build -DCMAKE_PREFIX_PATH='$TP' \
  -DNLOHMANN_JSON_INCLUDE_DIR='$NJ' && cmake --build /tmp/ddit-cpp-gpu/build -j8" >> "$LOG" 2>&1
log "cmake exit code $?"

log "bench (C API per-step time, RSS, switching; Python aoti backend)"
timeout 240 python scripts/bench_cpp.py --bundle "$B" --build /tmp/ddit-cpp-gpu/build --repeats 30 \
  --json "$OUT/bench-cpp-gpu.json" >> "$LOG" 2>&1
log "bench exit code $?"
