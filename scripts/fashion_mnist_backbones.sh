#!/usr/bin/env bash
# The backbone half of the Fashion-MNIST study (README "Pretrained backbones"): trains every shipped checkpoint that
# is missing or was made by another command (an older recipe), its recipe variants included (each resumes from its
# run folder), then measures them on noisy chips.
#
#   bash scripts/fashion_mnist_backbones.sh
#
# Wall time with one thread, the other core busy with another training (the 20 + 2 epoch recipe, on the machine of the
# session that trained them): ResNet-8 13 min, ResNet-20 34 min, ResNet-32 66 min, ResNet-56 1.7 h, the multi-exit
# ResNet-32 1.4 h (so the five standard ones and five variants take about 11 core-hours); the sigma table 7 min, the
# depth-by-noise study 45 min, each recipe study 35-55 min (machines of earlier sessions were about 2.4x slower).
# Outputs: the checkpoints in cim_gym/backbones/weights/, the CSVs and PNGs in benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m cim_gym.backbones.shipped train --dataset fashion-mnist --skip-existing --threads 1
python -m cim_gym.evaluation.sigma_table --dataset fashion-mnist --images 1000 --threads 1
STUDY=(python -m cim_gym.evaluation.noise_study --dataset fashion-mnist --chips 10 --images 1000 --images-exact 300
       --threads 1)
# depth against every noise source, the standard recipe
"${STUDY[@]}" --depths 8 20 32 56
# the recipe as a variable: a second training seed, and stochastic depth off (block-drop) or on (multi-exit); the
# standard models' points are copied from the study before, not remeasured
"${STUDY[@]}" --depths 20 56 --recipes standard seed1 no-stochastic-depth \
    --reuse benchmarks/results/noise_study_fashion-mnist.csv
"${STUDY[@]}" --variant multiexit --depths 32
"${STUDY[@]}" --variant multiexit --depths 32 --recipes standard stochastic-depth \
    --reuse benchmarks/results/noise_study_fashion-mnist_multiexit.csv
