#!/usr/bin/env bash
# Regenerates docs/STUDY.md's numbers and figures on the digits data (CPU, about an hour on 2 cores).
#   bash scripts/study/digits.sh [OUT]        OUT: where the runs go (default outputs/study)
# The runs and the full ERF and σ reports (with their erf.json and sigma_report.json) stay under OUT/; the tables
# and the figures docs/STUDY.md shows go to docs/study/.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-outputs/study}
figures=docs/study
# The study's recipe is the framework's defaults as they were then: no warmup (the default is now one epoch).
no_warmup=sched.warmup_epochs=0

# 1. How fast σ learns: optim.sigma_lr_scale on ResNet-20 + GMConv, 3 seeds each (gmconv/README.md).
python train.py -m optim.sigma_lr_scale=1,10,30,100,300,1000 seed=0,1,2 $no_warmup trainer.progress=false \
    hydra.sweep.dir="$out/sigma_lr"
python -m scripts.summarize "$out/sigma_lr" --out "$figures/sigma_lr.md"
python -m scripts.sigma_report "$out"/sigma_lr/*seed=0 --out "$out/sigma_lr_report"
mkdir -p "$figures/sigma_lr" && cp "$out/sigma_lr_report/sigma_by_depth.png" "$figures/sigma_lr/"

# 2. Standard vs GMConv and the σ ablations, ResNet-20 and ResNet-32, 5 seeds each; and GMConv with σ
#    learning 100x faster (a separate sweep: conv=standard takes no optim.sigma_lr_scale).
python train.py -m model=resnet20,resnet32 conv=standard,gmconv,gmconv_fixed,gmconv_layer seed=0,1,2,3,4 \
    $no_warmup trainer.progress=false hydra.sweep.dir="$out/digits/main"
python train.py -m model=resnet20,resnet32 optim.sigma_lr_scale=100 seed=0,1,2,3,4 $no_warmup trainer.progress=false \
    hydra.sweep.dir="$out/digits/sigma_lr_100"
python -m scripts.summarize "$out/digits" --out "$figures/digits.md"
# ResNet-32 again with a 1-epoch warmup: without one, some seeds of every arm fail to train (docs/STUDY.md).
python train.py -m model=resnet32 conv=standard,gmconv,gmconv_fixed,gmconv_layer seed=0,1,2,3,4 sched.warmup_epochs=1 \
    trainer.progress=false hydra.sweep.dir="$out/digits_warmup/main"
python train.py -m model=resnet32 optim.sigma_lr_scale=100 seed=0,1,2,3,4 sched.warmup_epochs=1 trainer.progress=false \
    hydra.sweep.dir="$out/digits_warmup/sigma_lr_100"
python -m scripts.summarize "$out/digits_warmup" --out "$figures/digits_warmup.md"

# 3. Effective receptive fields (seed 0 of each conv type, trained and at initialisation) and learned σ;
#    ResNet-32 from the warmup sweep, where every seed trained.
python -m scripts.erf "$out"/digits/main/*model=resnet20,seed=0 "$out"/digits/sigma_lr_100/*model=resnet20,*seed=0 \
    --images 64 --out "$out/erf_resnet20"
python -m scripts.sigma_report "$out"/digits/main/*conv=gmconv,model=resnet20,seed=0 \
    "$out"/digits/sigma_lr_100/*model=resnet20,*seed=0 --out "$out/sigma_resnet20"
python -m scripts.erf "$out"/digits_warmup/main/*seed=0 "$out"/digits_warmup/sigma_lr_100/*seed=0 \
    --images 64 --out "$out/erf_resnet32"
python -m scripts.sigma_report "$out"/digits_warmup/main/*conv=gmconv,*seed=0 "$out"/digits_warmup/sigma_lr_100/*seed=0 \
    --out "$out/sigma_resnet32"
# The figures: each ERF, and every σ figure of these seed-0 runs (σ by depth, each run's trajectory and masks).
for report in erf_resnet20 erf_resnet32; do
    mkdir -p "$figures/$report" && cp "$out/$report/erf.png" "$figures/$report/"
done
for report in sigma_resnet20 sigma_resnet32; do
    mkdir -p "$figures/$report" && cp "$out/$report"/*.png "$figures/$report/"
done

# 4. ERF statistics of every seed (mean ± std per configuration) for ResNet-20.
python -m scripts.erf "$out"/digits/main/*model=resnet20,* "$out"/digits/sigma_lr_100/*model=resnet20,* \
    --images 64 --out "$out/erf_all_resnet20"
python - "$out/erf_all_resnet20/erf.json" <<'PY'
import json, sys
for condition in json.load(open(sys.argv[1]))["conditions"]:
    cells = [f"{condition['stats'][k]['mean']:.3f} ± {condition['stats'][k]['std']:.3f}"
             for k in ("sigma_x", "sigma_y", "area_ratio@0.5", "area_ratio@0.99")]
    print(f"| {condition['label']} | {condition['n']} | " + " | ".join(cells) + " |")
PY
