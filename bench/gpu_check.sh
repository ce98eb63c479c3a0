#!/usr/bin/env bash
# The GPU check: the project's training and scoring steps against the bare transformers + peft
# LoRA loop (bench/tp_bare.py) on a CUDA machine, then one table of everything measured.
#
#   bash bench/gpu_check.sh [--data DIR] [--out DIR] [--python PY] [--steps N] [PART ...]
#
# Needs a CUDA GPU, this project installed (`make install`, or `pip install -e .` after a CUDA
# torch) and CoLLM's ML-1M split (--data, default data/ml-1m: unzip their ml-1m.zip into data/).
# Nothing is downloaded. Run it from anywhere; paths given are relative to where you run it.
#
# PART (default: 7b smollm2 quant, in that order):
#   7b       random-weight 7B (LLaMA / Vicuna) shape, stages 1 and 2: training at batch 4 and 16,
#            scoring at 16 and 64, each against the bare loop at equal tokens (samples/s, peak GiB),
#            host-device syncs of a few steps, stage-2 batch 4 on the longest prompts under a 22 GiB
#            cap; stage 2 with gradient checkpointing (batch 16, then the largest batch that fits
#            22 GiB); the bare loop alone with logits at every position, batch 4 and 16.
#            tp_7b.json, tp_7b_ckpt.json, bare_7b_full_logits.jsonl.
#   smollm2  a real pretrained LM without a download: SmolLM2-135M built by `collm-prepare backbone
#            smollm2` (--smollm2 DIR reuses one), bench/real_backbone.py on the full training split,
#            validation and test splits (each CF model alone, zero-shot, stage 1, CoLLM on each of MF,
#            LightGCN, SASRec and DIN with and without cold start; the CPU study's rows), then
#            its speed against the bare loop. smollm2_ml1m.json (+ .png, .md), tp_smollm2.json.
#   quant    a random-weight 7B checkpoint written once into OUT/rand_7b (13 GB, bf16), stage 2
#            under model.quantization int8 and nf4 at batch 4 and 16 against the bare loop loading
#            the same directory with the same BitsAndBytesConfig, the same batches on the longest
#            prompts, and the planner's estimate beside them. tp_7b_int8.json, tp_7b_nf4.json,
#            plan_7b.txt.
#
# Options: --data DIR (CoLLM-format data, default data/ml-1m), --out DIR (default outputs/gpu_check),
# --python PY (default .venv/bin/python when there, else python3), --steps N (timed batches per
# measurement, default 10), --warmup N (untimed ones before them, default 3), --smollm2 DIR
# (default OUT/smollm2), --quants "int8 nf4". Logs: OUT/log_<part>.txt. Exit status: non-zero
# when any step failed (the table shows the rest). A CPU dry run of the same steps:
#   bash bench/gpu_check.sh --device cpu --shape tiny --steps 1 --warmup 1 --smollm2 DIR \
#       --real-backbone-args "--train-rows 8 --valid-rows 8 --test-rows 16"
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DATA=data/ml-1m OUT=outputs/gpu_check STEPS=10 WARMUP=3 DEVICE=cuda SHAPE=7b QUANTS="int8 nf4" SMOL="" RB_ARGS=""
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
PARTS=()
usage() { sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --data) DATA="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        --shape) SHAPE="$2"; shift 2 ;;
        --quants) QUANTS="$2"; shift 2 ;;
        --smollm2) SMOL="$2"; shift 2 ;;
        --real-backbone-args) RB_ARGS="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        7b|smollm2|quant) PARTS+=("$1"); shift ;;
        *) echo "gpu_check.sh: unknown argument $1 (parts: 7b smollm2 quant; --help)" >&2; exit 2 ;;
    esac
