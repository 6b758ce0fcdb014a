#!/usr/bin/env bash
# What docs/scale.md promises, checked and measured on a GPU machine: run from the repository root, in an
# environment with a CUDA build of torch and explainrec installed (`pip install -e .` after torch).
#
#   bash scripts/gpu_scale_check.sh            # results in ./gpu-check/ (or $OUT): one log per step, summary.txt
#
#   1. the GPUs as torch sees them
#   2. 4096 generated pairs explained by the embedded SmolLM2 in 1 process, then one process per GPU
#      (configs/accelerate/data-parallel.yaml): pairs/s of each, and whether the two files are identical
#   3. that launch killed (one process, SIGKILL) after a few chunks, then resumed: the same file again?
#   4. a tiny GaVaMoE trained for 3 steps under configs/accelerate/fsdp.yaml, and under deepspeed-zero3.yaml when
#      deepspeed is installed: does the launch run and save a model?
# Steps 2-4 need at least 2 GPUs for the multi-process parts (one process per GPU); with one GPU they say so.
set -uo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
PY=${PYTHON:-python}
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"

NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
summary "gpus: $NGPU ($($PY -c "import torch; print(torch.__version__, torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"))"
[ "$NGPU" -ge 1 ] || { summary "no GPU visible to torch: stop"; exit 1; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

$PY - "$OUT/pairs.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for n in range(4096):
        rec = {"user": f"u{n % 700}", "item": f"i{n * 7 % 900}", "title": f"Place {n}",
               "user_profile": "Enjoys casual dining with hearty dishes.", "item_profile": "Fans of tacos would enjoy it."}
        f.write(json.dumps(rec) + "\n")
PY
EXPLAIN=(-m explainrec.cli explain --method zero-shot --model smollm2-135m --pairs "$OUT/pairs.jsonl"
         --chunk-size 256 --batch-size 64 --max-new-tokens 40)
LAUNCH=(accelerate launch --config_file configs/accelerate/data-parallel.yaml --num_processes "$NGPU")

start=$(date +%s)
$PY "${EXPLAIN[@]}" --out "$OUT/one.jsonl" > "$OUT/explain-1.log" 2>&1
summary "explain, 1 process: exit $? in $(( $(date +%s) - start )) s; $(grep -o 'by 1 process: [0-9.]* pairs/s' "$OUT/explain-1.log" | tail -1)"
if [ "$NGPU" -ge 2 ]; then
  start=$(date +%s)
  "${LAUNCH[@]}" "${EXPLAIN[@]}" --out "$OUT/many.jsonl" > "$OUT/explain-$NGPU.log" 2>&1
  summary "explain, $NGPU processes: exit $? in $(( $(date +%s) - start )) s; $(grep -o "by $NGPU processes: [0-9.]* pairs/s" "$OUT/explain-$NGPU.log" | tail -1)"
  cmp -s "$OUT/one.jsonl" "$OUT/many.jsonl" && summary "files identical: yes" || summary "files identical: NO (diff the two)"

  "${LAUNCH[@]}" "${EXPLAIN[@]}" --out "$OUT/cut.jsonl" > "$OUT/kill.log" 2>&1 &
  launcher=$!
  while [ "$(ls "$OUT/cut.jsonl.parts" 2>/dev/null | grep -c '^chunk-')" -lt 3 ] && kill -0 $launcher 2>/dev/null; do sleep 0.2; done
  victim=$(for p in $(pgrep -f "explainrec.cli explain"); do tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -qx RANK=1 && echo $p; done | head -1)
  [ -n "$victim" ] && kill -9 "$victim"
  wait $launcher; summary "launch with rank 1 killed: exit $? ($(ls "$OUT/cut.jsonl.parts" | grep -c '^chunk-') chunks kept)"
  "${LAUNCH[@]}" "${EXPLAIN[@]}" --out "$OUT/cut.jsonl" --resume > "$OUT/resume.log" 2>&1
  summary "resumed: exit $?; $(grep -o 'explanations=[0-9]*' "$OUT/resume.log" | tr '\n' ' ')"
  cmp -s "$OUT/one.jsonl" "$OUT/cut.jsonl" && summary "resumed file identical: yes" || summary "resumed file identical: NO"
else
  summary "one GPU: the multi-process explain and the kill/resume need 2 or more (one process per GPU)"
fi

TRAIN=(-m explainrec.cli train gavamoe --data synthetic:users=60,items=40,types=2 --config tiny max_steps=3 batch_size=2)
for cfg in fsdp deepspeed-zero3; do
  if [ $cfg = deepspeed-zero3 ] && ! $PY -c "import deepspeed" 2>/dev/null; then
    summary "train under $cfg.yaml: skipped (deepspeed is not installed: pip install deepspeed)"; continue
  fi
  accelerate launch --config_file configs/accelerate/$cfg.yaml --num_processes "$NGPU" "${TRAIN[@]}" \
    --out "$OUT/train-$cfg" > "$OUT/train-$cfg.log" 2>&1
  summary "train under $cfg.yaml on $NGPU GPU(s): exit $?; model saved: $([ -f "$OUT/train-$cfg/model/model.safetensors" ] && echo yes || echo no)"
done
echo "summary: $OUT/summary.txt"
