#!/usr/bin/env bash
# Does bf16 change what the studies conclude? ResNet-20, standard and GMConv, 5 seeds, in fp32 and in the device's
# precision (trainer.amp=auto: bf16 + channels_last on a CPU with bf16 units): the digits, and the cluttered digits
# in fp32 (their bf16 runs are seeds 0-4 of the rivals study, docs/study/rivals/runs.csv). Then the paired
# comparison: docs/study/precision/comparison.md. About 30 minutes on 2 cores. One thread per run, so that it can
# share the machine with the rivals study.
#   bash scripts/study/precision.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for amp in fp32 auto; do
  python -m scripts.study.rivals run --task digits --arms standard gmconv --seeds 5 --overrides trainer.amp=$amp \
      --record docs/study/precision/digits_$amp.csv --out outputs/study_precision/digits_$amp
done
python -m scripts.study.rivals run --task cluttered --arms standard gmconv --seeds 5 --overrides trainer.amp=fp32 \
    --record docs/study/precision/cluttered_fp32.csv --out outputs/study_precision/cluttered_fp32
python -m scripts.study.rivals compare docs/study/precision/digits_fp32.csv docs/study/precision/digits_auto.csv \
    docs/study/precision/cluttered_fp32.csv docs/study/rivals/runs.csv --out docs/study/precision/comparison.md
# σ by depth, fp32 beside bf16 (and each run's σ over training): the figures docs/STUDY.md shows are seed 0's
python -m scripts.sigma_report outputs/study_precision/digits_fp32 outputs/study_precision/digits_auto \
    --out outputs/study_precision/sigma
cp outputs/study_precision/sigma/sigma_by_depth.png docs/study/precision/sigma_by_depth.png
cp outputs/study_precision/sigma/0_seed_0_trajectory.png docs/study/precision/sigma_fp32_seed_0.png
cp outputs/study_precision/sigma/5_seed_0_trajectory.png docs/study/precision/sigma_bf16_seed_0.png
