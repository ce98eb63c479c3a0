#!/usr/bin/env bash
# The GPU check: every path of the project that only runs (or only differs) on CUDA, in one call,
# on the embedded demo's data (MovieLens-100K) and tiny backbone; one table of PASS / FAIL / SKIP
# and seconds at the end. `bash bench/gpu_check.sh --help` lists the parts; the perf parts of
# earlier versions (7b, smollm2, quant) run when named. Each part is a function part_<name> below.
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"

# ---- the parts: name, then one line of --help -------------------------------------------------
DEFAULT_PARTS=(demo frozen_prefix resume shared_prefix cold lightgcn retrieve faiss_gpu compile ddp fsdp)
NAMED_PARTS=(7b smollm2 quant)
declare -A PART_HELP=(
    [demo]="python -m collm_faissret.demo (MF, stage 1, stage 2, evaluate-only), bf16 autocast in the logs"
    [frozen_prefix]="stage 2, run.frozen_prefix auto vs off, bf16 amp and fp32: test AUC within 0.01 / 1e-3"
    [resume]="stage 2 SIGKILLed at step 25 (tests/fault_train.py), resumed: AUC as the uninterrupted run"
    [shared_prefix]="evaluate-only, run.shared_prefix off vs auto: fp32 scores within 1e-4, bf16 AUC within 0.005"
    [cold]="MF + cold start (CF baseline, CoLLM stage 2); SASRec + cold items (baseline, CoLLM stage 2)"
    [lightgcn]="LightGCN baseline, then CoLLM-LightGCN stage 2"
    [retrieve]="retrieve-then-rank, index auto (exact torch index on the GPU without faiss-gpu), cold users"
    [faiss_gpu]="CF retrieval on faiss-gpu flat and IVF indexes vs the exact torch index; SKIP without faiss-gpu"
    [compile]="stage 2 with run.compile=on: decoder layers compiled, no fallback to eager"
    [ddp]="torchrun, 2 processes, run.distributed=ddp: stage 2 MF + cold start; SKIP with under 2 GPUs"
    [fsdp]="torchrun, 2 processes, fsdp: MF + cold start (amp on, off), SASRec + cold items, LightGCN; SKIP < 2 GPUs"
    [7b]="random-weight 7B shape, stages 1 and 2 against the bare loop (bench/train_throughput.py)"
    [smollm2]="SmolLM2-135M study on ML-1M (bench/real_backbone.py), then its speed against the bare loop"
    [quant]="int8 / nf4 stage 2 on a random 7B checkpoint against the bare loop, beside the planner's estimate"
)

usage() {
    cat <<'EOF'
bash bench/gpu_check.sh [--only PART[,PART...]] [--out DIR] [--python PY] [--demo-data DIR] [PART ...]

The GPU check. On one CUDA GPU (H100 / H200: well under 10 minutes after `make install`), from a
fresh clone with nothing else set up, it runs the parts below on the embedded demo's data
(MovieLens-100K, made by the demo's own preparation) and its tiny random backbone
(collm_faissret.tiny_backbone), records PASS / FAIL / SKIP and the seconds of each part, and ends
with one markdown table (also OUT/summary.md). Exit status: 1 when a part failed; 2 on a usage
error or on a machine without CUDA, where it stops at once with one line (docs/big_models.md).

Parts run by default, in this order (--only PART[,PART] or PART ... runs a subset, same order):
EOF
    local p
    for p in "${DEFAULT_PARTS[@]}"; do printf '  %-14s %s\n' "$p" "${PART_HELP[$p]}"; done
    echo
    echo "Parts run only when named (timings against the bare transformers + peft loop; CoLLM's ML-1M split):"
    for p in "${NAMED_PARTS[@]}"; do printf '  %-14s %s\n' "$p" "${PART_HELP[$p]}"; done
    cat <<'EOF'

Options:
  --only PART[,PART]   run these parts only (a part that needs the demo's runs makes them when absent)
  --out DIR            outputs, logs (DIR/logs/<part>_<step>.txt) and summary.md (default outputs/gpu_check)
  --python PY          the environment's python (default: the checkout's .venv/bin/python, else python3)
  --demo-data DIR      the demo's ML-100K split (default data/ml-100k, as `make demo`; made when absent)
  --data DIR           CoLLM's ML-1M split for 7b / smollm2 / quant (default data/ml-1m)
  --steps N, --warmup N, --shape SHAPE, --quants "int8 nf4", --smollm2 DIR, --real-backbone-args ARGS,
  --device cuda|cpu    settings of 7b / smollm2 / quant (timed batches 10, untimed 3, shape 7b)
  -h, --help           this text

Tolerances: trained runs compared by test AUC (0.01 under bf16 autocast, 1e-3 in fp32); scoring
compared score by score in fp32 (1e-4) and by AUC under bf16 (0.005: bf16 rounds each score).

Development only: GPU_CHECK_ALLOW_CPU=1 lets the parts run on a machine without CUDA (slow, one
process at a time; the bf16 checks are off and the timings mean nothing): to check the parts'
commands, never as a result.
EOF
}

# ---- options -----------------------------------------------------------------------------------
DATA=data/ml-1m OUT=outputs/gpu_check DEMO_DATA=data/ml-100k STEPS=10 WARMUP=3 DEVICE=cuda SHAPE=7b
QUANTS="int8 nf4" SMOL="" RB_ARGS=""
PY=python3
if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; fi
ASKED=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --*) if [ $# -lt 2 ]; then echo "gpu_check.sh: $1 needs a value (--help)" >&2; exit 2; fi ;;
    esac
    case "$1" in
        --only) IFS=, read -ra more <<< "$2"; ASKED+=("${more[@]}"); shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --demo-data) DEMO_DATA="$2"; shift 2 ;;
        --data) DATA="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        --shape) SHAPE="$2"; shift 2 ;;
        --quants) QUANTS="$2"; shift 2 ;;
        --smollm2) SMOL="$2"; shift 2 ;;
        --real-backbone-args) RB_ARGS="$2"; shift 2 ;;
        -*) echo "gpu_check.sh: unknown option $1 (--help)" >&2; exit 2 ;;
        *) ASKED+=("$1"); shift ;;
    esac
