#!/usr/bin/env bash
# Every GPU measurement of issue 22 in one time-boxed run (every step is time-boxed), from the repository root:
#
#   bash benchmarks/gpu_check.sh DATA_DIR            # on the GPU machine: all groups, ends within BUDGET_S (560 s)
#   ONLY=graphs,resume bash benchmarks/gpu_check.sh DATA_DIR   # some groups only (graphs + resume: about 4 minutes)
#   bash benchmarks/gpu_check.sh DATA_DIR --smoke    # here, on a CPU: every step at a tiny size (~3 minutes)
#
# A full run is time-boxed as a whole so that it fits one 10-minute device call: BUDGET_S (default 560 on the GPU,
# none with --smoke) caps every step at what is left of it, and the steps it cannot start are skipped and named in
# the summary (run them with ONLY=... in a second call). Groups run in order of importance for issue 22: caption,
# graphs, train, bench, resume, tests, demo, compile.
#
# Groups (ONLY, comma-separated; default all): bench (the decoding benchmark per dtype), caption (a folder of JPEGs,
# and --batch-size auto), train, tests (the GPU-relevant test files), demo, graphs (decoding with the captured
# CUDA-graph step and eager, same benchmark, bf16 and fp32), resume (exact resume on the device: N steps against
# N/2 + crash + resume, with and without deterministic algorithms), compile (the graphs group's benchmark through
# torch.compile(mode="reduce-overhead"): last, as compiling may take its whole time limit).
#
# DATA_DIR holds JPEGs (searched recursively; replicated to 3,000 files for the captioning throughput); when it has
# the shared layout (flickr8k/captions.txt, flickr8k/dataset_flickr8k.json, coco/...) the tests and the training
# step use it too, else the first of $CAPTIONKIT_DATA, shared/data and ../shared/data that has it. Output, 2 files:
# $OUT/gpu_check.log (everything) and $OUT/gpu_summary.json (every step's figures and the benchmarks' whole JSON,
# rewritten after each step; $OUT defaults to ./gpu-check-out): at most 8 files come back from a GPU machine, so the
# steps' own files stay in a scratch folder. A failed or timed-out step is recorded and the next one runs.
# PYTHON (default: .venv/bin/python where it exists, else python3, the GPU machines' python with torch) runs
# everything, with PYTHONPATH=src.
set -u -o pipefail

# --smoke may come before or after DATA_DIR: taken as DATA_DIR, it ran the full GPU run on a folder named --smoke.
MODE=full DATA_DIR=""
for arg in "$@"; do
    if [ "$arg" = "--smoke" ]; then MODE=--smoke; else DATA_DIR=$arg; fi
done
[ -n "$DATA_DIR" ] || { echo "usage: bash benchmarks/gpu_check.sh DATA_DIR [--smoke]" >&2; exit 1; }
ONLY=${ONLY:-}
OUT=${OUT:-$PWD/gpu-check-out}
# The repository's environment where `make venv` made one (its python has captionkit's dependencies), else python3
# (a GPU machine has no .venv, which is too large to carry, and may have no `python`).
if [ -x .venv/bin/python ]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PARTS=$WORK/parts  # the steps' own files, which the summary gathers (see gpu_steps.sh)
mkdir "$PARTS"
: >"$PARTS/steps.tsv"
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
    GRAPHS=("0 bf16 8" "1 bf16 8" "1 fp32 4") COMPILE=("compile bf16 8") RESUME=(--preset tiny --steps 4 --batch-size 4)
    LIMIT_GRAPHS=90 LIMIT_RESUME=120
    # One timed repeat: bf16 on a CPU took 6 s a batch even at the tiny preset, so 3 repeats overran 90 s.
    BENCH_REPEATS=1
    # --batch-size auto on the 24 prepared photos: DATA_DIR's 301 took over the step's 120 s on a CPU.
    AUTO_PHOTOS=photos
