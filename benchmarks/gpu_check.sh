#!/usr/bin/env bash
# The GPU check of issues 14 and 20, one command on a lent H100/H200 (bare, no network; commands run in the repo root):
#
#   device run: `bash benchmarks/gpu_check.sh`, carry [".whl"], timeout_s 540; logs and JSON come back from $OUT
#
# Steps, each under its own `timeout`, in all under 8 minutes (the limits below add up to 480 s):
#   doctor   featcache doctor: versions, CUDA, bf16, GPU JPEG decoding                                    20 s
#   --- extraction (issue 20: JPEG at decoder speed, fixed cost, several checkpoints, compile, the table's cost)
#   tests    pytest tests/test_cuda.py (the CUDA-only tests), tests/test_fast_path.py and the heads'        80 s
#            CUDA-graph test (graph = eager, no synchronising call in a step)
#   extract  benchmarks/extract_throughput.py --device cuda at full size: 20,000 CIFAR-format images,       180 s
#            16,000 distinct JPEG photos (300-640 px, 4:2:0 and 4:4:4, written first into
#            $FEATCACHE_BENCH_DATA, about 15 s on 16 cores) and the whole `featcache extract --verbose`
#            command with its fixed-cost breakdown, 10,000 images x 5 checkpoints; ResNet50 at 224 px,
#            batch 256; with FEATCACHE_SYNC_DEBUG=warn: each synchronising CUDA call in featcache's
#            extract() counted by line. Targets: cifar c*/a >= 5, c*/b >= 0.9; jpeg c*/a >= 5, the
#            command's cli/a >= 3 and fixed cost <= 5 s; 5 checkpoints <= 1.1x five forward passes
#   cost     benchmarks/timecat_cost.py --device cuda: the forward pass eager and compiled (the compile        80 s
#            timed: where --compile auto's threshold comes from), extract()'s steady rate, probe steps/s
#            at the table's 16 shapes; the whole Time-Cat table projected (target <= 4 h), next to the
#            research code's cost
#   --- probe (issue 20: packed probes, a step without launch overhead)
#   probe    benchmarks/probe_steps.py --device cuda: steps/s of the old step, the new one eager and in a      80 s
#            CUDA graph, at D 256 / C 10 and at the research case (200,000 x 10,240 float16 resident,
#            1,000 classes, batch 32, 2 heads; target >= 5,000 steps/s), and a sweep's six probes
#            (5 stores x 2,048, cat1 x 5 + cat5) packed vs one by one, records compared
#   heads    benchmarks/probe_heads.py --device cuda --rows 20000: 20,000 x 10,240 float16 resident, the 6    40 s
#            weight decays, 28 epochs, one multi-head pass vs six solo heads (equal accuracies)
# GPU_CHECK_STEPS=tests,extract runs only those (a rerun after a fix); GPU_CHECK_LIMIT sets the extract step's
# limit; extra arguments go to extract_throughput.py (e.g. --quick, --cases cifar). With OUT=<dir> the log
# (gpu_check.log), pytest_cuda.xml, extract_throughput_gpu.json, timecat_cost_gpu.json, probe_steps_gpu.json and
# probe_heads_gpu.json are written there.
#
# Installs nothing from a network. It runs this checkout (PYTHONPATH=.; `pip install -e .` would need a build
# backend from an index) with $PYTHON or python3. On the lent machines that is torch 2.11 with torchvision 0.26,
# not the 2.14.1/0.29.1 the project pins (a CUDA torch wheel is far over the 64 MiB a call can carry): the
# versions are printed with the results. What featcache needs and that python lacks (there: zarr, numcodecs,
# donfig, google-crc32c) is installed from the wheels in .whl/ into /tmp/featcache-site. Fetch them first, on a
# machine with a network (this one), into the git-ignored .whl/ (about 10 MB):
#
#   bash benchmarks/gpu_check.sh --fetch-wheels
#   OUT=/tmp/out GPU_CHECK_STEPS=extract bash benchmarks/gpu_check.sh --cases cifar,jpeg
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
WHEELS=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0)  # the venv's versions
if [ "${1:-}" = "--fetch-wheels" ]; then
    FETCH_PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3)}
    # the lent machines' python is CPython 3.12 on x86-64 Linux
    exec "$FETCH_PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
