# Sourced by the GPU check scripts (benchmarks/gpu_check*.sh): `step NAME LIMIT_S COMMAND...` runs COMMAND under
# `timeout`, logs its exit code and wall time to $OUT/steps.tsv and rewrites the summary ($OUT/gpu_summary.json, by
# `$PYTHON benchmarks/gpu_check.py summary $OUT`), so a run cut short still leaves what it measured.
# BUDGET_S (optional): seconds for the whole script (bash's $SECONDS). A step then runs for at most what is left of
# it, and one that would get under MIN_STEP_S (default 20) is skipped ("skipped" in steps.tsv, named in the summary):
# the script ends inside the budget, so a run fits one device call and says which steps it left for another.
step() {
    local name=$1 limit=$2
    shift 2
    if [ -n "${BUDGET_S:-}" ]; then
        local left=$((BUDGET_S - SECONDS))
        if [ "$left" -lt "${MIN_STEP_S:-20}" ]; then
            echo "=== $name: SKIPPED (${left}s left of the ${BUDGET_S}s budget)"
            printf '%s\tskipped\t0\n' "$name" >>"$OUT/steps.tsv"
            "$PYTHON" benchmarks/gpu_check.py summary "$OUT" >/dev/null 2>&1
            return 0
        fi
        [ "$left" -lt "$limit" ] && limit=$left
    fi
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
