#!/usr/bin/env bash
# GPU check of the C++ runtime (issues 12, 21): compile the bundle's AOTInductor package for CUDA, build runtime/cpp
# against the machine's torch, check C++ against Python on the GPU (same per-step sizes, latents >= 40 dB), time
# the steps (the runtime synchronises the device before reading a step's clock) and run the default schedule with
# the step cache end to end.
#
#   BUNDLE=engines/flux-mini-64 OUT=/some/folder bash scripts/gpu_cpp.sh          # from the repository root
#   bash scripts/gpu_cpp.sh --dry-run      (or CHECK_ONLY=1): only the prerequisite checks, then exit
#   STAGE=compile ... / STAGE=run ...      the two halves, for two calls of at most 10 minutes each
#   MODEL (default: the manifest's model name) and WEIGHTS (--model flux) say where prepare_aoti loads the model.
#
# Prerequisites, checked first (exit 3 naming each missing one, before any long step): python with torch that has
# CUDA and sees a GPU (its version is compared with the bundle manifest's tools.torch and with 2.13: a warning),
# diffusers, cmake >= 3.18, a C++ compiler (CXX, c++, g++ or clang++), nvcc or a CUDA toolkit at CUDA_HOME /
# CUDAToolkit_ROOT / /usr/local/cuda (torch's CMake config, Caffe2/public/cuda.cmake, runs find_package(CUDA) and
# enable_language(CUDA) when torch has CUDA: the script passes -DCUDA_TOOLKIT_ROOT_DIR and -DCMAKE_CUDA_COMPILER),
# nlohmann/json.hpp (the nlohmann-json wheel or NLOHMANN_JSON_INCLUDE_DIR), and BUNDLE/manifest.json.
#
# BUNDLE: an image bundle built on a CPU machine (`ddit-export build --model flux-mini-64 --out
# engines/flux-mini-64`; git-ignored: carry it, e.g. carry=["engines/flux-mini-64", ".whl"]). A GPU machine without
# diffusers: fill .whl/ as scripts/gpu_check.sh's header says (plus nlohmann-json); they go to /tmp/ddit-site.
# Work files go to build/gpu-cpp (git-ignored; kept on a warm machine, so STAGE=run reuses STAGE=compile's package).
# Output, at most 3 files in $OUT: cpp-gpu.log (every step's output), gpu-cpp.json (check, cache run, timings),
# env.txt (python, torch, CUDA, GPU, nvcc, cmake, compiler). Budget: STAGE=compile <= 600 s (AOT_TIMEOUT);
# STAGE=run about 6 minutes (cmake 240 s, check 150 s, timings 150 s, cache 90 s, each its own timeout); STAGE=all
# (default) does both and fits one 10-minute call only when the compile is quick (a warm inductor cache).
set -uo pipefail

DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run|--check-only) DRY=1 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "gpu_cpp: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done
[[ "${CHECK_ONLY:-0}" == 1 ]] && DRY=1
: "${BUNDLE:=engines/flux-mini-64}"
: "${STAGE:=all}"
: "${WORK:=build/gpu-cpp}"
: "${STEPS:=28}"
: "${SEED:=0}"
: "${AOT_TIMEOUT:=600}"
case "$STAGE" in all|compile|run) ;; *) echo "gpu_cpp: STAGE must be all, compile or run" >&2; exit 2 ;; esac
if [[ $DRY == 0 ]]; then
  : "${OUT:?set OUT to the output folder}"
  mkdir -p "$OUT"
  LOG="$OUT/cpp-gpu.log"
else
  LOG=/dev/null
fi
PY=${PYTHON:-python}
START=$(date +%s)
log() { echo "[gpu_cpp $(( $(date +%s) - START ))s] $*" | tee -a "$LOG" >&2; }

