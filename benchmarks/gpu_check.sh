#!/usr/bin/env bash
# GPU readiness check (issue 17.4): one command that, on a machine with CUDA and the frameworks' GPU builds,
#   1. finds which of torch / jax / tensorflow has a working GPU build,
#   2. runs the conformance suite (`hardneg verify`) on the GPU for each of them,
#   3. runs `hardneg bench --device cuda` at B in {4096, 65536} (d = 128, float32, estimator hard): the
#      backend against the naive code, the three-product floor and the two-product symmetric floor,
#   4. writes one JSON summary (OUT/summary.json) and prints it.
#
# Usage:  bash benchmarks/gpu_check.sh [OUT_DIR]            (default OUT_DIR: gpu-check-out)
# Environment:
#   PYTHON          interpreter with hardneg installed (default: python)
#   TOTAL_S         wall-clock budget of the whole check in seconds (default 300); every step gets at most
#                   the time that is left, and a step cut short is reported as "timeout"
#   VERIFY_S        most seconds one backend's `hardneg verify` may take (default 45)
#   VERIFY_EXAMPLES examples per generated feature for `hardneg verify --max-examples` (default 3)
#   BENCH_BUDGET    `hardneg bench --budget` (default: 80% of the first GPU's memory as torch reports it,
#                   else 16GB); on cuda torch may allocate no more, so the naive code at B = 65536 is an OOM
#   REQUIRE_GPU     1: exit 3 when no framework has a GPU build (default 0: that is reported, exit 0)
#   DEVICE          cuda (default), or cpu for a dry run of this script's plumbing on a machine without a GPU
#                   (every installed framework counts as found; use small BATCHES)
#   BATCHES         `hardneg bench --batch` (default 4096,65536)
# Exit status: 0 every step that ran passed (also when no GPU build was found, unless REQUIRE_GPU=1);
#              1 a verify or bench step failed or ran out of time; 3 no GPU build found and REQUIRE_GPU=1.
# Nothing is downloaded. Without a GPU it reports "no GPU build found" for each framework and exits 0.
set -euo pipefail

OUT=${1:-gpu-check-out}
PY=${PYTHON:-python}
TOTAL_S=${TOTAL_S:-300}
VERIFY_S=${VERIFY_S:-45}
VERIFY_EXAMPLES=${VERIFY_EXAMPLES:-3}
REQUIRE_GPU=${REQUIRE_GPU:-0}
DEVICE=${DEVICE:-cuda}
BATCHES=${BATCHES:-4096,65536}
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check.sh: DEVICE must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;; esac
START=$(date +%s)
DEADLINE=$((START + TOTAL_S))
mkdir -p "$OUT"
STEPS="$OUT/steps.jsonl"
: > "$STEPS"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# one framework per process, one process at a time: let JAX allocate on demand instead of grabbing 75 % of
# the card, so that its peak-memory figure is what the step used
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}

left() { echo $((DEADLINE - $(date +%s))); }

# record FRAMEWORK STEP STATUS SECONDS DETAIL: one JSON line per step (DETAIL: a short text)
record() {
    "$PY" - "$@" >> "$STEPS" <<'EOF'
import json, sys
fw, step, status, secs, detail = sys.argv[1:6]
print(json.dumps({"framework": fw, "step": step, "status": status, "seconds": int(secs), "detail": detail}))
EOF
}

# run_step LIMIT LOGFILE CMD...: runs CMD with a timeout of min(LIMIT, time left); prints "status seconds"
run_step() {
    local limit=$1 log=$2
    shift 2
    local t=$(left)
    if [ "$t" -le 5 ]; then
        echo "skipped 0"
        return
    fi
    [ "$limit" -lt "$t" ] && t=$limit
    local t0=$(date +%s) rc=0
    timeout --kill-after=10 "$t" "$@" > "$log" 2>&1 || rc=$?
    local dt=$(($(date +%s) - t0))
    if [ "$rc" -eq 0 ]; then echo "ok $dt"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "timeout $dt"
    else echo "failed:$rc $dt"
    fi
}

probe() {  # probe FRAMEWORK: exit 0 and print the GPU's name when the framework's GPU build works
    if [ "$DEVICE" = cpu ]; then  # dry run: the framework only has to import
        "$PY" -c "import ${1/tf/tensorflow}; print('cpu (dry run)')"
        return
    fi
    case "$1" in
        torch) "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch.cuda.is_available() is False'; print(torch.cuda.get_device_name(0))" ;;
        jax) "$PY" -c "import jax; print(jax.devices('gpu')[0].device_kind)" ;;
        tf) "$PY" -c "import tensorflow as tf; g = tf.config.list_physical_devices('GPU'); assert g, 'TensorFlow sees no GPU'; print(g[0].name)" ;;
    esac
}

declare -A IMPLS=(
    [torch]="hardneg_torch,naive_torch,floor_torch,symfloor_torch"
    [jax]="hardneg_jax,naive_jax,floor_jax,symfloor_jax"
    [tf]="hardneg_tf_xla,naive_tf_xla,floor_tf,symfloor_tf"
)

