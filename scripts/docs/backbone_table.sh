#!/usr/bin/env bash
# Regenerates docs/BACKBONES.md's table: every model= option × conv=standard,gmconv on the digits data with
# the defaults (one seed). ResNet-50 and ResNet-101 train for 3 epochs instead of the data's 10.
#   bash scripts/docs/backbone_table.sh [OUT]        OUT: where the runs go (default outputs/backbones)
set -uo pipefail  # a failed run is listed by summarize.py below the table; the rest go on
cd "$(dirname "$0")/../.."
out=${1:-outputs/backbones}

# 1. The data's default epochs (10): the backbones that train in minutes on a CPU (ResNet-34: about 5).
models=resnet20,resnet18,mobilenet_v2,resnet32,resnet44,resnet56,resnet110,vgg11_bn,vgg16_bn,alexnet,resnet34,timm
python train.py -m model=$models conv=standard,gmconv trainer.progress=false hydra.sweep.dir="$out/default_epochs"
# 2. Slow on a 2-core CPU (a quarter of an hour or more for 10 epochs): 3 epochs.
python train.py -m model=resnet50,resnet101 conv=standard,gmconv trainer.epochs=3 \
    trainer.progress=false hydra.sweep.dir="$out/3_epochs"
python -m scripts.summarize "$out" --out docs/backbones_table.md