else
    DEVICE=cuda PRESET=base PHOTOS=3000 TRAIN_STEPS=40 TRAIN_BATCH=64 TRAIN_PRESET=base CAPTION_BATCH=128 WORKERS=12
    BUDGET_S=${BUDGET_S:-560}
    # bf16 256 and fp32 64 are measured by the graphs group (mode 0: eager, static cache on, as on a GPU by default).
    BENCH=("fp32 256" "fp16 256" "bf16 64")
    DEMO_ARGS=()
    # One line per test (PASSED/FAILED as it goes): a run cut short by its time limit still says what failed.
    PYTEST_ARGS=(-v --tb=short -rfE --durations=10 -p no:cacheprovider)
    LIMIT_TESTS=150 LIMIT_BENCH=35 LIMIT_CAPTION=50 LIMIT_TRAIN=60 LIMIT_DEMO=90
    # MODE DTYPE BATCH: CAPTIONKIT_CUDA_GRAPHS=MODE (0 eager, 1 captured CUDA graphs, compile: torch.compile).
    GRAPHS=("0 bf16 256" "1 bf16 256" "0 fp32 64" "1 fp32 64") COMPILE=("compile bf16 256" "compile fp32 64")
    RESUME=(--preset base --steps 8 --batch-size 32)
    LIMIT_GRAPHS=50 LIMIT_RESUME=120
    BENCH_REPEATS=3
    AUTO_PHOTOS=original
fi

# step NAME LIMIT_S COMMAND...: time-boxed, logged, summarised.
source benchmarks/gpu_steps.sh
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }  # want GROUP: whether ONLY selects it

CLI=("$PYTHON" -m captionkit.cli)

echo "=== environment ($MODE): $(date -u), data $DATA_DIR, tests' data $SHARED"
# A step (time-boxed): nvidia-smi hangs on a GPU in a bad state, and that must not take the whole call.
if command -v nvidia-smi >/dev/null; then step nvidia-smi 20 nvidia-smi; else echo "no nvidia-smi"; fi
# Not `| tee`: sh has no pipefail, and the step took tee's exit code (0) for a failed env.
step env 30 sh -c "$PYTHON benchmarks/gpu_check.py env >'$PARTS/env.json' && cat '$PARTS/env.json'"

if want caption; then
    step prepare-model 60 "$PYTHON" benchmarks/gpu_check.py save-model "$WORK/model" --preset "$PRESET" \
        --captions "$SHARED/flickr8k/captions.txt"
    step prepare-photos 30 "$PYTHON" benchmarks/gpu_check.py photos "$DATA_DIR" "$WORK/photos" --count "$PHOTOS"

    # GPU busy share while captioning: utilisation sampled every 200 ms by nvidia-smi.
    SAMPLER=""
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 >"$PARTS/gpu_busy_caption.txt" &
        SAMPLER=$!
    fi
    CAPTION_DTYPE=bf16
    # stderr kept apart for the closing line: "...; R images/s (S s; loading the model L s)", the pace without the
    # process start and the model load (which the step's wall time includes).
    step caption "$LIMIT_CAPTION" sh -c "${CLI[*]} caption '$WORK/photos' --model '$WORK/model' --device $DEVICE \
        --dtype $CAPTION_DTYPE --batch-size $CAPTION_BATCH --workers $WORKERS --output '$WORK/captions.jsonl' \
        2>'$PARTS/caption_stderr.txt'"
    [ -n "$SAMPLER" ] && kill "$SAMPLER"
    tail -n 3 "$PARTS/caption_stderr.txt" 2>/dev/null
    CAPTION_STATUS=$(tail -n 1 "$PARTS/steps.tsv" | cut -f 2)
    SECONDS_CAPTION=$(tail -n 1 "$PARTS/steps.tsv" | cut -f 3)
    CAPTIONED=$(wc -l <"$WORK/captions.jsonl" 2>/dev/null || echo 0)
    PACE=$(sed -nE 's/.*; ([0-9.]+) images\/s \(([0-9.]+) s; loading the model ([0-9.]+) s\)$/\1 \2 \3/p' \
        "$PARTS/caption_stderr.txt" 2>/dev/null | tail -n 1)
    read -r RATE CAPTION_S LOAD_S <<<"${PACE:-null null null}"
    # Not when the budget skipped the step; a step under 5 ms (a stand-in) has 0.00 s and no pace of its own.
    if [ "$CAPTION_STATUS" != skipped ]; then
        echo "{\"images\": $CAPTIONED, \"dtype\": \"$CAPTION_DTYPE\", \"seconds_with_model_load\": \
$SECONDS_CAPTION, \"images_per_s\": $(awk "BEGIN {s = $SECONDS_CAPTION; if (s > 0) printf \"%.2f\", $CAPTIONED / s; \
else printf \"null\"}"), \
\"images_per_s_captioning\": $RATE, \"captioning_seconds\": $CAPTION_S, \"model_load_seconds\": $LOAD_S}" \
            >"$PARTS/caption.json"
        summarise
    fi

    # --batch-size auto on the original photos (--smoke: the prepared ones): the log says which size it chose.
    AUTO_INPUT=$DATA_DIR
    [ "$AUTO_PHOTOS" = photos ] && AUTO_INPUT=$WORK/photos
    step caption-auto-batch "$LIMIT_CAPTION" "${CLI[@]}" caption "$AUTO_INPUT" --model "$WORK/model" \
        --device "$DEVICE" --dtype "$CAPTION_DTYPE" --batch-size auto --workers "$WORKERS" \
        --output "$WORK/captions-auto.jsonl"
