#!/usr/bin/env bash
# Every command once on a device, end to end, with the paths a GPU changes (bf16, channels_last, auto batch,
# the sequential queue, attacks, the cross-check), plus the CUDA-only tests. A minute or two on one GPU.
#   bash benchmarks/gpu_smoke.sh [cuda|cpu]
# On a machine without rs-plugins' dependencies, carry wheels in .whl/ (torchattacks is pure Python).
set -uo pipefail
device=${1:-cuda}
work=$(mktemp -d)
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || echo "pip install -e . failed"
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
run() {
    echo "\$ rs-plugins $*"
    local start=$SECONDS
    python3 -m rs_plugins "$@" 2>&1 | tail -8
    echo "exit ${PIPESTATUS[0]}, $((SECONDS - start)) s"
}
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
run train --model rs_plugins.nets:SmallCNN --data digits --sigma 0.25 --epochs 20 --lr-step 8 --device "$device" \
    --precision bf16 --channels-last --checkpoint-dir "$work/ckpt" --no-progress
model="--model rs_plugins.nets:SmallCNN --checkpoint $work/ckpt/model.pt --data digits --sigma 0.25 --device $device"
run certify $model --n 10000 --limit 40 --out "$work/fp32.tsv" --no-progress
run certify $model --n 10000 --limit 40 --out "$work/bf16.tsv" --precision bf16 --channels-last --batch-size auto \
    --no-progress
run certify $model --n 10000 --limit 40 --out "$work/sequential.tsv" --certifier sequential --no-progress
run certify $model --n 10000 --limit 40 --out "$work/feng.tsv" --certifier feng --no-progress
run certify $model --n 10000 --limit 20 --out "$work/uniform.tsv" --noise uniform --no-progress
run predict $model --n 2000 --limit 40 --out "$work/predict.tsv" --precision bf16 --no-progress
run attack --model rs_plugins.nets:SmallCNN --checkpoint "$work/ckpt/model.pt" --data digits --device "$device" \
    --limit 40 --attack pgdl2 --eps 0.25 0.5 --out "$work/attack.tsv" --no-progress
run attack $model --limit 20 --attack pgdl2 --eps 0.25 --m 8 --n 2000 --certified "$work/fp32.tsv" \
    --out "$work/check.tsv" --no-progress
run report "$work/fp32.tsv" "$work/bf16.tsv" "$work/sequential.tsv"
python3 -m pytest -q -p no:cacheprovider tests/test_smoothing.py tests/test_execution.py 2>&1 | tail -2
