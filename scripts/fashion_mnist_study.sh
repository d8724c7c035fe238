#!/usr/bin/env bash
# The Fashion-MNIST study of the README's "Results", from a clean checkout: trains every policy it compares (those
# already in runs/fashion-mnist*/ are reused), then evaluates every method on the same chips.
#
#   bash scripts/fashion_mnist_study.sh            # WORKERS=2 to run the sweeps' cells on 2 Ray workers
#   cp -r results/fashion-mnist/runs/. runs/ && bash scripts/fashion_mnist_study.sh  # reuse the committed policies
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
# the programming grid: evaluate.py's default for Fashion-MNIST, from no loss to where the deepest shipped model
# (ResNet-56) has lost half its clean accuracy (0 to 0.16, `evaluate.py --measure-grid`); every policy is trained
# over that range (the standard runs by --train-missing, the others below), since a policy is evaluated only within
# the sigmas it was trained on
complete() { grep -q '"status": "complete"' "$1/run.json" 2>/dev/null; }
# fresh OUT: a finished report without its cells (as committed) holds nothing to resume: it is replaced, as its
# policies may have been trained elsewhere; an interrupted sweep (cells/ present) resumes
fresh() { if [ -f "$1/config.json" ] && [ ! -d "$1/cells" ]; then rm -rf "$1"; fi; }
for report in "$OUT"/*/; do fresh "${report%/}"; done
# train_once OUT ARGS...: a policy outside the standard runs, trained once (an interrupted run is resumed)
train_once() {
    local out=$1; shift
    complete "$out" && return
    python train_agent.py "$@" --steps "$STEPS" --no-report --out "$out" $([ -f "$out/run.json" ] && echo --resume)
}

# 1. Programming variation (the proposal's manipulated variable), on the default grid. Two sweeps on the same chips and
#    test images (same grid, ChipPool seed and image subset): the block-drop family (fixed depths, static masks,
#    block-drop policies, the original BlockDrop) and the multi-exit family (BranchyNet thresholds, exit and
#    threshold policies, with the fixed ResNet-32 as anchor).
#    One more chip-aware policy, trained on many chips (16 per sigma, new ones every 8192 episodes; the standard
#    runs see 4 per sigma, renewed once): a policy can only learn what the descriptor says from many chips.
MANY=runs/fashion-mnist-extra/blockdrop-bernoulli-chip-sigma-manychips
train_once "$MANY" --algo reinforce --env CIMBlockDrop-v0 --depth 20 --observe both --entropy bernoulli \
    --dataset fashion-mnist --cim ideal --noise-source programming --sigma-range 0 0.16 --chips-per-sigma 16 \
    --refresh-chips-every 8192 --seed 0
python evaluate.py "${COMMON[@]}" --run-seeds 0 1 --exit-depth 0 --out "$OUT/programming" --runs "${BLOCKDROP[@]}" \
    blockdrop-bernoulli-chip blockdrop-bernoulli-chip-sigma blockdrop-ideal-lowpenalty blockdrop-ideal-highpenalty \
    --policies "$MANY"
python evaluate.py "${COMMON[@]}" --run-seeds 0 1 --depths 32 --mask-drops --out "$OUT/programming-exits" \
    --runs exit-sigma exit-nosigma thresholds-sigma thresholds-nosigma

# 2. Output noise, where the depth-by-noise study saw the order of depths break at 0.05: evaluate.py's default grid
#    for it (0 to 0.05, where ResNet-56 has lost half its clean accuracy), the block-drop policies retrained on it (a
#    policy is only evaluated on the setting it was trained on).
python evaluate.py "${COMMON[@]}" --noise-source output --exit-depth 0 --out "$OUT/output" --runs "${BLOCKDROP[@]}"

# 3. A weaker entropy bonus (beta 0.01 instead of BlockDrop's 0.1): the policies above end near maximum entropy, so
#    their greedy masks rest on small deviations from p = 0.5. The same pair with beta 0.01, against the full ResNet-20
#    on the same chips and images.
for observe in sigma nosigma; do
    train_once runs/fashion-mnist-extra/blockdrop-bernoulli-beta0.01-$observe --algo reinforce --env CIMBlockDrop-v0 \
        --depth 20 --entropy bernoulli --beta 0.01 --observe $([ $observe = sigma ] && echo sigma || echo none) \
        --dataset fashion-mnist --cim ideal --noise-source programming --sigma-range 0 0.16 --seed 0
done
python evaluate.py "${COMMON[@]}" --exit-depth 0 --no-standard-runs --depths 20 --mask-drops \
    --policies runs/fashion-mnist-extra/blockdrop-bernoulli-beta0.01-{sigma,nosigma} --out "$OUT/programming-beta0.01"

# Keep each finished policy next to the results (no checkpoint or TensorBoard logs: weights and record suffice).
for run in runs/fashion-mnist/* runs/fashion-mnist-output-ideal/* runs/fashion-mnist-extra/*; do
    complete "$run" || continue
    dest="$OUT/runs/$(basename "$(dirname "$run")")/$(basename "$run")"
    mkdir -p "$dest" && cp "$run"/{policy.safetensors,run.json} "$dest"/
    if [ -f "$run/metrics.csv" ]; then cp "$run/metrics.csv" "$dest"/; fi
done
