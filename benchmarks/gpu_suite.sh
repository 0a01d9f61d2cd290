#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one run, most important first; every row is appended to $1/*.csv as it
# is measured and the log to $1/log.txt, so a run stopped early keeps what it measured.
#   bash benchmarks/gpu_suite.sh OUT_DIR [cuda|cpu] [quick] [SECTION ...]
# Sections (default all, in this order):
#   r110       ResNet-110, N = 100 000: Cohen-style loop, fp32, bf16+cl, then the --compile fast path (BatchNorm
#              folded, frozen weights) in bf16 and fp16, and with CUDA graphs; TFLOP/s and the bandwidth floor
#   r50        ResNet-50 (ImageNet), N = 100 000: fp32, bf16+cl, the fast path in bf16 and fp16
#   agreement  a ResNet-110 trained on digits, fp32 against each fast path, identical noise
#   denoised   benchmarks/denoised_cifar.py: a ddpm-cifar10-32-shaped UNet + ResNet-110 at N = 100 000, bf16 engine
#              against the authors'-style fp32 loop (issue 16's goal: <= 20 s per image)
#   reference  benchmarks/certify_vs_reference.py on the device: Cohen's loop against sequential + auto precision
#   autotune   max-autotune (CUDA graphs + kernel search: minutes of compilation) for ResNet-110 and ResNet-50
#   torchrun   with more than one GPU: rs-plugins certify on one GPU and torchrun on all, the same images
# "quick" shrinks every size so the whole suite runs in minutes on a CPU (a dry run before spending GPU time).
# About 10 minutes on one H200 in all; with a 10-minute limit per call run "r110 r50 agreement" and then the rest.
set -u
out=${1:?usage: gpu_suite.sh OUT_DIR [device] [quick] [SECTION ...]}
device=${2:-cuda}
shift $(($# < 2 ? $# : 2))
quick=0
if [ "${1:-}" = quick ]; then quick=1; shift; fi
sections=${*:-r110 r50 agreement denoised reference autotune torchrun}
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ $quick = 1 ]; then
    N=300; B=100; B50=100; R110=resnet8; R50=resnet8; RAW=0.2; AG=4; AGN=200; AGD=8; AGE=1; IMG=3; RN=2000
    TRN=300; TRI=4; DN=64; DB=32; DI=1
else
    N=100000; B=4000; B50=1000; R110=resnet110; R50=resnet50; RAW=2; AG=50; AGN=10000; AGD=110; AGE=4; IMG=30
    RN=100000; TRN=100000; TRI=16; DN=100000; DB=1000; DI=2
fi
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA', torch.cuda.device_count(), 'GPU(s)')"
bench="python3 benchmarks/certify_speed.py --device $device --out-dir $out"
fast="bf16+cl+compile fp16+cl+compile"
autotune="bf16+cl+max-autotune fp16+cl+max-autotune"
if [ "$device" = cpu ]; then fast="bf16+cl+compile"; autotune="bf16+cl+max-autotune"; fi  # CPUs lack fp16 kernels
for section in $sections; do
    start=$SECONDS
    echo "== section $section"
    case $section in
    r110)
        $bench --models $R110 --n $N --batch-size $B --images 2 --raw-seconds $RAW --loop --auto-batch \
            --executions fp32 bf16+cl $fast bf16+cl+cudagraphs --sections certify ;;
    r50)
        $bench --models $R50 --n $N --batch-size $B50 --images 1 --raw-seconds $RAW \
            --executions fp32 bf16+cl $fast --sections certify ;;
    agreement)
        $bench --sections agreement --agreement $AG --agreement-n $AGN --agreement-depth $AGD \
            --agreement-epochs $AGE --batch-size $B --agreement-executions bf16+cl $fast ;;
    denoised)
        python3 benchmarks/denoised_cifar.py --device "$device" --n0 100 --n $DN --batch-size $DB --images $DI \
            --precision bf16 --out "$out/denoised_cifar.csv" ;;
    reference)
        python3 benchmarks/certify_vs_reference.py --device "$device" --images $IMG --n $RN \
            --work-dir "$out/reference_work" --out-dir "$out/reference" ;;
    autotune)
        $bench --models $R110 --n $N --batch-size $B --images 2 --raw-seconds $RAW \
            --executions $autotune --sections certify
        $bench --models $R50 --n $N --batch-size $B50 --images 1 --raw-seconds $RAW \
            --executions bf16+cl+max-autotune --sections certify ;;
    torchrun)
        gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
        if [ "$device" != cuda ] || [ "$gpus" -lt 2 ]; then echo "torchrun: $gpus GPU(s), skipped"; continue; fi
        work="$out/torchrun_work"
        mkdir -p "$work"
        python3 - "$work" <<'EOF'
import sys, torch
from rs_plugins.nets import CifarResNet
torch.manual_seed(0)
torch.save(CifarResNet(110).state_dict(), f"{sys.argv[1]}/resnet110.pt")
torch.save({"x": torch.rand(64, 3, 32, 32), "y": torch.randint(0, 10, (64,))}, f"{sys.argv[1]}/images.pt")
EOF
        common=(certify --model rs_plugins.nets:CifarResNet --model-kwargs '{"depth": 110}' --checkpoint
            "$work/resnet110.pt" --data "$work/images.pt" --sigma 0.25 --n $TRN --limit $((TRI * gpus))
            --precision auto --channels-last --compile --batch-size $B --no-progress)
        [ -f "$out/torchrun.csv" ] || echo "what,processes,images,seconds" > "$out/torchrun.csv"
        for procs in 1 "$gpus"; do
            t=$SECONDS
            torchrun --standalone --nproc-per-node "$procs" -m rs_plugins "${common[@]}" --out "$work/p$procs.tsv" \
                | tail -3
            echo "torchrun,$procs,$((TRI * gpus)),$((SECONDS - t))" | tee -a "$out/torchrun.csv"
        done ;;
    *) echo "unknown section $section" ;;
    esac
    echo "== section $section: $((SECONDS - start)) s"
done