fi
PY=${PYTHON:-$(command -v python3 || command -v python)}
if [ -z "$PY" ]; then
    echo "gpu_check: no python on PATH (set PYTHON=/path/to/python)" >&2
    exit 2
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT_DIR=${OUT:-}
STEPS=${GPU_CHECK_STEPS:-doctor,tests,extract,cost,probe,heads}
export FEATCACHE_BENCH_DATA=${FEATCACHE_BENCH_DATA:-/tmp/featcache-bench}  # the JPEG photos, written once

lacking() {
    "$PY" - <<'EOF'
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
}
missing=$(lacking)
if [ -n "$missing" ] && compgen -G ".whl/*.whl" >/dev/null; then
    echo "gpu_check: installing the carried wheels: $(cd .whl && echo *.whl)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/featcache-site .whl/*.whl || exit 2
    export PYTHONPATH="$PYTHONPATH:/tmp/featcache-site"
    missing=$(lacking)
fi
if [ -n "$missing" ]; then
    echo "gpu_check: $PY lacks packages featcache needs:" >&2
    echo "$missing" >&2
    echo "carry them as wheels: run 'bash benchmarks/gpu_check.sh --fetch-wheels' where there is a network," >&2
    echo "then carry .whl (or pip install them into that python), and rerun" >&2
    exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device; run this on a GPU machine" >&2
    exit 3
fi

wanted() { [[ ",$STEPS," == *",$1,"* ]]; }

step() {  # step NAME LIMIT COMMAND...: run it under `timeout`, say how it ended
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo
    echo "== [$name] $* (limit ${limit} s)"
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "gpu_check: [$name] stopped at its limit of ${limit} s"
    echo "== [$name] exit $rc after $((SECONDS - t0)) s"
    return "$rc"
}

run() {
    local failed=() junit=() out=() cost_out=() steps_out=() probe_out=() per_test=()
    if [ -n "$OUT_DIR" ]; then
        junit=(--junitxml "$OUT_DIR/pytest_cuda.xml")
        out=(--out "$OUT_DIR/extract_throughput_gpu.json")
        cost_out=(--out "$OUT_DIR/timecat_cost_gpu.json")
        steps_out=(--out "$OUT_DIR/probe_steps_gpu.json")
        probe_out=(--out "$OUT_DIR/probe_heads_gpu.json")
    fi
    echo "== gpu_check $(date '+%Y-%m-%d %H:%M:%S %z'), steps: $STEPS"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    "$PY" -c 'import sys, torch, torchvision as tv, PIL; print("python", sys.version.split()[0], "torch", torch.__version__,
"torchvision", tv.__version__, "Pillow", PIL.__version__, "(the project pins torch 2.14.1, torchvision 0.29.1)")'
    if wanted doctor; then
        step doctor 20 "$PY" -m featcache.cli doctor || failed+=(doctor)
    fi
    # --- extraction ------------------------------------------------------------------------------------------
    if wanted tests; then
        "$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 60)  # a hung test fails alone
        step tests 80 "$PY" -m pytest -q -rs -p no:cacheprovider ${per_test[@]+"${per_test[@]}"} \
            ${junit[@]+"${junit[@]}"} tests/test_cuda.py tests/test_fast_path.py \
            tests/test_heads.py::test_cuda_graph_steps_equal_eager_steps_and_never_synchronise || failed+=(tests)
    fi
    if wanted extract; then
        step extract "${GPU_CHECK_LIMIT:-180}" env FEATCACHE_SYNC_DEBUG=warn "$PY" benchmarks/extract_throughput.py \
            --device cuda ${out[@]+"${out[@]}"} "$@" || failed+=(extract)
    fi
    if wanted cost; then
        step cost 80 "$PY" benchmarks/timecat_cost.py --device cuda --images 4096 --probe-steps 100 \
            ${cost_out[@]+"${cost_out[@]}"} || failed+=(cost)
    fi
    # --- probe -----------------------------------------------------------------------------------------------
    if wanted probe; then
        step probe 80 "$PY" benchmarks/probe_steps.py --device cuda --repeats 2 ${steps_out[@]+"${steps_out[@]}"} \
            || failed+=(probe)
    fi
    if wanted heads; then
        step heads 40 "$PY" benchmarks/probe_heads.py --device cuda --rows 20000 ${probe_out[@]+"${probe_out[@]}"} \
            || failed+=(heads)
    fi
    echo
    echo "== gpu_check done after $SECONDS s; failed or stopped: ${failed[*]:-none}"
    [ ${#failed[@]} -eq 0 ]
}

if [ -n "$OUT_DIR" ]; then
    mkdir -p "$OUT_DIR"
    run "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
run "$@"
