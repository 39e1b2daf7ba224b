#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one run that fits a lent machine's few minutes (each step has a time limit;
# together at most 9 minutes):
#   1. the CUDA-only tests, which skip on a machine without a GPU (so CI never runs them);
#   2. benchmarks/deepaugment.py on CUDA, batch 64 at 224 px: batched vs one image per pass (target >= 20x),
#      cost against a ResNet-50 step next to the FLOP floor, peak extra memory;
#   3. benchmarks/corruptions.py on CUDA, 256 images: against the imagecorruptions package (target >= 100x).
#
# Usage, from the repository root on the GPU machine:   bash benchmarks/gpu_checks.sh [LOG_DIR]
# LOG_DIR defaults to $OUT (the folder a lent machine sends back), else gpu_checks/; each step writes LOG_DIR/<step>.log
# and its last lines are printed. Runs with ``python3`` (or $PYTHON) as it is, plus the wheels in .whl/ if there are
# any (installed into /tmp/site): a machine that has torch, timm, scikit-image and opencv but cannot download needs
# these three, fetched where pip can reach the registry:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl kornia kornia_rs imagecorruptions-imaug
# Exit status 0 when every step passed, else 1 (the other steps still run).
set -uo pipefail

logs=${1:-${OUT:-gpu_checks}}
python=${PYTHON:-python3}
mkdir -p "$logs"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "could not install the wheels in .whl/"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$python" - <<'EOF' || exit 1
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"no CUDA device visible to torch {torch.__version__}: these checks need one")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
EOF

status=0
step() {  # step NAME SECONDS COMMAND...: log to $logs/NAME.log, print its end, note a failure and go on
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s): $*"
    timeout "$limit" "$@" > "$logs/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$logs/$name.log"
    if [ "$rc" -ne 0 ]; then
        echo "!! $name exited with $rc (124: over its time limit)"
        status=1
    fi
}

step cuda_tests 150 "$python" -m pytest -q -p no:cacheprovider -rs -k cuda \
    tests/test_augment_deepaugment.py tests/test_augment_noise2net.py tests/test_corruptions.py tests/test_metrics.py
step deepaugment 200 "$python" benchmarks/deepaugment.py --device cuda --batch 64 --repeats 5
step corruptions 180 "$python" -m benchmarks.corruptions --device cuda --batch 256 --reference-images 16
exit "$status"
