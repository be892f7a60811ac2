# Sourced by the GPU check scripts (benchmarks/gpu_check*.sh): `step NAME LIMIT_S COMMAND...` runs COMMAND under
# `timeout`, logs its exit code and wall time to $OUT/steps.tsv and rewrites the summary ($OUT/gpu_summary.json, by
# `$PYTHON benchmarks/gpu_check.py summary $OUT`), so a run cut short still leaves what it measured.
step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (at most ${limit}s): $*"
    local start end code
    start=$(date +%s.%N)
    timeout -k 10 "$limit" "$@"
    code=$?
    end=$(date +%s.%N)
    local seconds
    seconds=$(awk "BEGIN {printf \"%.2f\", $end - $start}")
    [ "$code" -eq 124 ] && echo "=== $name: TIMED OUT after ${limit}s"
    echo "=== $name: exit $code in ${seconds}s"
    printf '%s\t%s\t%s\n' "$name" "$code" "$seconds" >>"$OUT/steps.tsv"
    "$PYTHON" benchmarks/gpu_check.py summary "$OUT" >/dev/null 2>&1
    return 0
}
