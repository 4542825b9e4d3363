#!/usr/bin/env bash
# Exercises train.py's GPU paths on one CUDA machine: bf16 and fp16 autocast, `--compile`, the TensorBoard tracker,
# FSDP through `accelerate launch --use_fsdp` (one process), the tiny and paper presets of the three 2D models and
# MMCAF-Net's stage-wise recipe, then the training tests themselves with CUDA visible.
# Each step is run independently and reported as PASS/FAIL with its wall time in $RESULTS (a markdown table), so one
# failure does not hide the others. Assumes hf_cxr and its dependencies are importable (`pip install -e .`).
# Usage: [ONLY=REGEX] bash benchmarks/gpu_training_check.sh [RESULTS_FILE]   (default: gpu_training_check.md)
# ONLY (an extended regex) runs just the steps whose names match it.
set -u
RESULTS=${1:-gpu_training_check.md}
WORK=$(mktemp -d)
LOGS=$(dirname "$RESULTS")/gpu_training_logs
mkdir -p "$LOGS"
TRAIN=(python -m hf_cxr.cli train)

{
  echo "| step | result | seconds |"
  echo "| --- | --- | --- |"
} >"$RESULTS"

step() {  # step NAME COMMAND...: run it, log its output, record PASS/FAIL and the wall time
  local name=$1
  shift
  if [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]]; then return; fi
  local start=$SECONDS
  if "$@" >"$LOGS/$name.log" 2>&1; then result=PASS; else result="FAIL (exit $?)"; fi
  echo "| $name | $result | $((SECONDS - start)) |" | tee -a "$RESULTS"
}

python - <<'EOF' | tee "$LOGS/versions.txt"
import accelerate, datasets, timm, torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print("transformers", transformers.__version__, "accelerate", accelerate.__version__, "timm", timm.__version__,
      "datasets", datasets.__version__)
EOF

# The bundled NIH sample, converted as a user would (random patient split: the official lists are not shipped).
python - "$WORK" <<'EOF'
import sys
from pathlib import Path
from hf_cxr.data import convert_chestxray14
from hf_cxr.sample import write_sample_raw_tree
work = Path(sys.argv[1])
convert_chestxray14(write_sample_raw_tree(work / "raw"), work / "nih", image_size=None, seed=0, overwrite=True)
EOF
NIH="$WORK/nih"
COMMON=(--dataset "$NIH" --max-steps 20 --eval-steps 10 --checkpointing-steps 10 --per-device-batch-size 16)

for model in cr_msnet ma_msf mxa_efficientvit; do
  for preset in tiny paper; do
    step "${model}_${preset}_bf16_tensorboard" "${TRAIN[@]}" --model "$model" --preset "$preset" "${COMMON[@]}" \
      --output-dir "$WORK/$model-$preset" --mixed-precision bf16 --log-with csv,tensorboard
  done
done
step cr_msnet_tiny_fp16 "${TRAIN[@]}" --model cr_msnet --preset tiny "${COMMON[@]}" \
  --output-dir "$WORK/fp16" --mixed-precision fp16
step cr_msnet_tiny_bf16_compile "${TRAIN[@]}" --model cr_msnet --preset tiny "${COMMON[@]}" \
  --output-dir "$WORK/compile" --mixed-precision bf16 --compile
step cr_msnet_paper_bf16_compile "${TRAIN[@]}" --model cr_msnet --preset paper "${COMMON[@]}" \
  --output-dir "$WORK/compile-paper" --mixed-precision bf16 --compile
step cr_msnet_tiny_bf16_resume "${TRAIN[@]}" --model cr_msnet --preset tiny "${COMMON[@]}" \
  --output-dir "$WORK/cr_msnet-tiny" --mixed-precision bf16 --max-steps 30 --resume-from-checkpoint latest
step cr_msnet_tiny_fsdp_1process python -m accelerate.commands.launch --num_processes 1 --use_fsdp \
  --mixed_precision bf16 training_scripts/train.py --model cr_msnet --preset tiny "${COMMON[@]}" \
  --output-dir "$WORK/fsdp"
step ma_msf_tiny_fsdp_1process python -m accelerate.commands.launch --num_processes 1 --use_fsdp \
  --mixed_precision bf16 training_scripts/train.py --model ma_msf --preset tiny "${COMMON[@]}" \
  --output-dir "$WORK/fsdp-ma-msf"
# The MXA-EfficientViT recipe's augmentation (every 2D step) batched on the GPU (`auto` there) and, for comparison, in
# the loader; the log's "waiting for data" lines give the share of step time spent on the loader.
MXA_AUGMENTATION=(--set "augmentation.random_resized_crop={scale: [0.8, 1.0], ratio: [0.75, 1.3333], p: 1.0}"
  --set "augmentation.horizontal_flip={p: 0.5}" --set "augmentation.rotate={degrees: 10, p: 0.5}"
  --set "augmentation.affine={translate: [0.05, 0.05], scale: [0.95, 1.05], shear: 0, p: 0.5}"
  --set "augmentation.elastic={alpha: 30.0, sigma: 5.0, p: 0.2}"
  --set "augmentation.gaussian_blur={kernel_size: 3, sigma: [0.1, 1.0], p: 0.2}")
for where in device cpu; do
  step "mxa_efficientvit_paper_bf16_augment_on_$where" "${TRAIN[@]}" --model mxa_efficientvit --preset paper \
    "${COMMON[@]}" --output-dir "$WORK/augment-$where" --mixed-precision bf16 --augment-on "$where" \
    "${MXA_AUGMENTATION[@]}"
done
# Training images/s of the three paper presets (bf16, channels-last) and the loader's rate on this machine's cores,
# in the loader and with the augmentation on the GPU, with the verdict on which is the bottleneck.
step bench_paper_presets_bf16 python -m hf_cxr.cli bench --presets paper --baselines densenet121 \
  --data-workers 0 4 8 --out "$(dirname "$RESULTS")/gpu_bench_paper.md"
# The training tests (CPU-sized, tiny presets, MMCAF-Net's stages included), now with CUDA visible: Accelerate picks
# the GPU. The kill-and-resume equality tests are left out: non-deterministic CUDA kernels make resumed weights differ.
step pytest_training_on_cuda python -m pytest -q -p no:cacheprovider tests/test_training.py tests/test_training_ct.py \
  -k "not resume"
find "$WORK" -path "*logs*" -type f >"$LOGS/tracker_files.txt" 2>&1  # the CSV and TensorBoard files written
rm -rf "$WORK"
