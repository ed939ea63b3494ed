#!/usr/bin/env bash
# The GPU measurements of the performance and validity issues, in two calls of under 10 minutes each on one
# lent H200. Result JSON files and logs go to $WORK/results and, after every step, into $OUT/results.tar.
#   bash benchmarks/gpu_suite.sh ceiling     # original pipeline; model-only step per lever; memory
#   bash benchmarks/gpu_suite.sh final       # both, reordered to fit one call (accuracy runs in parallel)
#   bash benchmarks/gpu_suite.sh pipeline    # bundle end to end, validity, cache fill, latency, saliency
set -uo pipefail
part=${1:?ceiling or pipeline}
cd "$(dirname "$0")/.."
work=${WORK:-/tmp/alz-work}
export BENCH_OUT=$work/results PYTHONUNBUFFERED=1
mkdir -p "$BENCH_OUT" "${OUT:=$work/out}"
if [ -d .whl ]; then  # the GPU image lacks these: carried as wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
set -f  # from here on, bundle overrides like [128,128,128] are not globs
${DRY_RUN:+echo} nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
collect() {  # results so far into $OUT, so that a call cut short still returns them
    find "$work" -name benchmark.log -not -path "$BENCH_OUT/*" -exec cp --parents {} "$BENCH_OUT" \; 2>/dev/null
    tar -cf "$OUT/results.tmp" -C "$BENCH_OUT" . && mv "$OUT/results.tmp" "$OUT/results.tar"
}
(while sleep 20; do collect; done) &
trap 'kill %1 2>/dev/null; collect' EXIT
step() {  # one measurement, its log kept per step
    local log="$BENCH_OUT/step_$(date +%H%M%S)_${RANDOM}.log"
    echo "=== $* ($(date +%T))"
    ${DRY_RUN:+echo} "$@" >"$log" 2>&1
    echo "exit $? ($(date +%T))"
    grep -vE "Warning|warn\(|it/s\]|s/it\]|scan/s\]" "$log" | tail -n 8
}
perf=(--spatial_size "[128,128,128]" --pixdim "[1.5,1.5,1.5]" --batch_size 16 --cache_workers 15
      --cache_device cuda:0 --augmentation_on batch --amp true --channels_last true --compile "${COMPILE:-false}"
      --num_epochs 30 --learning_rate 0.0003 --warmup_epochs 2 --log_every_n_steps 50)
case $part in
ceiling)
    step python3 -m alz_monai.cli synth "$work/data1mm" --subjects 24 --sessions 2 --spacing 1.0 --workers 15
    step python3 benchmarks/original_pipeline.py "$work/data1mm" --workers 4,15 --limit 48 --label 1mm
    step python3 -m alz_monai.cli synth "$work/data2mm" --subjects 32 --sessions 2 --spacing 2.0 --workers 15
    step python3 benchmarks/original_pipeline.py "$work/data2mm" --workers 4,15 --limit 64 --label 2mm
    step python3 benchmarks/model_step.py --models resnet18,mosa_shared,resnet50 --size 128 --batch 16 --steps 15
    ;;
final)  # one call for the rest: clean timings first, then the accuracy runs side by side
    step python3 -m alz_monai.cli synth "$work/data" --subjects 200 --sessions 2 --spacing 2.0 --workers 15 &
    synth=$!
    step timeout 180 python3 benchmarks/model_step.py --models resnet18,mosa_shared,resnet50 --compile-models resnet18 \
        --size 128 --batch 16 --steps 15 --memory-batches 8,16
    wait $synth
    step timeout 150 python3 benchmarks/validity.py "$work/data" "$work/validity" --conditions participant \
        --label participant "${perf[@]}"
    step timeout 40 python3 benchmarks/inference_latency.py "$work/data" --scans 200 \
        --checkpoint "$work/validity/participant/checkpoints/model_best.pt"
    step timeout 180 python3 benchmarks/validity.py "$work/data" "$work/validity" --conditions shuffled --leaky --label controls \
        "${perf[@]}" &
    controls=$!
    step timeout 170 python3 benchmarks/saliency_validation.py --dataset "$work/data" \
        --run-dir "$work/validity/participant" --set "spatial_size=[128,128,128]" --set "pixdim=[1.5,1.5,1.5]" \
        --max-scans 15 --output-dir "$BENCH_OUT" &
    saliency=$!
    step timeout 90 python3 benchmarks/cache_fill.py "$work/data" --workers 4,15 --limit 32 --cache-dir "$work/pcache"
    wait $controls $saliency
    ;;
pipeline)
    step python3 -m alz_monai.cli synth "$work/data" --subjects 200 --sessions 2 --spacing 2.0 --workers 15
    step python3 benchmarks/validity.py "$work/data" "$work/validity" --conditions participant --label participant \
        "${perf[@]}"
    step python3 benchmarks/cache_fill.py "$work/data" --workers 4,15 --limit 64 --cache-dir "$work/pcache"
    step python3 benchmarks/inference_latency.py "$work/data" --scans 200 \
        --checkpoint "$work/validity/participant/checkpoints/model_best.pt"
    step python3 benchmarks/saliency_validation.py --dataset "$work/data" --run-dir "$work/validity/participant" \
        --set "spatial_size=[128,128,128]" --set "pixdim=[1.5,1.5,1.5]" --max-scans 30 --output-dir "$BENCH_OUT"
    step python3 benchmarks/validity.py "$work/data" "$work/validity" --conditions shuffled --leaky --label controls \
        "${perf[@]}"
    ;;
esac