done
[ ${#PARTS[@]} -eq 0 ] && PARTS=(7b smollm2 quant)
SMOL="${SMOL:-$OUT/smollm2}"
# absolute, symlinks kept (a venv's python is a symlink to the base interpreter)
DATA="$(realpath -s -m "$DATA")" OUT="$(realpath -s -m "$OUT")" SMOL="$(realpath -s -m "$SMOL")"
case "$PY" in */*) PY="$(realpath -s -m "$PY")" ;; esac
cd "$REPO" || exit 2  # the configs name prompt/ relative to the checkout
if [ ! -f "$DATA/train_ood2.pkl" ] && [ ! -f "$DATA/train_ood2.parquet" ]; then
    echo "gpu_check.sh: --data $DATA holds no train_ood2.pkl (unzip CoLLM's ml-1m.zip into data/)" >&2
    exit 2
fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check.sh: $PY sees no CUDA device (--python PY: the environment with a CUDA torch)" >&2
    exit 2
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
BENCH=("$PY" bench/train_throughput.py --device "$DEVICE" --data "$DATA" --steps "$STEPS" --repeats 1)
STAGE2=train_configs/collm_stage2_mf_ml1m.yaml
rc=0
step() {  # step LOG COMMAND...: run, append its output to LOG, remember a failure
    local log="$1"; shift
    echo "+ $*" | tee -a "$log"
    "$@" 2>&1 | tee -a "$log" || { rc=1; echo "gpu_check.sh: failed: $*" | tee -a "$log"; }
}

{
    [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

for part in "${PARTS[@]}"; do
    log="$OUT/log_$part.txt"
    : > "$log"
    case "$part" in
    7b)
        step "$log" "${BENCH[@]}" --shape "$SHAPE" --max-txt-len 256 --warmup "$WARMUP" --stages 1 2 --batch-size 4 16 \
            --eval-batch-size 16 64 --sync-debug --mem-search 4 --mem-stages 2 --mem-limit-gib 22 \
            --json "$OUT/tp_$SHAPE.json"
        step "$log" "${BENCH[@]}" --shape "$SHAPE" --max-txt-len 256 --warmup "$WARMUP" --stages 2 --modes train \
            --batch-size 16 --no-bare --grad-ckpt --mem-search 16 32 48 64 96 128 192 256 --mem-limit-gib 22 \
            --json "$OUT/tp_${SHAPE}_ckpt.json"
        echo "+ bench/tp_bare.py --full-logits" | tee -a "$log"
        "$PY" "bench/tp_bare.py" --shape "$SHAPE" --device "$DEVICE" --batch-size 4 16 --seq-len 256 \
            --modes train --steps "$STEPS" --warmup "$WARMUP" --full-logits > "$OUT/bare_${SHAPE}_full_logits.jsonl" 2>>"$log" || rc=1
        ;;
    smollm2)
        step "$log" "$PY" -m collm_faissret.data_prep backbone smollm2 --out "$SMOL"
        # ---- bench/real_backbone.py: the SmolLM2 CoLLM study, full training, validation and test splits ----
        # (--train-rows 0 = all 33,891 rows; every CF encoder, as on CPU; --real-backbone-args
        # "--proj-tokens 1 8 --tune proj proj+lora --epochs 2" runs the whole grid, "--run-seed 42 43 44" three
        # runs of each setting; a rerun with the same --out resumes)
        # shellcheck disable=SC2086
        step "$log" "$PY" "bench/real_backbone.py" --data "$DATA" --backbone "$SMOL" --cf-dir "$OUT/cf" \
            --out "$OUT/smollm2_runs" --json "$OUT/smollm2_ml1m.json" --device "$DEVICE" --train-rows 0 \
            --proj-tokens 8 --tune proj --epochs 1 --curve-every 8000 $RB_ARGS
        # ---- end of the bench/real_backbone.py call ----
        step "$log" "${BENCH[@]}" --shape "$SMOL" --warmup "$WARMUP" --batch-size 16 --eval-batch-size 64 \
            --json "$OUT/tp_smollm2.json"
        ;;
    quant)
        ckpt="$OUT/rand_$SHAPE"
        step "$log" "$PY" "bench/random_checkpoint.py" --shape "$SHAPE" --data "$DATA" --out "$ckpt" \
            --device "$DEVICE"
        : > "$OUT/plan_$SHAPE.txt"
        for bs in 4 16; do  # prompt length: the data's longest training prompt (the plan's first lines say)
            "$PY" -m collm_faissret.env --cfg-path "$STAGE2" --plan --gpus 1 --gib 24 --options \
                model.llama_model="$ckpt" "datasets.movielens_ood.path=$DATA" run.batch_size_train=$bs \
                model.max_txt_len=256 run.output_dir="$OUT/plan_run" >> "$OUT/plan_$SHAPE.txt" 2>&1 || rc=1
        done
        cat "$OUT/plan_$SHAPE.txt" >> "$log"
        for q in $QUANTS; do
            step "$log" "${BENCH[@]}" --shape "$ckpt" --quantization "$q" --max-txt-len 256 --warmup "$WARMUP" \
                --stages 2 --modes train --batch-size 4 16 --mem-search 4 16 --mem-limit-gib 60 \
                --json "$OUT/tp_${SHAPE}_$q.json"
        done
        ;;
    esac
done

# One table of every row measured in OUT (this run's and any earlier part's).
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
exit $rc
