#!/usr/bin/env bash
# Every GPU measurement of issue 22 in one time-boxed run (at most about 10 minutes on one H200, typically 7: every step is time-boxed), from the repository root:
#
#   bash benchmarks/gpu_check.sh DATA_DIR            # on the GPU machine
#   bash benchmarks/gpu_check.sh DATA_DIR --smoke    # here, on a CPU: every step at a tiny size (~2 minutes)
#
# DATA_DIR holds JPEGs (searched recursively; replicated to 3,000 files for the captioning throughput); when it has
# the shared layout (flickr8k/captions.txt, flickr8k/dataset_flickr8k.json, coco/...) the tests and the training
# step use it too, else the first of $CAPTIONKIT_DATA, shared/data and ../shared/data that has it. Output: $OUT/gpu_check.log (everything) and
# $OUT/gpu_summary.json ($OUT defaults to ./gpu-check-out). A failed or timed-out step is recorded and the next one
# runs. PYTHON (default: python) runs everything, with PYTHONPATH=src.
set -u -o pipefail

DATA_DIR=${1:?usage: bash benchmarks/gpu_check.sh DATA_DIR [--smoke]}
MODE=${2:-full}
OUT=${OUT:-$PWD/gpu-check-out}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
: >"$OUT/steps.tsv"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

export PYTHONPATH=src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore::UserWarning
# The shared data set (captions, Karpathy json) for the tests, the tokenizer and training: the first that has it.
for candidate in "${CAPTIONKIT_DATA:-}" "$DATA_DIR" shared/data ../shared/data; do
    if [ -n "$candidate" ] && [ -f "$candidate/flickr8k/captions.txt" ]; then
        export CAPTIONKIT_DATA
        CAPTIONKIT_DATA=$(cd "$candidate" && pwd)
        break
    fi
done
SHARED=${CAPTIONKIT_DATA:-missing-shared-data}

if [ "$MODE" = "--smoke" ]; then
    DEVICE=cpu PRESET=tiny PHOTOS=24 TRAIN_STEPS=3 TRAIN_BATCH=4 TRAIN_PRESET=tiny CAPTION_BATCH=8 WORKERS=1
    BENCH=("bf16 3")
    DEMO_ARGS=(--steps 5 --train-scenes 16 --test-scenes 4)
    PYTEST_ARGS=(--collect-only -q)
    LIMIT_TESTS=120 LIMIT_BENCH=120 LIMIT_CAPTION=120 LIMIT_TRAIN=180 LIMIT_DEMO=180
else
    DEVICE=cuda PRESET=base PHOTOS=3000 TRAIN_STEPS=40 TRAIN_BATCH=64 TRAIN_PRESET=base CAPTION_BATCH=128 WORKERS=12
    BENCH=("bf16 256" "fp32 256" "fp16 256" "fp32 64" "bf16 64")
    DEMO_ARGS=()
    # One line per test (PASSED/FAILED as it goes): a run cut short by its time limit still says what failed.
    PYTEST_ARGS=(-v --tb=short -rfE --durations=10 -p no:cacheprovider)
    LIMIT_TESTS=150 LIMIT_BENCH=35 LIMIT_CAPTION=50 LIMIT_TRAIN=60 LIMIT_DEMO=90
fi

# step NAME LIMIT_S COMMAND...: time-boxed, logged, summarised.
source benchmarks/gpu_steps.sh

CLI=("$PYTHON" -m captionkit.cli)

echo "=== environment ($MODE): $(date -u), data $DATA_DIR, tests' data $SHARED"
nvidia-smi 2>/dev/null || echo "no nvidia-smi"
step env 30 sh -c "$PYTHON benchmarks/gpu_check.py env | tee '$OUT/env.json'"

for spec in "${BENCH[@]}"; do
    read -r dtype batch <<<"$spec"
    step "benchmark-$dtype-$batch" "$LIMIT_BENCH" sh -c "${CLI[*]} benchmark --preset $PRESET --device $DEVICE \
        --dtype $dtype --batch-size $batch --repeats 3 >'$OUT/bench_${dtype}_$(printf %03d "$batch").json'"
done

step prepare-model 60 "$PYTHON" benchmarks/gpu_check.py save-model "$WORK/model" --preset "$PRESET" \
    --captions "$SHARED/flickr8k/captions.txt"
step prepare-photos 30 "$PYTHON" benchmarks/gpu_check.py photos "$DATA_DIR" "$WORK/photos" --count "$PHOTOS"

# GPU busy share while captioning: utilisation sampled every 200 ms by nvidia-smi.
SAMPLER=""
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 >"$OUT/gpu_busy_caption.txt" &
    SAMPLER=$!
fi
CAPTION_DTYPE=bf16
step caption "$LIMIT_CAPTION" "${CLI[@]}" caption "$WORK/photos" --model "$WORK/model" --device "$DEVICE" \
    --dtype "$CAPTION_DTYPE" --batch-size "$CAPTION_BATCH" --workers "$WORKERS" --output "$WORK/captions.jsonl"
[ -n "$SAMPLER" ] && kill "$SAMPLER"
SECONDS_CAPTION=$(tail -n 1 "$OUT/steps.tsv" | cut -f 3)
CAPTIONED=$(wc -l <"$WORK/captions.jsonl" 2>/dev/null || echo 0)
echo "{\"images\": $CAPTIONED, \"dtype\": \"$CAPTION_DTYPE\", \"seconds_with_model_load\": $SECONDS_CAPTION, \
\"images_per_s\": $(awk "BEGIN {printf \"%.2f\", $CAPTIONED / $SECONDS_CAPTION}")}" >"$OUT/caption.json"

# --batch-size auto on the original photos: the log says which size it chose.
step caption-auto-batch "$LIMIT_CAPTION" "${CLI[@]}" caption "$DATA_DIR" --model "$WORK/model" --device "$DEVICE" \
    --dtype "$CAPTION_DTYPE" --batch-size auto --workers "$WORKERS" --output "$WORK/captions-auto.jsonl"

"$PYTHON" benchmarks/gpu_check.py recipe "$WORK/train.yaml" --preset "$TRAIN_PRESET" --data "$SHARED" \
    --batch-size "$TRAIN_BATCH" --precision bf16 --steps "$TRAIN_STEPS"
step train "$LIMIT_TRAIN" "${CLI[@]}" train "$WORK/train.yaml" --output "$WORK/run" --no-progress
cp "$WORK/run/metrics.jsonl" "$OUT/train_metrics.jsonl" 2>/dev/null || echo "no training metrics"

step tests "$LIMIT_TESTS" "$PYTHON" -m pytest "${PYTEST_ARGS[@]}" \
    tests/test_decoding.py tests/test_fast_decoding.py tests/test_attention_maps.py tests/test_vit_gpt2.py \
    tests/test_prefix_gpt2.py tests/test_cnn_lstm.py tests/test_training_loop.py tests/test_registry.py \
    tests/test_precision.py tests/test_images.py

step demo "$LIMIT_DEMO" sh -c "${CLI[*]} demo --output '$WORK/demo' ${DEMO_ARGS[*]} >'$OUT/demo.json'"

echo "=== summary"
"$PYTHON" benchmarks/gpu_check.py summary "$OUT"
