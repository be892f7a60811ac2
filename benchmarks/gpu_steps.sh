# Sourced by the GPU check scripts (benchmarks/gpu_check*.sh): `step NAME LIMIT_S COMMAND...` runs COMMAND under
# `timeout`, logs its exit code and wall time to $PARTS/steps.tsv and rewrites the summary ($OUT/gpu_summary.json, by
# `$PYTHON benchmarks/gpu_check.py summary $PARTS --output $OUT/gpu_summary.json`), so a run cut short still leaves
# what it measured. The steps' own files go to $PARTS, not $OUT: at most 8 files come back from a GPU machine's $OUT,
# so it holds only the log and the summary, which carries every part.
# BUDGET_S (optional): seconds for the whole script (bash's $SECONDS). A step then runs for at most what is left of
# it, and one that would get under MIN_STEP_S (default 20) is skipped ("skipped" in steps.tsv, named in the summary):
# the script ends inside the budget, so a run fits one device call and says which steps it left for another.
summarise() {  # its JSON only in the file; an error, which would leave the last summary standing, in the log
    "$PYTHON" benchmarks/gpu_check.py summary "$PARTS" --output "$OUT/gpu_summary.json" >/dev/null
}

step() {
    local name=$1 limit=$2
    shift 2
    if [ -n "${BUDGET_S:-}" ]; then
        local left=$((BUDGET_S - SECONDS))
        if [ "$left" -lt "${MIN_STEP_S:-20}" ]; then
            echo "=== $name: SKIPPED (${left}s left of the ${BUDGET_S}s budget)"
            printf '%s\tskipped\t0\n' "$name" >>"$PARTS/steps.tsv"
            summarise
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
    printf '%s\t%s\t%s\n' "$name" "$code" "$seconds" >>"$PARTS/steps.tsv"
    summarise
    return 0
}
