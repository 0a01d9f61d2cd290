#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, most important first; every row is appended to $1/*.csv as it is measured.
#   bash benchmarks/gpu_suite.sh OUT_DIR [cuda|cpu] [quick]
# "quick" shrinks every size so the whole suite runs in a minute on a CPU (a dry run before spending GPU time).
set -u
out=${1:?usage: gpu_suite.sh OUT_DIR [device] [quick]}
device=${2:-cuda}
if [ "${3:-}" = quick ]; then
    N=300; N50=300; B=100; B50=100; R110=resnet8; R50=resnet8; RAW=0.2; TB=8; TD=8; AG=4; AGN=200; AGD=8; AGE=1
else
    N=100000; N50=100000; B=4000; B50=1000; R110=resnet110; R50=resnet50; RAW=2; TB=256; TD=110; AG=50; AGN=10000
    AGD=110; AGE=4
fi
bench="python3 benchmarks/certify_speed.py --device $device --out-dir $out"
$bench --models $R110 --n $N --batch-size $B --images 2 --raw-seconds $RAW --loop --auto-batch \
    --executions fp32 bf16 bf16+cl bf16+cl+compile --sections certify
$bench --models $R50 --n $N50 --batch-size $B50 --images 1 --raw-seconds $RAW --auto-batch \
    --executions fp32 bf16+cl bf16 bf16+cl+compile --sections certify
$bench --sections training --train-batches 3 --train-batch $TB --train-depth $TD
$bench --sections agreement --agreement $AG --agreement-n $AGN --agreement-depth $AGD --agreement-epochs $AGE \
    --batch-size $B
$bench --models $R110 --n $N --batch-size $B --images 2 --raw-seconds $RAW --executions bf16+cl+cudagraphs \
    --sections certify
