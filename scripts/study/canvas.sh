#!/usr/bin/env bash
# Regenerates docs/STUDY.md's section "Where the receptive field matters": the cluttered and the rescaled digits
# (data/digit_canvas.py), ResNet-20 with the default recipe. About 80 minutes on 2 CPU cores (47 runs of ~95 s).
#   bash scripts/study/canvas.sh [OUT [FIGURES [OVERRIDES]]]
#     OUT: where the runs and the full ERF and σ reports go (default outputs/study_canvas); FIGURES: the tables and
#     the figures the docs show (default docs/study/canvas);
#     OVERRIDES: added to every run, e.g. a trial of the whole pipeline in a few minutes:
#     bash scripts/study/canvas.sh /tmp/trial /tmp/trial/figures "trainer.epochs=1 data.train_size=128 data.val_size=64"
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-outputs/study_canvas}
figures=${2:-docs/study/canvas}
mkdir -p "$figures"
# Evaluate 5,000 validation canvases at the middle and the end only: the study reads the final epoch's numbers.
common="model=resnet20 trainer.eval_every=5 trainer.progress=false ${3:-}"
seeds=0,1,2,3,4

# 1. Accuracy where the receptive field matters: every conv type on the cluttered digits, paired by seed.
python train.py -m data=digits_cluttered conv=standard,gmconv,gmconv_fixed,gmconv_layer seed=$seeds $common \
    hydra.sweep.dir="$out/cluttered"

# 2. Does σ follow the scale of the features? Digits of 8, 16 and 24 px on the same 32 px canvas, σ learning 100×
#    faster (gmconv/README.md, "How fast σ learns"); the standard conv for the ERFs' reference.
python train.py -m data=digits_scaled data.digit_size=8,16,24 conv=standard seed=0,1,2 $common \
    hydra.sweep.dir="$out/scaled/standard"
python train.py -m data=digits_scaled data.digit_size=8,16,24 conv=gmconv optim.sigma_lr_scale=100 seed=0,1,2 $common \
    hydra.sweep.dir="$out/scaled/gmconv"

# 3. Initialisation: σ₀ = 1, 2, 4 on the cluttered digits, σ learning 100× faster.
python train.py -m data=digits_cluttered conv=gmconv conv.sigma_init=1,2,4 optim.sigma_lr_scale=100 seed=0,1,2 \
    $common hydra.sweep.dir="$out/sigma_init"

# What the two tasks look like: the first validation canvases of each setting.
python - "$figures/examples.png" <<'PY'
import sys
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from data import DataConfig
from data.digit_canvas import build_digit_canvases
settings = [("digits_cluttered", {}), *(("digits_scaled", {"digit_size": size}) for size in (8, 16, 24))]
fig = Figure(figsize=(8, 4.4))
for row, (name, overrides) in enumerate(settings):
    config = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(f"configs/data/{name}.yaml"), overrides)
    val = build_digit_canvases(OmegaConf.to_object(config), with_train=False).val
    for col in range(8):
        ax = fig.add_subplot(len(settings), 8, row * 8 + col + 1)
        ax.imshow(val.images[col, 0], cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(str(int(val.targets[col])), fontsize=8)
    fig.axes[row * 8].set_ylabel(name.removeprefix("digits_") + "".join(f"\n{v} px" for v in overrides.values()),
                                 fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=100)
PY

# Tables (final-epoch top-1, mean ± std over seeds, Δ paired by seed with the standard conv).
python -m scripts.summarize "$out/cluttered" "$out/sigma_init" --out "$figures/cluttered.md"
python -m scripts.summarize "$out/scaled" --out "$figures/scaled.md"
# Figures: ERFs per condition averaged over seeds, with the architecture at initialisation; σ by depth.
# The reports (figures and their numbers, erf.json and sigma_report.json) go to $out/reports; the figures
# docs/STUDY.md shows are copied to $figures: the ERFs, σ by depth, and seed 0's masks.
reports="$out/reports"
python -m scripts.erf "$out/cluttered" --images 64 --out "$reports/erf_cluttered"
python -m scripts.erf "$out/scaled" --images 64 --out "$reports/erf_scaled"
python -m scripts.sigma_report "$out/cluttered" --out "$reports/sigma_cluttered"
python -m scripts.sigma_report "$out/scaled/gmconv" --out "$reports/sigma_scaled"
python -m scripts.sigma_report "$out/sigma_init" --out "$reports/sigma_init"
for report in erf_cluttered erf_scaled; do
    mkdir -p "$figures/$report" && cp "$reports/$report/erf.png" "$figures/$report/"
done
for report in sigma_cluttered sigma_scaled sigma_init; do
    mkdir -p "$figures/$report"
    cp "$reports/$report/sigma_by_depth.png" "$reports/$report"/*_seed_0_masks.png "$figures/$report/"
done
# The numbers the text quotes: power of the paired comparison, σ by stage per digit size and per σ₀, ERF sizes
# (read from the reports' erf.json and sigma_report.json).
python -m scripts.study.canvas_numbers "$out" --figures "$reports" --out "$figures/numbers.md"
