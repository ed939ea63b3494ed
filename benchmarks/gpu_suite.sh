#!/usr/bin/env bash
# The GPU measurements of the performance and validity issues, in calls of under 10 minutes each on one lent
# H200. Result JSON files and logs go to $WORK/results and, after every step, into $OUT/results.tar.
#   bash benchmarks/gpu_suite.sh ceiling   # original pipeline; cache fill; model-only step per lever (no compile)
#   bash benchmarks/gpu_suite.sh speed     # model-only step: the stem by space-to-depth; every lever incl.
#                                          # compile and CUDA graphs; batch 32
#   bash benchmarks/gpu_suite.sh step      # the step with the space-to-depth stem: eager, compiled, CUDA graphs,
#                                          # kernel profiles of the eager and compiled steps
#   bash benchmarks/gpu_suite.sh stem      # stem variants (taps folded into channels, max-pool forms), alone and
#                                          # in eager, compiled and CUDA-graph steps
#   bash benchmarks/gpu_suite.sh final     # the defaults' step: eager, compiled, CUDA graphs, profiles; starts
#                                          # making 600 1-mm scans in the background for `ttr`
#   bash benchmarks/gpu_suite.sh ttr       # cache fill of 1-mm scans per worker count; time to result (600 scans,
#                                          # stage 1 40 epochs, stage 2 30 epochs, test evaluation)
#   bash benchmarks/gpu_suite.sh memory    # kernel profiles, peak memory per batch, the largest batch
#   bash benchmarks/gpu_suite.sh pipeline  # bundle end to end (background vs synchronous checkpoints),
#                                          # validity on the test split, GPU latency, Grad-CAM at layer3
#   bash benchmarks/gpu_suite.sh saliency  # a 20-epoch stage-1 model, then Grad-CAM (layer4) and occlusion scored
# Each part runs once per $WORK folder: the bundles refuse to overwrite a finished run (set WORK to start afresh).
set -uo pipefail
part=${1:?ceiling, speed, step, stem, final, ttr, memory, pipeline or saliency}
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
synth_data() {  # a machine still warm from an earlier call keeps its dataset (and refuses to overwrite runs)
    [ -f "$work/data/scans.tsv" ] ||
        step python3 -m alz_monai.cli synth "$work/data" --subjects 200 --sessions 2 --spacing 2.0 --workers 15
}
perf=(--spatial_size "[128,128,128]" --pixdim "[1.5,1.5,1.5]" --batch_size 16 --cache_workers 15
      --cache_device cuda:0 --augmentation_on batch --amp true --channels_last true --compile "${COMPILE:-false}"
      --learning_rate 0.0003 --warmup_epochs 2 --log_every_n_steps 50)
case $part in
ceiling)
    step python3 -m alz_monai.cli synth "$work/data1mm" --subjects 24 --sessions 2 --spacing 1.0 --workers 15
    step python3 benchmarks/original_pipeline.py "$work/data1mm" --workers 4,15 --limit 48 --label 1mm
    step python3 -m alz_monai.cli synth "$work/data2mm" --subjects 32 --sessions 2 --spacing 2.0 --workers 15
    step python3 benchmarks/original_pipeline.py "$work/data2mm" --workers 4,15 --limit 64 --label 2mm
    step timeout 120 python3 benchmarks/cache_fill.py "$work/data2mm" --workers 4,15 --limit 32 --cache-dir "$work/pcache"
    step python3 benchmarks/model_step.py --models resnet18,mosa_shared,resnet50 --compile-models "" --size 128 \
        --batch 16 --steps 15 --memory-batches ""
    ;;
speed)  # the stem, the uncompiled levers, then the compiled ones (minutes of compiling)
    step timeout 90 python3 benchmarks/stem_layout.py --models resnet18,mosa_shared --size 128 --batch 16
    step timeout 150 python3 benchmarks/model_step.py --models resnet18,mosa_shared,resnet50 --compile-models "" \
        --size 128 --batch 16 --steps 15 --extra-batches 32 --memory-batches ""
    step timeout 250 env BENCH_OUT="$BENCH_OUT/compiled" python3 benchmarks/model_step.py \
        --models resnet18,mosa_shared --levers bf16_channels_last_stem_compile,bf16_channels_last_stem_compile_cudagraphs \
        --size 128 --batch 16 --steps 15 --memory-batches ""
    ;;
step)  # eager with and without the stem, then compiled (Inductor's cache in $work makes a second call cheaper)
    export TORCHINDUCTOR_CACHE_DIR=$work/inductor
    step timeout 120 env BENCH_OUT="$BENCH_OUT/eager" python3 benchmarks/model_step.py \
        --models resnet18,mosa_shared,resnet50 --levers bf16_channels_last,bf16_channels_last_stem \
        --compile-models "" --size 128 --batch 16 --steps 15 --memory-batches ""
    step timeout 330 env BENCH_OUT="$BENCH_OUT/compiled" python3 benchmarks/model_step.py \
        --models resnet18,mosa_shared --levers "${LEVERS:-bf16_channels_last_stem_compile}" --size 128 --batch 16 \
        --steps 15 --memory-batches "" --profile-models resnet18,mosa_shared \
        --profile-levers bf16_channels_last_stem,bf16_channels_last_stem_compile
    step timeout 90 python3 benchmarks/stem_layout.py --models resnet18 --size 128 --batch 16 --steps 10
    ;;