bench_budget() {  # BENCH_BUDGET, else 80% of the first GPU's memory (torch), else 16GB
    if [ -n "${BENCH_BUDGET:-}" ]; then echo "$BENCH_BUDGET"; return; fi
    timeout 60 "$PY" -c "import torch; print(int(0.8 * torch.cuda.get_device_properties(0).total_memory))" \
        2>/dev/null || echo 16GB
}
VERIFY_HELP=$("$PY" -m hardneg verify --help 2>/dev/null || true)
FAILED=0
FOUND=0
for fw in torch jax tf; do
    t0=$(date +%s)
    rm -rf "$OUT/bench_$fw" "$OUT/verify_$fw.json"  # no stale results from an earlier run into the summary
    if name=$(timeout 60 bash -c "$(declare -f probe); PY='$PY' DEVICE='$DEVICE' probe $fw" 2> "$OUT/probe_$fw.log"); then
        FOUND=1
        record "$fw" probe found "$(($(date +%s) - t0))" "$name"
        echo "$fw: GPU build found ($name)" >&2
    else
        why=$(tail -n 1 "$OUT/probe_$fw.log" 2>/dev/null || true)
        record "$fw" probe "no GPU build found" "$(($(date +%s) - t0))" "${why:-no output}"
        echo "$fw: no GPU build found (${why:-no output})" >&2
        continue
    fi

    # conformance suite on the GPU (`hardneg verify --device cuda`: torch's inputs on the GPU, JAX and
    # TensorFlow required to see one); an older hardneg without --device can only verify torch on the CPU
    vargs=(--backend "$fw" --max-examples "$VERIFY_EXAMPLES" --json "$OUT/verify_$fw.json")
    if grep -q -- "--device" <<< "$VERIFY_HELP"; then
        vargs+=(--device "$DEVICE")
    elif [ "$fw" = torch ] && [ "$DEVICE" = cuda ]; then
        vargs=()
    fi
    if [ ${#vargs[@]} -eq 0 ]; then
        record "$fw" verify skipped 0 "hardneg verify has no --device option: torch would be verified on the CPU"
        echo "$fw: verify skipped (hardneg verify has no --device option)" >&2
    else
        read -r status secs < <(run_step "$VERIFY_S" "$OUT/verify_$fw.log" "$PY" -m hardneg verify "${vargs[@]}")
        record "$fw" verify "$status" "$secs" "$(tail -n 1 "$OUT/verify_$fw.log" 2>/dev/null || true)"
        echo "$fw: verify $status (${secs} s)" >&2
        [ "$status" = ok ] || FAILED=1
    fi

    # benchmark: the time left is shared among this and the frameworks after it
    rest=0
    case "$fw" in torch) rest=2 ;; jax) rest=1 ;; esac
    share=$(( $(left) / (rest + 1) ))
    BENCH_BUDGET=$(bench_budget)
    read -r status secs < <(run_step "$share" "$OUT/bench_$fw.log" "$PY" -m hardneg bench --backend "$fw" \
        --device "$DEVICE" --impl "${IMPLS[$fw]}" --batch "$BATCHES" --dtype float32 --estimator hard --reps 1 \
        --no-max-batch --budget "$BENCH_BUDGET" --timeout "$share" --out "$OUT/bench_$fw")
    record "$fw" bench "$status" "$secs" "$(tail -n 1 "$OUT/bench_$fw.log" 2>/dev/null || true)"
    echo "$fw: bench $status (${secs} s)" >&2
    [ "$status" = ok ] || FAILED=1
done

DEVICE="$DEVICE" "$PY" - "$OUT" "$START" "$TOTAL_S" "$FAILED" "$FOUND" <<'EOF' || FAILED=1
import json, os, sys, time
out, start, total, failed, found = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
steps = [json.loads(line) for line in open(os.path.join(out, "steps.jsonl")) if line.strip()]
summary = {"device": os.environ.get("DEVICE", "cuda"), "wall_s": int(time.time()) - start, "budget_s": total,
           "gpu_found": bool(found), "frameworks": {}}
for fw in ("torch", "jax", "tf"):
    entry = {s["step"]: {k: s[k] for k in ("status", "seconds", "detail")} for s in steps if s["framework"] == fw}
    ver = os.path.join(out, f"verify_{fw}.json")
    if "verify" in entry and os.path.exists(ver):  # what the suite says it verified, and on which device
        rep = next(iter(json.load(open(ver)).get("results", {}).values()), {})
        entry["verify"].update({k: rep.get(k) for k in ("device", "verdict", "features_verified", "examples")})
        wanted = os.environ.get("DEVICE", "cuda")
        if entry["verify"]["status"] == "ok" and wanted == "cuda" and rep.get("device") not in ("cuda", "gpu"):
            entry["verify"]["status"] = f"ran on {rep.get('device')}, not on the GPU"
            failed = 1
    res = os.path.join(out, f"bench_{fw}", "results.json")
    if os.path.exists(res):  # the headline ratios of the bench run, and every measurement's status
        data = json.load(open(res))
        entry["bench"]["ratios"] = [{k: r.get(k) for k in ("impl", "batch", "speedup_vs_baseline", "memory_vs_baseline",
                                                            "time_vs_floor", "time_vs_symmetric_floor")}
                                    for r in data["ratios"]]
        entry["bench"]["measurements"] = [{k: m.get(k) for k in ("impl", "batch", "status", "median_s", "extra_bytes")}
                                          for m in data["measurements"]]
    summary["frameworks"][fw] = entry
summary["passed"] = not failed
path = os.path.join(out, "summary.json")
with open(path, "w") as f:
    json.dump(summary, f, indent=1)
print(json.dumps(summary, indent=1))
print(f"wrote {path}", file=sys.stderr)
sys.exit(1 if failed else 0)
EOF

if [ "$FAILED" -ne 0 ]; then exit 1; fi
if [ "$FOUND" -eq 0 ] && [ "$REQUIRE_GPU" = 1 ]; then exit 3; fi
exit 0
