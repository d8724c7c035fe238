#!/usr/bin/env bash
# The Fashion-MNIST study of the README's "Results", from a clean checkout: trains every policy it compares (those
# already in runs/fashion-mnist*/ are reused), then evaluates every method on the same chips.
#
#   bash scripts/fashion_mnist_study.sh            # WORKERS=2 to run the sweeps' cells on 2 Ray workers
#
# Budgets (2 CPU cores): REINFORCE policies get STEPS=120000 episodes each (BlockDrop's default is 300000; 120000 is
# what fits), two training seeds for every noise-aware policy and its sigma-hidden twin. The backbones are the
# shipped ones (python -m cim_gym.backbones.shipped table). Outputs: results/fashion-mnist/<setting>/ (summary.md,
# results.csv, config.json, PNGs) and a copy of each policy's run folder (weights, run.json, its own report).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-120000}
WORKERS=${WORKERS:-0}
OUT=${OUT:-results/fashion-mnist}
COMMON=(--dataset fashion-mnist --chips 10 --images 500 --train-missing --train-steps "$STEPS" --workers "$WORKERS")
BLOCKDROP=(blockdrop-bernoulli-sigma blockdrop-bernoulli-nosigma)

# 1. Programming variation (the proposal's manipulated variable): the default grid, 0 to where ResNet-56 has lost
#    half its clean accuracy; every standard method of the proposal's comparison.
python evaluate.py "${COMMON[@]}" --run-seeds 0 1 --out "$OUT/programming" --runs "${BLOCKDROP[@]}" \
    blockdrop-bernoulli-chip blockdrop-bernoulli-chip-sigma blockdrop-ideal-lowpenalty blockdrop-ideal-highpenalty \
    exit-sigma exit-nosigma thresholds-sigma thresholds-nosigma

# 2. Output noise, where the depth-by-noise study saw the direction reverse past a middle depth: a shorter grid, the
#    block-drop policies retrained on it (a policy is only evaluated on the setting it was trained on).
python evaluate.py "${COMMON[@]}" --noise-source output --sigma-grid 0 0.01 0.02 0.03 0.04 --out "$OUT/output" \
    --runs "${BLOCKDROP[@]}"

# 3. 5-bit ADCs (NeuroSim's default), where the deepest nets fell furthest: programming variation on 5-bit chips,
#    the fixed and static methods only (the exact ADC path is ~20x slower: no policy is trained on it here).
python evaluate.py --dataset fashion-mnist --chips 10 --images 300 --workers "$WORKERS" --no-standard-runs \
    --cim '{"preset": "ideal", "adc_bits": 5}' --sigma-grid 0 0.03 0.06 --out "$OUT/adc5"

# Keep each policy next to the results (no checkpoint.pt or TensorBoard logs: the weights and the record suffice).
for run in runs/fashion-mnist/* runs/fashion-mnist-output-ideal/*; do
    dest="$OUT/runs/$(basename "$(dirname "$run")")/$(basename "$run")"
    mkdir -p "$dest" && cp "$run"/{policy.safetensors,run.json} "$dest"/
    [ -f "$run/metrics.csv" ] && cp "$run/metrics.csv" "$dest"/
done