done
is_part() { local p; for p in "${DEFAULT_PARTS[@]}" "${NAMED_PARTS[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
for p in "${ASKED[@]}"; do
    if ! is_part "$p"; then
        echo "gpu_check.sh: unknown part '$p' (parts: ${DEFAULT_PARTS[*]} ${NAMED_PARTS[*]}; --help)" >&2
        exit 2
    fi
done
PARTS=()
if [ ${#ASKED[@]} -eq 0 ]; then
    PARTS=("${DEFAULT_PARTS[@]}")
else  # the order of the list above (later parts reuse earlier ones' runs)
    for p in "${DEFAULT_PARTS[@]}" "${NAMED_PARTS[@]}"; do
        for a in "${ASKED[@]}"; do if [ "$a" = "$p" ]; then PARTS+=("$p"); break; fi; done
    done
fi

# ---- CUDA, before anything else --------------------------------------------------------------
case "$PY" in */*) PY="$(realpath -s -m "$PY")" ;; esac  # absolute, symlinks kept (a venv's python)
if ! CUDA="$("$PY" -c "import torch; print(torch.cuda.is_available(), torch.cuda.device_count())" 2>/dev/null)"; then
    echo "gpu_check.sh: $PY cannot import torch (make install first, or --python PY)" >&2
    exit 2
fi
N_GPUS="${CUDA#* }"
RUN_DEVICE=cuda PARALLEL=1
if [ "${CUDA%% *}" != True ]; then
    if [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
        echo "gpu_check.sh: needs a CUDA GPU (torch.cuda.is_available() is False); see docs/big_models.md" >&2
        exit 2
    fi
    echo "gpu_check.sh: GPU_CHECK_ALLOW_CPU=1: development run on the CPU (slow; bf16 checks off; not a result)" >&2
    RUN_DEVICE=cpu PARALLEL=0 N_GPUS=0 DEVICE=cpu
fi

SMOL="${SMOL:-$OUT/smollm2}"
DATA="$(realpath -s -m "$DATA")" OUT="$(realpath -s -m "$OUT")" SMOL="$(realpath -s -m "$SMOL")"
DEMO_DATA="$(realpath -s -m "$DEMO_DATA")"
cd "$REPO" || exit 2  # the configs name prompt/ relative to the checkout
LOGS="$OUT/logs" RUNS="$OUT/runs"
mkdir -p "$LOGS" "$RUNS"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

# The demo's runs (part demo makes them; the other parts start from them)
B="$OUT/tiny_llama" R="$OUT/demo"
MF_W="$R/mf/cf_model.pth" MF_CKPT="$R/mf/checkpoint_best.pth"
S1="$R/stage1/checkpoint_best.pth" S2="$R/stage2/checkpoint_best.pth"
S2_ITERS=40   # micro-batches of a short stage 2 (batch 32; warm-up 20 steps)
CF_EPOCHS=2   # epochs of the SASRec / LightGCN baselines
KILL_AT=25 SAVE_EVERY=10
AUC_TOL_BF16=0.01 AUC_TOL_FP32=0.001 SCORE_TOL_FP32=0.0001 EVAL_AUC_TOL_BF16=0.005

# ---- helpers -----------------------------------------------------------------------------------
PART="" NOTE="" DEMO_STATE=""
declare -A CF_DONE=()
say() { echo "  $*"; }
note() { NOTE="${NOTE:+$NOTE; }$*"; }
fail() { note "$*"; say "FAIL: $*"; return 1; }

# run NAME CMD...: CMD from the checkout, its output in LOGS/<part>_NAME.txt; a failure shows its end.
# EXPECT=N run ...: exit status N is the one meant (run returns it all the same)
run() {
    local name="$1" expect="${EXPECT:-0}"; shift
    local log="$LOGS/${PART}_$name.txt" t0 rc
    t0="$(now)"
    say "+ [$name] $*" | cut -c1-240
    ( "$@"; exit $? ) > "$log" 2>&1  # a subshell: a killed command's "Killed" goes to its log
    rc=$?
    if [ $rc -eq "$expect" ]; then
        say "  [$name] done in $(secs "$t0") s$([ $rc -ne 0 ] && echo ", exit $rc as meant")"
    else
        say "! [$name] exit $rc after $(secs "$t0") s; the end of $log:"
        tail -n 15 "$log" | sed 's/^/      /'
    fi
    return $rc
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# bg NAME CMD...: as run, alongside the others on the GPU (one at a time on a CPU); join waits for
# them all and fails when one did (notes which)
BG_PIDS=() BG_NAMES=() BG_FAILED=()
bg() {
    if [ "$PARALLEL" = 1 ]; then
        run "$@" &
        BG_PIDS+=($!) BG_NAMES+=("$1")
    else
        run "$@" || BG_FAILED+=("$1")
    fi
}
join() {
    local i
    for i in "${!BG_PIDS[@]}"; do wait "${BG_PIDS[$i]}" || BG_FAILED+=("${BG_NAMES[$i]}"); done
    BG_PIDS=() BG_NAMES=()
    if [ ${#BG_FAILED[@]} -gt 0 ]; then
        fail "failed: ${BG_FAILED[*]} (logs: $LOGS/${PART}_<name>.txt)"
        BG_FAILED=()
        return 1
    fi
}

# logged DIR PATTERN WHAT: the run's log.txt has a line matching PATTERN (grep -E), else a failure
logged() {
    grep -Eq "$2" "$1/log.txt" 2>/dev/null || { fail "$3 (no line '$2' in $1/log.txt)"; return 1; }
}
# amp_logged DIR: training and scoring ran under bf16 autocast (on CUDA; nothing to check on a CPU)
amp_logged() {
    [ "$RUN_DEVICE" = cuda ] || return 0
    logged "$1" "precision: training (bf|fp)16 autocast .*scoring (bf|fp)16 autocast" "$(basename "$1"): not under bf16 autocast"
}

# judge WHAT ARGS...: the checks' arithmetic on metrics.json / predictions_test.csv; prints one line
# (noted), exit status 1 when the check fails
judge() {
    local line rc
    line="$("$PY" - "$@" <<'EOF'
import json, math, os, sys

def test(d):
    with open(os.path.join(d, "metrics.json")) as fh:
        return json.load(fh)["test"]

def ok(x):
    return isinstance(x, (int, float)) and math.isfinite(x)

def f(x, fmt=".4f"):
    return format(x, fmt) if ok(x) else str(x)

what, *a = sys.argv[1:]
try:
    if what == "auc":  # DIR [cold]: a finite test AUC; with cold: cold rows scored, finite AUC
        t = test(a[0])
        good, msg = ok(t.get("auc")), f"{os.path.basename(a[0])}: AUC {f(t.get('auc'))}"
        if "cold" in a[1:]:
            c = t.get("cold") or {}
            good = good and (c.get("n_rows") or 0) > 0 and ok(c.get("auc"))
            msg += f" (cold {f(c.get('auc'))}, {c.get('n_rows')} rows)"
    elif what == "auc_close":  # A B TOL LABEL: test AUCs within TOL
        x, y, tol = test(a[0]).get("auc"), test(a[1]).get("auc"), float(a[2])
        diff = abs(x - y) if ok(x) and ok(y) else float("nan")
        good = diff <= tol
        msg = f"{a[3]}: AUC {f(x)} vs {f(y)}, |diff| {f(diff, '.1e')} ({'<=' if good else '>'} {tol:g})"
    elif what == "scores_close":  # A B TOL LABEL: predictions_test.csv score by score; TOL - only reports
        import pandas as pd
        p, q = (pd.read_csv(os.path.join(d, "predictions_test.csv")).sort_values(["uid", "iid", "label"],
                kind="stable").reset_index(drop=True) for d in a[:2])
        same = len(p) == len(q) and (p[["uid", "iid", "label"]].values == q[["uid", "iid", "label"]].values).all()
        diff = float((p["score"] - q["score"]).abs().max()) if same else float("nan")
        good = same and (a[2] == "-" or diff <= float(a[2]))
        bound = "" if a[2] == "-" else f" ({'<=' if good else '>'} {a[2]})"
        msg = (f"{a[3]}: max |score diff| {f(diff, '.1e')} over {len(p)} rows{bound}" if same
               else f"{a[3]}: not the same rows ({len(p)} vs {len(q)})")
    elif what == "demo":  # OUT: summary.json's four runs, finite AUC; stage 2 and evaluate-only agree
        with open(os.path.join(a[0], "summary.json")) as fh:
            s = json.load(fh)
        good = set(s) == {"mf", "stage1", "stage2", "evaluate_only"} and all(ok(t["auc"]) for t in s.values())
        diff = abs(s["stage2"]["auc"] - s["evaluate_only"]["auc"]) if good else float("nan")
        good = good and diff <= float(a[1])
        msg = " ".join(f"{k} {f(t['auc'])}" for k, t in s.items()) + f" (stage2 vs evaluate-only {f(diff, '.1e')})"
    elif what == "retrieval":  # DIR KIND DEVICE: retrieval and re-ranked metrics; the index's kind, device
        t = test(a[0])
        index = t.get("index", "")
        ks = [k for k in t.get("retrieval", {}) if k.startswith("recall@")]
        good = bool(ks) and all(ok(t[s][k]) for s in ("retrieval", "reranked") for k in ks)
        cold = (t.get("retrieval", {}).get("cold_users") or {}).get("n_users", 0)
        msg = f"{index}; retrieval {ks[-1] if ks else '?'} {f(t['retrieval'].get(ks[-1]) if ks else None)}, " \
              f"re-ranked {f(t['reranked'].get(ks[-1]) if ks else None)}; {cold} cold users"
        for want in a[1:]:
            if want and want not in index:
                good, msg = False, msg + f" (expected {want})"
    elif what == "retrieval_close":  # A B TOL LABEL: retrieval recall / ndcg within TOL
        x, y = test(a[0])["retrieval"], test(a[1])["retrieval"]
        keys = [k for k in x if "@" in k]
        diff = max(abs(x[k] - y[k]) for k in keys) if keys else float("nan")
        good = bool(keys) and diff <= float(a[2])
        msg = f"{a[3]}: recall/ndcg/hit-rate |diff| {f(diff, '.1e')} ({'<=' if good else '>'} {a[2]})"
    else:
        good, msg = False, f"judge: unknown check {what}"
except (OSError, KeyError, ValueError, TypeError) as err:
    good, msg = False, f"{what} {' '.join(a[:2])}: {type(err).__name__}: {err}"
print(msg)
sys.exit(0 if good else 1)
EOF
)"
    rc=$?
    note "$line"
    say "$([ $rc -eq 0 ] && echo ok || echo FAIL): $line"
    return $rc
}

# ---- the commands, shared by the parts ------------------------------------------------------
demo_runs() {  # the embedded demo, as `make demo` runs it (data and backbone made when absent)
    if run demo "$PY" -m collm_faissret.demo --data "$DEMO_DATA" --backbone "$B" --out "$R"; then
        DEMO_STATE=ok
    else
        DEMO_STATE=failed
        fail "python -m collm_faissret.demo failed"
        return 1
    fi
}
need_demo() {  # the demo's runs, made first when this output directory has none
    if [ -f "$MF_W" ] && [ -f "$MF_CKPT" ] && [ -f "$S1" ] && [ -f "$S2" ] && [ -f "$B/config.json" ] \
        && [ -f "$DEMO_DATA/train_ood2.pkl" ]; then
        return 0
    fi
    if [ "$DEMO_STATE" = failed ]; then fail "needs the demo's runs (part demo failed)"; return 1; fi
    say "no demo runs in $R: the demo first"
    demo_runs
}
fresh() { rm -rf "$RUNS/$1"; echo "$RUNS/$1"; }  # fresh NAME: an empty run directory's path

# stage2 DIR OPTION...: OPTS = a short CoLLM stage 2 (train_configs/demo_stage2.yaml) from the demo's
# stage 1 and MF, in DIR; then: "$PY" train_collm.py --cfg-path train_configs/demo_stage2.yaml --options "${OPTS[@]}"
S2_CFG=train_configs/demo_stage2.yaml
stage2() {
    local dir="$1"; shift
    OPTS=("datasets.ml100k_ood.path=$DEMO_DATA" "model.llama_model=$B" "model.ckpt=$S1"
          "model.rec_config.pretrained_path=$MF_W" "run.output_dir=$dir" "run.device=$RUN_DEVICE"
          run.max_epoch=1 "run.iters_per_epoch=$S2_ITERS" run.log_freq=10 "$@")
}
# evaluate DIR OPTION...: OPTS = evaluate-only (train_configs/demo_evaluate.yaml) of the demo's stage 2, test split
EVAL_CFG=train_configs/demo_evaluate.yaml
evaluate() {
    local dir="$1"; shift
    OPTS=("datasets.ml100k_ood.path=$DEMO_DATA" "model.llama_model=$B" "model.ckpt=$S2"
          "model.rec_config.pretrained_path=$MF_W" "run.output_dir=$dir" "run.device=$RUN_DEVICE"
          "run.valid_splits=[]" "$@")
}
# retrieve DIR OPTION...: OPTS = retrieve-then-rank (train_configs/retrieve_rank_ml1m_tiny.yaml) on the demo's
# data with its stage 2 (4 projector tokens) and MF, top-20 per test user
RR_CFG=train_configs/retrieve_rank_ml1m_tiny.yaml
retrieve() {
    local dir="$1"; shift
    OPTS=("datasets.movielens_ood.path=$DEMO_DATA" "model.llama_model=$B" "model.ckpt=$S2"
          "model.rec_config.pretrained_path=$MF_W" model.proj_token_num=4 "run.output_dir=$dir"
          "run.device=$RUN_DEVICE" retrieval.k=20 "retrieval.metric_ks=[10,20]" "$@")
}
# cf_train NAME: CMD = the baseline NAME (sasrec, lightgcn: train_configs/baseline_NAME_ml1m.yaml) trained for
# CF_EPOCHS epochs on the demo's data into a fresh RUNS/cf_NAME (its cf_model.pth feeds stage 2)
cf_train() {
    CMD=("$PY" baseline_train.py --cfg-path "train_configs/baseline_$1_ml1m.yaml" --options
         "datasets.movielens_ood.path=$DEMO_DATA" "run.output_dir=$(fresh "cf_$1")" "run.device=$RUN_DEVICE"
         "run.max_epoch=$CF_EPOCHS")
}
cf_trained() {  # cf_trained NAME: its run finished with a finite test AUC (then need_cf reuses it)
    judge auc "$RUNS/cf_$1" || return 1
    CF_DONE[$1]=1
}
need_cf() {  # need_cf NAME: the baseline NAME, trained once per call of this script
    [ -n "${CF_DONE[$1]:-}" ] && return 0
    cf_train "$1"
    run "cf_$1" "${CMD[@]}" || { fail "$1 baseline failed"; return 1; }
    cf_trained "$1"
}
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc-per-node 2)
two_gpus() {
    [ "$N_GPUS" -ge 2 ] && return 0
    note "needs 2 GPUs, $N_GPUS visible: not run"
    say "SKIP: needs 2 GPUs, $N_GPUS visible"
    return 1
}

# ---- the parts (each returns 0 PASS, 1 FAIL, 3 SKIP; NOTE says what it saw) ---------------------
part_demo() {
    demo_runs || return 1
    judge demo "$R" 0.002 || return 1
    local s
    for s in stage1 stage2 evaluate; do amp_logged "$R/$s" || return 1; done
    logged "$R/stage2" "frozen prefix" "stage 2 without its frozen prefix" || return 1
    [ "$RUN_DEVICE" = cuda ] && note "bf16 autocast in stage 1, 2 and evaluate-only"
    return 0
}

FROZEN_REF=""   # the bf16 frozen-prefix run: the uninterrupted twin of part resume's run
frozen_opts=(model.lora_config.dropout=0.0 "run.save_every_n_steps=$SAVE_EVERY")  # no dropout: same RNG draws
part_frozen_prefix() {
    need_demo || return 1
    local a b c d
    a="$(fresh frozen_auto_bf16)" b="$(fresh frozen_off_bf16)" c="$(fresh frozen_auto_fp32)" d="$(fresh frozen_off_fp32)"
    stage2 "$a" "${frozen_opts[@]}" run.amp=true run.frozen_prefix=auto; bg auto_bf16 "$PY" train_collm.py --cfg-path $S2_CFG --options "${OPTS[@]}"
    stage2 "$b" "${frozen_opts[@]}" run.amp=true run.frozen_prefix=off; bg off_bf16 "$PY" train_collm.py --cfg-path $S2_CFG --options "${OPTS[@]}"
    stage2 "$c" "${frozen_opts[@]}" model.dtype=fp32 run.amp=false run.frozen_prefix=auto; bg auto_fp32 "$PY" train_collm.py --cfg-path $S2_CFG --options "${OPTS[@]}"
    stage2 "$d" "${frozen_opts[@]}" model.dtype=fp32 run.amp=false run.frozen_prefix=off; bg off_fp32 "$PY" train_collm.py --cfg-path $S2_CFG --options "${OPTS[@]}"
    join || return 1
    FROZEN_REF="$a"
    logged "$a" "training: .*\(frozen prefix\)" "run.frozen_prefix=auto did not take the frozen prefix" || return 1
    logged "$b" "training: every prompt whole \(run.frozen_prefix is off\)" "run.frozen_prefix=off" || return 1
    amp_logged "$a" || return 1
    local good=0
    judge auc_close "$a" "$b" $AUC_TOL_BF16 "bf16 auto vs off" || good=1
    judge auc_close "$c" "$d" $AUC_TOL_FP32 "fp32 auto vs off" || good=1
    return $good
}

part_resume() {
    need_demo || return 1
    local ref="$FROZEN_REF" dir
    if [ -z "$ref" ]; then  # the uninterrupted run (part frozen_prefix's, when it ran)
        ref="$(fresh frozen_auto_bf16)"
        stage2 "$ref" "${frozen_opts[@]}" run.amp=true run.frozen_prefix=auto
        run uninterrupted "$PY" train_collm.py --cfg-path $S2_CFG --options "${OPTS[@]}" || { fail "uninterrupted run failed"; return 1; }
    fi
    dir="$(fresh resumed)"
    stage2 "$dir" "${frozen_opts[@]}" run.amp=true run.frozen_prefix=auto
    EXPECT=137 run killed env COLLM_FAISSRET_TEST_KILL_AT_STEP=$KILL_AT "$PY" tests/fault_train.py \
        --cfg-path $S2_CFG --options "${OPTS[@]}"
    local rc=$?
    if [ $rc -ne 137 ] || [ ! -f "$dir/checkpoint_last.pth" ]; then
        fail "the run to kill: exit $rc (expected 137, SIGKILL at step $KILL_AT) or no checkpoint_last.pth"
        return 1
    fi
    run resume "$PY" train_collm.py --cfg-path $S2_CFG --options "${OPTS[@]}" \
        "run.resume_ckpt_path=$dir/checkpoint_last.pth" || { fail "the resumed run failed"; return 1; }
    local at=$(( KILL_AT / SAVE_EVERY * SAVE_EVERY ))
    logged "$dir" "resumed from .* step $at\$" "not resumed at step $at" || return 1
    note "killed at step $KILL_AT, resumed at $at"
    if [ "$RUN_DEVICE" = cuda ]; then judge auc_close "$ref" "$dir" $AUC_TOL_BF16 "resumed vs uninterrupted (bf16)"
    else judge auc_close "$ref" "$dir" $AUC_TOL_FP32 "resumed vs uninterrupted"; fi
}

part_shared_prefix() {
    need_demo || return 1
    local a b c d
    a="$(fresh shared_off_fp32)" b="$(fresh shared_auto_fp32)" c="$(fresh shared_off_bf16)" d="$(fresh shared_auto_bf16)"
    evaluate "$a" run.shared_prefix=off model.dtype=fp32 run.amp_scoring=off; bg off_fp32 "$PY" train_collm.py --cfg-path $EVAL_CFG --options "${OPTS[@]}"
    evaluate "$b" run.shared_prefix=auto model.dtype=fp32 run.amp_scoring=off; bg auto_fp32 "$PY" train_collm.py --cfg-path $EVAL_CFG --options "${OPTS[@]}"
    if [ "$RUN_DEVICE" = cuda ]; then
        evaluate "$c" run.shared_prefix=off run.amp_scoring=on; bg off_bf16 "$PY" train_collm.py --cfg-path $EVAL_CFG --options "${OPTS[@]}"
        evaluate "$d" run.shared_prefix=auto run.amp_scoring=on; bg auto_bf16 "$PY" train_collm.py --cfg-path $EVAL_CFG --options "${OPTS[@]}"
    fi
    join || return 1
    logged "$a" "scoring test: every prompt whole \(run.shared_prefix is off\)" "shared_prefix off" || return 1
    logged "$b" "scoring test: shared prompt prefixes" "shared_prefix auto took the plain path" || return 1
    judge scores_close "$a" "$b" $SCORE_TOL_FP32 "fp32" || return 1
    [ "$RUN_DEVICE" = cuda ] || return 0
    logged "$c" "scoring (bf|fp)16 autocast" "amp_scoring on: not bf16" || return 1
    judge scores_close "$c" "$d" - "bf16 (scores rounded to bf16)"
    judge auc_close "$c" "$d" $EVAL_AUC_TOL_BF16 "bf16 amp, compared by AUC"
}

part_cold() {
    need_demo || return 1
    local cf mf sr
    cf="$(fresh cold_mf_baseline)" mf="$(fresh cold_mf_stage2)"
    # MF's CF baseline scored with cold start (its settings: train_configs/coldstart_mf_ml1m.yaml)
    bg mf_baseline "$PY" baseline_train.py --cfg-path train_configs/coldstart_mf_ml1m.yaml --options \
        "datasets.movielens_ood.path=$DEMO_DATA" "model.ckpt=$MF_CKPT" "run.output_dir=$cf" "run.device=$RUN_DEVICE"
    stage2 "$mf" model.cold_start.enabled=true run.amp=true
    bg mf_stage2 "$PY" train_collm.py --cfg-path $S2_CFG --options "${OPTS[@]}"
    cf_train sasrec
    bg cf_sasrec "${CMD[@]}"
    join || return 1
    judge auc "$cf" cold || return 1
    judge auc "$mf" cold || return 1
    amp_logged "$mf" || return 1
    cf_trained sasrec || return 1
    sr="$(fresh cold_sasrec_stage2)"
    stage2 "$sr" model.rec_model=SASRec "model.rec_config.pretrained_path=$RUNS/cf_sasrec/cf_model.pth" \
        model.cold_start.enabled=true model.cold_start.cold_items=true run.amp=true
    run sasrec_stage2 "$PY" train_collm.py --cfg-path $S2_CFG --options "${OPTS[@]}" || { fail "SASRec + cold items failed"; return 1; }
    judge auc "$sr" cold
}

part_lightgcn() {
    need_demo || return 1
    need_cf lightgcn || return 1
    local dir
    dir="$(fresh lightgcn_stage2)"
    stage2 "$dir" model.rec_model=LightGCN "model.rec_config.pretrained_path=$RUNS/cf_lightgcn/cf_model.pth" run.amp=true
    run stage2 "$PY" train_collm.py --cfg-path $S2_CFG --options "${OPTS[@]}" || { fail "LightGCN stage 2 failed"; return 1; }
    amp_logged "$dir" || return 1
    judge auc "$dir"
}

FAISS_GPU=""
faiss_gpu() {  # this faiss has GPU indexes and sees a GPU (asked once)
    if [ -z "$FAISS_GPU" ]; then
        FAISS_GPU=no
        "$PY" -c "import sys; from collm_faissret.retrieval.faiss_gpu import faiss_gpu_available as a; sys.exit(not a())" \
            2>/dev/null && FAISS_GPU=yes
    fi
    [ "$FAISS_GPU" = yes ]
}
part_retrieve() {
    need_demo || return 1
    local dir want=flat
    dir="$(fresh retrieve)"
    [ "$RUN_DEVICE" = cuda ] && { if faiss_gpu; then want="kind='flat'"; else want="kind='torch_exact'"; fi; }
    retrieve "$dir"
    run retrieve_rank "$PY" train_collm.py --cfg-path $RR_CFG --options "${OPTS[@]}" || { fail "retrieve_rank failed"; return 1; }
    judge retrieval "$dir" "$want" "$([ "$RUN_DEVICE" = cuda ] && echo "device='cuda'")"
}

part_faiss_gpu() {
    if ! faiss_gpu; then
        note "faiss-gpu not installed (this faiss has no GPU index): pip install '.[gpu]' (README) to run it"
        say "SKIP: faiss-gpu not installed"
        return 3
    fi
    need_demo || return 1
    local kind dirs=()
    for kind in torch_exact flat ivf_flat; do  # CF retrieval only (no LLM): the index is what is checked
        dirs+=("$(fresh "faiss_$kind")")
        retrieve "${dirs[-1]}" model.arch=MF "model.ckpt=$MF_CKPT" "retrieval.index_type=$kind"
        bg "$kind" "$PY" train_collm.py --cfg-path $RR_CFG --options "${OPTS[@]}"
    done
    join || return 1
    judge retrieval "${dirs[1]}" "kind='flat'" "device='cuda'" || return 1
    judge retrieval "${dirs[2]}" "kind='ivf_flat'" "device='cuda'" || return 1
    judge retrieval_close "${dirs[0]}" "${dirs[1]}" 0.01 "faiss-gpu flat vs torch exact (near ties may swap)"
}

part_compile() {
    need_demo || return 1
    local dir
    dir="$(fresh compile)"
    stage2 "$dir" run.compile=on run.amp=true
    run compile "$PY" train_collm.py --cfg-path $S2_CFG --options "${OPTS[@]}" || { fail "stage 2 with run.compile=on failed"; return 1; }
    logged "$dir" "compile: decoder layers compiled" "layers not compiled" || return 1
    if grep -q "compile failed" "$dir/log.txt"; then fail "$(grep -m1 "compile failed" "$dir/log.txt" | cut -c1-200)"; return 1; fi
    judge auc "$dir"
}

part_ddp() {
    two_gpus || return 3
    need_demo || return 1
    local dir
    dir="$(fresh ddp_mf_cold)"
    stage2 "$dir" run.distributed=ddp model.cold_start.enabled=true run.amp=true
    run mf_cold "${TORCHRUN[@]}" train_collm.py --cfg-path $S2_CFG --options "${OPTS[@]}" || { fail "DDP stage 2 failed"; return 1; }
    judge auc "$dir" cold
}

part_fsdp() {
    two_gpus || return 3
    need_demo || return 1
    need_cf sasrec || return 1
    need_cf lightgcn || return 1
    local good=0 name dir
    for name in mf_cold_amp mf_cold_fp32 sasrec_cold_items lightgcn; do
        dir="$(fresh "fsdp_$name")"
        case $name in
            mf_cold_amp) stage2 "$dir" model.cold_start.enabled=true run.amp=true ;;
            mf_cold_fp32) stage2 "$dir" model.cold_start.enabled=true run.amp=false ;;
            sasrec_cold_items) stage2 "$dir" model.rec_model=SASRec "model.rec_config.pretrained_path=$RUNS/cf_sasrec/cf_model.pth" \
                model.cold_start.enabled=true model.cold_start.cold_items=true ;;
            lightgcn) stage2 "$dir" model.rec_model=LightGCN "model.rec_config.pretrained_path=$RUNS/cf_lightgcn/cf_model.pth" ;;
        esac
        OPTS+=(run.distributed=fsdp)
        if run "$name" "${TORCHRUN[@]}" train_collm.py --cfg-path $S2_CFG --options "${OPTS[@]}"; then
            judge auc "$dir" || good=1
        else
            fail "$name under FSDP failed"; good=1
        fi
    done
    return $good
}

# ---- the perf parts (7b, smollm2, quant): timings against the bare loop on CoLLM's ML-1M split -------
# 7b: random-weight 7B (LLaMA / Vicuna) shape, stages 1 and 2: training at batch 4 and 16, scoring at 16
#   and 64, each against the bare loop at equal tokens (samples/s, peak GiB), host-device syncs of a few
#   steps, stage-2 batch 4 on the longest prompts under a 22 GiB cap; stage 2 with gradient checkpointing
#   (batch 16, then the largest batch that fits 22 GiB); the bare loop alone with logits at every position,
#   batch 4 and 16. tp_7b.json, tp_7b_ckpt.json, bare_7b_full_logits.jsonl.
# smollm2: a real pretrained LM without a download: SmolLM2-135M built by `collm-prepare backbone smollm2`
#   (--smollm2 DIR reuses one), bench/real_backbone.py on the full training split, validation and test
#   splits (each CF model alone, zero-shot, stage 1, CoLLM on each of MF, LightGCN, SASRec and DIN with
#   and without cold start, pure and hybrid, the K=50 re-ranking of each but DIN's; the CPU study's rows),
#   then its speed against the bare loop.
#   smollm2_ml1m.json (+ .png, .md), tp_smollm2.json.
# quant: a random-weight 7B checkpoint written once into OUT/rand_7b (13 GB, bf16), stage 2 under
#   model.quantization int8 and nf4 at batch 4 and 16 against the bare loop loading the same directory
#   with the same BitsAndBytesConfig, the same batches on the longest prompts, and the planner's
#   estimate beside them. tp_7b_int8.json, tp_7b_nf4.json, plan_7b.txt.
# A CPU dry run of the same steps (development only):
#   GPU_CHECK_ALLOW_CPU=1 bash bench/gpu_check.sh --device cpu --shape tiny --steps 1 --warmup 1 \
#       --smollm2 DIR --real-backbone-args "--train-rows 8 --valid-rows 8 --test-rows 16" 7b smollm2 quant
PERF_RAN=0
need_ml1m() {
    PERF_RAN=1
    BENCH=("$PY" bench/train_throughput.py --device "$DEVICE" --data "$DATA" --steps "$STEPS" --repeats 1)
    [ -f "$DATA/train_ood2.pkl" ] || [ -f "$DATA/train_ood2.parquet" ] || {
        fail "--data $DATA holds no train_ood2.pkl (unzip CoLLM's ml-1m.zip into data/)"; return 1; }
}
part_7b() {
    need_ml1m || return 1
    local good=0
    run tp "${BENCH[@]}" --shape "$SHAPE" --max-txt-len 256 --warmup "$WARMUP" --stages 1 2 --batch-size 4 16 \
        --eval-batch-size 16 64 --sync-debug --mem-search 4 --mem-stages 2 --mem-limit-gib 22 \
        --json "$OUT/tp_$SHAPE.json" || good=1
    run tp_ckpt "${BENCH[@]}" --shape "$SHAPE" --max-txt-len 256 --warmup "$WARMUP" --stages 2 --modes train \
        --batch-size 16 --no-bare --grad-ckpt --mem-search 16 32 48 64 96 128 192 256 --mem-limit-gib 22 \
        --json "$OUT/tp_${SHAPE}_ckpt.json" || good=1
    say "+ [bare_full_logits] bench/tp_bare.py --full-logits > $OUT/bare_${SHAPE}_full_logits.jsonl"
    "$PY" bench/tp_bare.py --shape "$SHAPE" --device "$DEVICE" --batch-size 4 16 --seq-len 256 --modes train \
        --steps "$STEPS" --warmup "$WARMUP" --full-logits > "$OUT/bare_${SHAPE}_full_logits.jsonl" \
        2> "$LOGS/${PART}_bare_full_logits.txt" || good=1
    [ $good -eq 0 ] || fail "a measurement failed (logs: $LOGS/7b_*.txt)"
}
part_smollm2() {
    need_ml1m || return 1
    run backbone "$PY" -m collm_faissret.data_prep backbone smollm2 --out "$SMOL" || { fail "collm-prepare backbone smollm2"; return 1; }
    # ---- bench/real_backbone.py: the SmolLM2 CoLLM study, full training, validation and test splits ----
    # (--train-rows 0 = all 33,891 rows; every CF encoder, as on CPU, pure and hybrid, each with its K=50
    # re-ranking (DIN skipped there); --real-backbone-args "--proj-tokens 1 8 --tune proj proj+lora --epochs 2"
    # runs the whole grid, "--run-seed 42 43" two runs of each setting, "--rows ..." other kinds of rows;
    # a rerun with the same --out resumes)
    # shellcheck disable=SC2086
    run study "$PY" "bench/real_backbone.py" --data "$DATA" --backbone "$SMOL" --cf-dir "$OUT/cf" \
        --out "$OUT/smollm2_runs" --json "$OUT/smollm2_ml1m.json" --device "$DEVICE" --train-rows 0 \
        --rows cf zero-shot stage1 collm cold hybrid rank \
        --proj-tokens 8 --tune proj --epochs 1 --curve-every 8000 $RB_ARGS || { fail "bench/real_backbone.py"; return 1; }
    # ---- end of the bench/real_backbone.py call ----
    run tp "${BENCH[@]}" --shape "$SMOL" --warmup "$WARMUP" --batch-size 16 --eval-batch-size 64 \
        --json "$OUT/tp_smollm2.json" || { fail "bench/train_throughput.py"; return 1; }
}
part_quant() {
    need_ml1m || return 1
    local ckpt="$OUT/rand_$SHAPE" bs q good=0
    run checkpoint "$PY" bench/random_checkpoint.py --shape "$SHAPE" --data "$DATA" --out "$ckpt" --device "$DEVICE" \
        || { fail "bench/random_checkpoint.py"; return 1; }
    : > "$OUT/plan_$SHAPE.txt"
    for bs in 4 16; do  # prompt length: the data's longest training prompt (the plan's first lines say)
        "$PY" -m collm_faissret.env --cfg-path train_configs/collm_stage2_mf_ml1m.yaml --plan --gpus 1 --gib 24 --options \
            model.llama_model="$ckpt" "datasets.movielens_ood.path=$DATA" run.batch_size_train=$bs \
            model.max_txt_len=256 run.output_dir="$OUT/plan_run" >> "$OUT/plan_$SHAPE.txt" 2>&1 || good=1
    done
    for q in $QUANTS; do
        run "tp_$q" "${BENCH[@]}" --shape "$ckpt" --quantization "$q" --max-txt-len 256 --warmup "$WARMUP" \
            --stages 2 --modes train --batch-size 4 16 --mem-search 4 16 --mem-limit-gib 60 \
            --json "$OUT/tp_${SHAPE}_$q.json" || good=1
    done
    [ $good -eq 0 ] || fail "a measurement or the plan failed (logs: $LOGS/quant_*.txt, $OUT/plan_$SHAPE.txt)"
}
perf_table() {  # every row the perf parts measured in OUT (this run's and any earlier one's)
    "$PY" - "$OUT" <<'EOF'
import glob, json, os, sys

out = sys.argv[1]
def f(v, fmt):
    return "-" if v is None else format(v, fmt)
print(f"\n{'file':<24} {'stage':>5} {'mode':>10} {'bs':>4} | {'samples/s':>9} {'bare':>9} {'ratio':>6} | "
      f"{'peak GiB':>8} {'bare':>6} | notes")
for path in sorted(glob.glob(os.path.join(out, "tp_*.json"))):
    with open(path) as fh:
        rows = json.load(fh)
    for r in rows:
        note = []
        if r.get("grad_ckpt"):
            note.append("grad ckpt")
        if r.get("quantization", "none") != "none":
            note.append(r["quantization"])
        if r["mode"] == "mem_search":
            note.append(("fits" if r["fits"] else "does not fit") + f" {r.get('limit_gib')} GiB, longest prompts")
        print(f"{os.path.basename(path):<24} {str(r['stage']):>5} {r['mode']:>10} {r['batch_size']:>4} | "
              f"{f(r['samples_per_s'], '9.1f')} {f(r.get('bare_samples_per_s'), '9.1f')} "
              f"{f(r.get('ratio_vs_bare'), '6.3f')} | {f(r.get('peak_mem_gib'), '8.2f')} "
              f"{f(r.get('bare_peak_mem_gib'), '6.2f')} | {', '.join(note)}")
for path in sorted(glob.glob(os.path.join(out, "bare_*_full_logits.jsonl"))):
    with open(path) as fh:
        for line in fh:
            r = json.loads(line)
            print(f"{os.path.basename(path):<24} {'-':>5} {r['mode']:>10} {r['batch_size']:>4} | {'-':>9} "
                  f"{r['samples_per_s']:>9.1f} {'-':>6} | {'-':>8} {f(r.get('peak_mem_gib'), '6.2f')} | "
                  f"bare loop alone, logits at every position, {r['seq_len']} tokens")
summary = os.path.join(out, "smollm2_ml1m.json")
if os.path.isfile(summary):
    with open(summary) as fh:
        rows = json.load(fh)
    print(f"\nSmolLM2-135M ({summary})\n{'row':<24} {'test AUC':>8} {'UAUC':>7} {'rows':>6} {'valid AUC':>9}")
    for r in rows:
        print(f"{r['name']:<24} {f(r.get('test_auc'), '8.4f')} {f(r.get('test_uauc'), '7.4f')} "
              f"{f(r.get('test_rows'), '6d')} {f(r.get('valid_auc'), '9.4f')}")
EOF
}

# ---- the run ---------------------------------------------------------------------------------
{
    if [ "$RUN_DEVICE" = cuda ]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    fi
    "$PY" -c "import torch, transformers, peft, faiss; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'faiss', faiss.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
"$PY" -m collm_faissret.env >> "$OUT/machine.txt" 2>&1
echo "parts: ${PARTS[*]}; logs in $LOGS"

declare -A RESULT=() SECONDS_OF=() NOTE_OF=()
START=$(now)
for PART in "${PARTS[@]}"; do
    echo
    echo "== $PART: ${PART_HELP[$PART]}"
    NOTE="" t0=$(now)
    "part_$PART"
    case $? in 0) RESULT[$PART]=PASS ;; 3) RESULT[$PART]=SKIP ;; *) RESULT[$PART]=FAIL ;; esac
    wait  # nothing of a part outlives it
    SECONDS_OF[$PART]="$(secs "$t0")" NOTE_OF[$PART]="$NOTE"
    echo "== $PART: ${RESULT[$PART]} (${SECONDS_OF[$PART]} s)"
done
[ "$PERF_RAN" = 1 ] && perf_table

status=0
{
    echo
    echo "| part | result | seconds | notes |"
    echo "|---|---|---:|---|"
    for PART in "${PARTS[@]}"; do
        echo "| $PART | ${RESULT[$PART]} | ${SECONDS_OF[$PART]} | ${NOTE_OF[$PART]//|/\\|} |"
    done
    echo "| all | $(for p in "${PARTS[@]}"; do echo "${RESULT[$p]}"; done | sort | uniq -c | awk '{printf "%s%d %s", (NR > 1 ? ", " : ""), $1, $2}') | $(secs "$START") | $(head -n 1 "$OUT/machine.txt") |"
} | tee "$OUT/summary.md"
for PART in "${PARTS[@]}"; do [ "${RESULT[$PART]}" = FAIL ] && status=1; done
exit $status