if [[ $DRY == 0 ]] && compgen -G ".whl/*.whl" > /dev/null; then
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --target /tmp/ddit-site .whl/*.whl >> "$LOG" 2>&1
  export PYTHONPATH="/tmp/ddit-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# ---- prerequisites: every one checked, each missing one named, before anything long ---------------------------
MISSING=()
missing() { MISSING+=("$1"); echo "MISSING $1: $2" | tee -a "$LOG" >&2; }
ok() { echo "ok      $1" | tee -a "$LOG" >&2; }
warn() { echo "WARNING $1" | tee -a "$LOG" >&2; }

if ! command -v "$PY" > /dev/null; then
  missing python "no '$PY' on PATH (set PYTHON)"
else
  TORCH=$(timeout 60 "$PY" -c "import torch; print(torch.__version__, torch.version.cuda or 'none',
int(torch.cuda.is_available()))" 2>/dev/null)
  if [[ -z "$TORCH" ]]; then
    missing torch "'$PY' cannot import torch"
  else
    read -r TORCH_VERSION TORCH_CUDA TORCH_GPU <<< "$TORCH"
    if [[ "$TORCH_CUDA" == none ]]; then
      missing "torch with CUDA" "torch $TORCH_VERSION is a CPU build (torch.version.cuda is None): install a CUDA wheel"
    elif [[ "$TORCH_GPU" != 1 ]]; then
      missing GPU "torch $TORCH_VERSION (CUDA $TORCH_CUDA) sees no GPU (torch.cuda.is_available() is False)"
    else
      ok "torch $TORCH_VERSION, CUDA $TORCH_CUDA, a GPU"
    fi
    [[ "$TORCH_VERSION" == 2.13* ]] || warn "torch $TORCH_VERSION: the runtime was developed against torch 2.13"
    if [[ -f "$BUNDLE/manifest.json" ]]; then
      BT=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1])).get('tools', {}).get('torch', '?'))" \
           "$BUNDLE/manifest.json" 2>/dev/null)
      [[ "${BT%%+*}" == "${TORCH_VERSION%%+*}" ]] || warn "torch $TORCH_VERSION here; the bundle was built with \
torch $BT (its ONNX graphs and weights are reused; the package is recompiled here)"
    fi
  fi
  if timeout 60 "$PY" -c "import diffusers, ddit_export" 2> /dev/null; then ok "diffusers, ddit_export"
  else missing diffusers "'$PY' cannot import diffusers and ddit_export (fill .whl/, run from the repository root)"; fi
fi
[[ -f "$BUNDLE/manifest.json" ]] && ok "bundle $BUNDLE" || missing bundle "$BUNDLE/manifest.json not found (set BUNDLE; carry it)"
if command -v cmake > /dev/null; then
  CMV=$(cmake --version | head -1 | awk '{print $3}')
  if [[ "$(printf '%s\n3.18\n' "$CMV" | sort -V | head -1)" == 3.18 ]]; then ok "cmake $CMV"
  else missing cmake "cmake $CMV is older than 3.18"; fi
else
  missing cmake "no cmake on PATH (pip install cmake, or apt-get install cmake)"
fi
CXX_FOUND=""
for c in "${CXX:-}" c++ g++ clang++; do
  [[ -n "$c" ]] && command -v "$c" > /dev/null && { CXX_FOUND=$(command -v "$c"); break; }
done
[[ -n "$CXX_FOUND" ]] && ok "C++ compiler $CXX_FOUND" || missing "C++ compiler" "none of CXX, c++, g++, clang++ is on PATH"
NVCC=""
if command -v nvcc > /dev/null; then
  NVCC=$(command -v nvcc)
else
  for r in "${CUDA_HOME:-}" "${CUDAToolkit_ROOT:-}" "${CUDA_PATH:-}" ${CUDA_DIRS-/usr/local/cuda}; do
    [[ -n "$r" && -x "$r/bin/nvcc" ]] && { NVCC="$r/bin/nvcc"; break; }
  done
fi
if [[ -n "$NVCC" ]]; then
  CUDA_ROOT=$(cd "$(dirname "$NVCC")/.." && pwd)
  NVV=$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
  ok "nvcc $NVCC (CUDA $NVV, toolkit $CUDA_ROOT)"
  [[ -n "${TORCH_CUDA:-}" && "$TORCH_CUDA" != none && "${NVV%%.*}" != "${TORCH_CUDA%%.*}" ]] && \
    warn "nvcc is CUDA $NVV, torch was built with CUDA $TORCH_CUDA: CMake may refuse mixed major versions"
else
  missing nvcc "no nvcc on PATH, nor in CUDA_HOME, CUDAToolkit_ROOT, CUDA_PATH or ${CUDA_DIRS-/usr/local/cuda}: torch's CMake \
config needs the CUDA toolkit (find_package(CUDA), enable_language(CUDA)); install it or set CUDA_HOME"
fi
NJ="${NLOHMANN_JSON_INCLUDE_DIR:-}"
[[ -z "$NJ" ]] && NJ=$("$PY" -c "import nlohmann_json; print(nlohmann_json.get_include())" 2>/dev/null)
if [[ -n "$NJ" && -f "$NJ/nlohmann/json.hpp" ]]; then ok "nlohmann/json.hpp in $NJ"
else missing nlohmann_json "nlohmann/json.hpp not found (pip install nlohmann-json, or set NLOHMANN_JSON_INCLUDE_DIR)"; fi

if (( ${#MISSING[@]} )); then
  echo "gpu_cpp: missing prerequisites: ${MISSING[*]}" | tee -a "$LOG" >&2
  exit 3
fi
echo "gpu_cpp: all prerequisites found" | tee -a "$LOG" >&2
[[ $DRY == 1 ]] && exit 0

{ "$PY" -c "import sys, torch; print(sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name())"; "$NVCC" --version | tail -1; cmake --version | head -1; "$CXX_FOUND" --version | head -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >> "$LOG"
B="$WORK/bundle"
mkdir -p "$WORK"
step() {  # step NAME SECONDS CMD...: one step with its own timeout; its output goes to the log
  local name=$1 t=$2; shift 2
  log "$name (timeout ${t}s)"
  timeout "$t" "$@" >> "$LOG" 2>&1
  local rc=$?
  log "$name exit code $rc$([[ $rc == 124 ]] && echo ' (timed out)')"
  return $rc
}

# ---- (b) the package for CUDA ---------------------------------------------------------------------------------
if [[ $STAGE != run ]]; then
  rm -rf "$B" && cp -r "$BUNDLE" "$B"
  step "AOTInductor compile for cuda" "$AOT_TIMEOUT" "$PY" - "$B" "${MODEL:-}" "${WEIGHTS:-}" <<'PY' || exit 4
import json, sys, time
from ddit_export.export.aoti import prepare_aoti
from ddit_export.settings import BuildSettings
folder, name, weights = sys.argv[1], sys.argv[2], sys.argv[3] or None
model = json.load(open(f"{folder}/manifest.json"))["model"]
t0 = time.time()
s = BuildSettings(model=name or model["name"], weights=weights, height=model["height"], width=model["width"])
prepare_aoti(folder, s, device="cuda")
print(f"aoti compile for cuda: {time.time() - t0:.1f} s")
PY
fi
[[ $STAGE == compile ]] && { log "STAGE=compile done: $B"; exit 0; }
if ! "$PY" -c "import json, sys; sys.exit(json.load(open(sys.argv[1]))['aoti']['device'] != 'cuda')" \
     "$B/manifest.json" 2> /dev/null; then
  log "no CUDA package at $B: run STAGE=compile first (on this warm machine)"
  exit 4
fi

# ---- (b) runtime/cpp against this torch -----------------------------------------------------------------------
TP=$("$PY" -c "import torch; print(torch.utils.cmake_prefix_path)")
step "cmake configure + build" 240 bash -c "cmake -S runtime/cpp -B '$WORK/build' -DCMAKE_PREFIX_PATH='$TP' \
  -DNLOHMANN_JSON_INCLUDE_DIR='$NJ' -DPython3_EXECUTABLE='$(command -v "$PY")' -DCMAKE_CXX_COMPILER='$CXX_FOUND' \
  -DCUDA_TOOLKIT_ROOT_DIR='$CUDA_ROOT' -DCUDAToolkit_ROOT='$CUDA_ROOT' -DCMAKE_CUDA_COMPILER='$NVCC' \
  && cmake --build '$WORK/build' -j8" || exit 5
RUN="$WORK/build/ddit-run"

# ---- (c) C++ vs Python on the GPU: same settings, same per-step sizes, latents >= 40 dB ------------------------
step "embeddings (ddit-export encode)" 90 "$PY" -m ddit_export.cli encode --bundle "$B" --prompt "a red circle" \
  --out "$WORK/emb"
step "ddit-run, default schedule" 90 "$RUN" "$B" --states "$WORK/emb/states.npy" --pooled "$WORK/emb/pooled.npy" \
  --steps "$STEPS" --seed "$SEED" --out "$WORK/cpp.npy" --trace "$WORK/cpp-trace.json"
step "check: Python aoti backend on the GPU vs C++" 150 "$PY" - "$B" "$WORK" "$STEPS" "$SEED" <<'PY'
import json, sys
import numpy as np
from ddit_export.api import build_settings
from ddit_export.runtime.bundle_model import open_bundle
from ddit_export.runtime.generate import generate
folder, work, steps, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model, backend = open_bundle(folder, backend="aoti")
gs = build_settings(model, prompts=["a red circle"], steps=steps, seed=seed)
with backend:
    py = generate(model, backend, gs, progress=False, decode=False)
ref, got = py.latents.numpy(), np.load(f"{work}/cpp.npy")
trace = json.load(open(f"{work}/cpp-trace.json"))["steps"]
peak = float(ref.max() - ref.min())  # PSNR over the reference's range
psnr = float(10 * np.log10(peak ** 2 / max(float(np.mean((ref - got) ** 2)), 1e-20)))
out = {"python_sizes": py.trace.sizes, "cpp_sizes": [s["size"] for s in trace], "psnr_db": psnr,
       "cpp_step_seconds": [s["seconds"] for s in trace]}
out["ok"] = out["python_sizes"] == out["cpp_sizes"] and psnr >= 40.0
json.dump(out, open(f"{work}/check.json", "w"))
print(json.dumps(out))
sys.exit(0 if out["ok"] else 1)
PY

# ---- (d) timings: per size, switching, RSS (the C API's steps, device synchronised), Python backends beside ----
step "timings (scripts/bench_cpp.py)" 150 "$PY" scripts/bench_cpp.py --bundle "$B" --build "$WORK/build" \
  --repeats 30 --json "$WORK/bench.json"

# ---- (e) the default schedule with the step cache, end to end -------------------------------------------------
step "ddit-run, default schedule + step cache (taylor, interval 6)" 90 "$RUN" "$B" \
  --states "$WORK/emb/states.npy" --pooled "$WORK/emb/pooled.npy" --steps "$STEPS" --seed "$SEED" \
  --cache taylor --cache-interval 6 --out "$WORK/cache.npy" --trace "$WORK/cache-trace.json"

"$PY" - "$WORK" "$OUT/gpu-cpp.json" <<'PY' >> "$LOG" 2>&1
import json, os, sys
import numpy as np
work, out = sys.argv[1], sys.argv[2]
def load(name):
    p = os.path.join(work, name)
    return json.load(open(p)) if os.path.exists(p) else None
d = {"check": load("check.json"), "bench": load("bench.json")}
t = load("cache-trace.json")
if t is not None:
    steps = t["steps"]
    d["cache"] = {"sizes": [s["size"] for s in steps], "kinds": [s.get("kind", "model") for s in steps],
                  "seconds": sum(s["seconds"] for s in steps)}
    if os.path.exists(f"{work}/cpp.npy"):
        a, b = np.load(f"{work}/cpp.npy"), np.load(f"{work}/cache.npy")
        peak = float(a.max() - a.min())
        d["cache"]["psnr_vs_uncached_db"] = float(10 * np.log10(peak ** 2 / max(float(np.mean((a - b) ** 2)), 1e-20)))
json.dump(d, open(out, "w"), indent=1)
print(json.dumps(d)[:2000])
PY
log "done: $OUT/gpu-cpp.json"