fi

# Decoding with the fixed-shape GPT-2 step captured as a CUDA graph per bucket (1), through
# torch.compile(mode="reduce-overhead") (compile, its own group, last) and eager (0), static cache on: images/s side by
# side, and in fp32 whether the captions stay identical to transformers' generate. The warm-up call
# captures/compiles; the timed repeats reuse the bucket's graph.
graph_benchmarks() {
    for spec in "$@"; do
        read -r graphs dtype batch <<<"$spec"
        step "benchmark-graphs-$graphs-$dtype-$batch" "$LIMIT_GRAPHS" sh -c "CAPTIONKIT_STATIC_CACHE=1 \
            CAPTIONKIT_CUDA_GRAPHS=$graphs ${CLI[*]} benchmark --preset $PRESET --device $DEVICE --dtype $dtype \
            --batch-size $batch --repeats $BENCH_REPEATS >'$PARTS/bench_graphs_${graphs}_${dtype}_$(printf %03d "$batch").json'"
    done
}
want graphs && graph_benchmarks "${GRAPHS[@]}"

if want train; then
    "$PYTHON" benchmarks/gpu_check.py recipe "$WORK/train.yaml" --preset "$TRAIN_PRESET" --data "$SHARED" \
        --batch-size "$TRAIN_BATCH" --precision bf16 --steps "$TRAIN_STEPS"
    step train "$LIMIT_TRAIN" "${CLI[@]}" train "$WORK/train.yaml" --output "$WORK/run" --no-progress
    cp "$WORK/run/metrics.jsonl" "$PARTS/train_metrics.jsonl" 2>/dev/null || echo "no training metrics"
    summarise
fi

if want bench; then
    for spec in "${BENCH[@]}"; do
        read -r dtype batch <<<"$spec"
        step "benchmark-$dtype-$batch" "$LIMIT_BENCH" sh -c "${CLI[*]} benchmark --preset $PRESET --device $DEVICE \
            --dtype $dtype --batch-size $batch --repeats $BENCH_REPEATS >'$PARTS/bench_${dtype}_$(printf %03d "$batch").json'"
    done
fi

# Exact resume on the device: does N/2 steps + crash + resume give the uninterrupted run's weights bit for bit,
# with deterministic algorithms (train.deterministic) and without? Else the JSON says by how much they differ.
if want resume; then
    step resume-deterministic "$LIMIT_RESUME" "$PYTHON" benchmarks/gpu_check.py resume-check \
        "$PARTS/resume_deterministic.json" --device "$DEVICE" "${RESUME[@]}" --deterministic
    step resume-default "$LIMIT_RESUME" "$PYTHON" benchmarks/gpu_check.py resume-check \
        "$PARTS/resume_default.json" --device "$DEVICE" "${RESUME[@]}"
fi

if want tests; then
    step tests "$LIMIT_TESTS" "$PYTHON" -m pytest "${PYTEST_ARGS[@]}" \
        tests/test_decoding.py tests/test_fast_decoding.py tests/test_graph_cache.py tests/test_attention_maps.py \
        tests/test_vit_gpt2.py tests/test_prefix_gpt2.py tests/test_cnn_lstm.py tests/test_training_loop.py \
        tests/test_registry.py tests/test_precision.py tests/test_images.py
fi

if want demo; then
    step demo "$LIMIT_DEMO" sh -c "${CLI[*]} demo --output '$WORK/demo' ${DEMO_ARGS[*]} >'$PARTS/demo.json'"
fi

want compile && graph_benchmarks "${COMPILE[@]}"

echo "=== summary"
"$PYTHON" benchmarks/gpu_check.py summary "$PARTS" --output "$OUT/gpu_summary.json"
