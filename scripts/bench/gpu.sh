#!/usr/bin/env bash
# The GPU measurements in one run, sized for a few minutes of a GPU (not yet run on one): GMConv vs standard at
# batch 16 and 128 (bf16 + channels_last, with a profile of the added time), the training step of every conv type
# in fp32 and bf16, eager and compiled, train.py's throughput at 224 px, and the engine against a bare loop.
# Output goes to the terminal and to OUT/bench_gpu.log (OUT: $OUT or outputs/bench_gpu). Needs the
# project installed as the README says (torchrun_throughput and engine_overhead run train.py code: hydra-core, omegaconf).
#   bash scripts/bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-outputs/bench_gpu}
mkdir -p "$out"
{
    nvidia-smi -L
    python -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, timm.__version__)"
    python -m scripts.bench.gmconv_speed --device cuda --models resnet18 resnet50 alexnet --batch-size 16 --amp bf16 \
        --channels-last --profile 5
    python -m scripts.bench.gmconv_speed --device cuda --models resnet50 --batch-size 128 --image-size 224 --amp bf16 \
        --channels-last --reps 10
    python -m scripts.bench.train_step --device cuda --models resnet20 resnet18 resnet50 --convs standard gmconv \
        --compile --reps 20
    python -m scripts.bench.train_step --device cuda --reps 20
    python -m scripts.bench.torchrun_throughput --nproc 1 --model resnet50 --image-size 224 --batch-size 128 --steps 100 --amp bf16
    python -m scripts.bench.engine_overhead model=resnet18 model.small_input=false data=digits trainer.device=cuda
} 2>&1 | tee "$out/bench_gpu.log"