stem)
    export TORCHINDUCTOR_CACHE_DIR=$work/inductor
    step timeout 560 python3 benchmarks/stem_variants.py --size 128 --batch 16
    ;;
final)  # the scans are made on the CPU meanwhile (niced, in their own session and not a job of this shell: they
    # outlive this call, which does not wait for them; 600 scans took 411 s on 12 workers)
    mkdir -p "$work/ttr"
    [ -f "$work/ttr/data/scans.tsv" ] || (setsid nice -n 19 python3 -m alz_monai.cli synth "$work/ttr/data" \
        --subjects 300 --sessions 2 --spacing 1.0 --workers 12 >"$BENCH_OUT/synth_1mm.log" 2>&1 < /dev/null &)
    export TORCHINDUCTOR_CACHE_DIR=$work/inductor
    step timeout 420 env BENCH_OUT="$BENCH_OUT/final" python3 benchmarks/model_step.py --models resnet18,mosa_shared \
        --levers bf16_channels_last_stem,bf16_channels_last_stem_compile,bf16_channels_last_stem_compile_cudagraphs \
        --size 128 --batch 16 --steps 20 --memory-batches "" --profile-models resnet18,mosa_shared \
        --profile-levers bf16_channels_last_stem_compile
    ;;
ttr)
    while [ ! -f "$work/ttr/data/scans.tsv" ] && pgrep -f "alz_monai.cli synth $work/ttr/data" >/dev/null; do sleep 5; done
    step timeout 100 python3 benchmarks/cache_fill.py "$work/ttr/data" --workers 1,4,15 --limit 24
    step timeout 470 python3 benchmarks/time_to_result.py "$work/ttr" --scans 600 --label h200 -- \
        --spatial_size "[128,128,128]" --pixdim "[1.5,1.5,1.5]" --batch_size 16 --cache_workers 15 \
        --cache_device cuda:0 --augmentation_on batch --amp true --channels_last true --background_checkpoint true \
        --progress_bar false --log_every_n_steps 50
    ;;
memory)  # kernel profiles; peak memory at two batch sizes, then the predicted largest batch run
    step timeout 400 env BENCH_OUT="$BENCH_OUT/memory" python3 benchmarks/model_step.py \
        --models resnet18,mosa_shared,resnet50 --levers bf16_channels_last --size 128 --batch 16 --steps 10 \
        --profile-models resnet18,mosa_shared --memory-batches 8,16
    ;;
pipeline)  # clean timings first (the GPU to themselves), then the control trainings and saliency side by side
    synth_data
    step timeout 200 python3 benchmarks/validity.py "$work/data" "$work/validity" --conditions participant \
        --label participant "${perf[@]}" --num_epochs 30 --background_checkpoint true
    step timeout 100 python3 benchmarks/bundle_throughput.py --name r18_synchronous_checkpoint -- \
        --dataset_dir "$work/validity/tables_participant/scans.tsv" --output_dir "$work/synchronous" "${perf[@]}" \
        --num_epochs 6 --background_checkpoint false
    step timeout 60 python3 benchmarks/inference_latency.py "$work/data" --scans 200 \
        --checkpoint "$work/validity/participant/checkpoints/model_best.pt"
    side_by_side=()
    for condition in shuffled scan; do
        step timeout 260 python3 benchmarks/validity.py "$work/data" "$work/validity" --conditions $condition \
            --label $condition "${perf[@]}" --num_epochs 30 --background_checkpoint true &
        side_by_side+=($!)
    done
    # Grad-CAM at layer3 only: occlusion at 128^3 does not finish beside the trainings (the `saliency` part runs it)
    step timeout 240 python3 benchmarks/saliency_validation.py --dataset "$work/data" \
        --run-dir "$work/validity/participant" --set "spatial_size=[128,128,128]" --set "pixdim=[1.5,1.5,1.5]" \
        --gradcam-layer layer3 --methods gradcam --max-scans 15 --output-dir "$BENCH_OUT/saliency_layer3" &
    side_by_side+=($!)
    wait "${side_by_side[@]}"
    ;;
saliency)  # occlusion needs ~4,000 forward passes per scan: it gets the GPU to itself
    synth_data
    step timeout 150 python3 benchmarks/validity.py "$work/data" "$work/saliency_model" --conditions participant \
        --label saliency_model "${perf[@]}" --num_epochs 20 --background_checkpoint true
    step timeout 330 python3 benchmarks/saliency_validation.py --dataset "$work/data" \
        --run-dir "$work/saliency_model/participant" --set "spatial_size=[128,128,128]" --set "pixdim=[1.5,1.5,1.5]" \
        --gradcam-layer layer4 --methods gradcam occlusion --max-scans 12 --output-dir "$BENCH_OUT/saliency_layer4"
    ;;
esac
