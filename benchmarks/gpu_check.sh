#!/usr/bin/env bash
# GPU check of the extraction speed (issue 4): `featcache doctor`, then benchmarks/extract_throughput.py on CUDA
# at full size (20,000 CIFAR-format images and 5,000 500x375 JPEGs through ResNet50 at 224 px, 10,000 images x 5
# checkpoints; batch 256), printing the images/s table and which targets hold.
#
# Installs nothing: it runs this checkout (PYTHONPATH=.) with the python on PATH (or $PYTHON), which needs torch
# with CUDA, torchvision, numpy, Pillow, zarr >= 3.1.3, numcodecs, pyyaml and click; what is missing is listed first.
# About 2-3 minutes on an H100/H200; the benchmark is stopped after GPU_CHECK_LIMIT seconds (default 270), so the
# whole check stays under 5 minutes. Extra arguments go to extract_throughput.py (e.g. --quick, --cases cifar).
# With OUT=<dir> set, the JSON results and a copy of the output are written there.
#
#   bash benchmarks/gpu_check.sh
#   OUT=/tmp/out bash benchmarks/gpu_check.sh --cases cifar,jpeg
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-$(command -v python || command -v python3)}
if [ -z "$PY" ]; then
    echo "gpu_check: no python on PATH (set PYTHON=/path/to/python)" >&2
    exit 2
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
LIMIT=${GPU_CHECK_LIMIT:-270}
OUT_DIR=${OUT:-}

missing=$("$PY" - <<'EOF'
import importlib
need = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "PIL": "pillow",
        "zarr": "zarr>=3.1.3", "numcodecs": "numcodecs", "yaml": "pyyaml", "click": "click"}
for module, package in need.items():
    try:
        m = importlib.import_module(module)
    except Exception as e:
        print(f"  {package:<14} (import {module}: {type(e).__name__}: {e})")
        continue
    if module == "zarr" and int(m.__version__.split(".")[0]) < 3:
        print(f"  {package:<14} (found zarr {m.__version__}; featcache writes zarr v3 stores)")
EOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: $PY lacks packages featcache needs:" >&2
    echo "$missing" >&2
    echo "install them into that python (e.g. pip install 'zarr>=3.1.3' numcodecs pyyaml click), then rerun" >&2
    exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device; run this on a GPU machine" >&2
    exit 3
fi

run() {
    echo "== featcache doctor"
    "$PY" -m featcache.cli doctor || echo "gpu_check: featcache doctor failed (rc $?)"
    echo
    echo "== extract_throughput.py --device cuda $*"
    local out=()
    [ -n "$OUT_DIR" ] && out=(--out "$OUT_DIR/extract_throughput_gpu.json")
    timeout "$LIMIT" "$PY" benchmarks/extract_throughput.py --device cuda ${out[@]+"${out[@]}"} "$@"
    local rc=$?
    [ "$rc" = 124 ] && echo "gpu_check: benchmark stopped after ${LIMIT}s (GPU_CHECK_LIMIT); try --quick"
    return "$rc"
}

if [ -n "$OUT_DIR" ]; then
    mkdir -p "$OUT_DIR"
    run "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
run "$@"
