#!/usr/bin/env bash
# The GPU checks the issues name, as one script for a CUDA machine:
#   1. Zenith's CUDA tests (no host sync under torch.cuda.set_sync_debug_mode("error"), AMP, devices)
#   2. benchmarks/benchmark_optimizer.py on CUDA (CUDA events), benchmarks/benchmark_grad_norm.py (per tensor against DDP bucket views)
#   3. Mask R-CNN R50-FPN training iterations, ZENITH against SGD (and the bare loop), bf16 and fp16
# Run from the repository root: benchmarks/run_gpu_checks.sh. Results go to $OUT (default ./gpu_checks_out).
set -uo pipefail
OUT=${OUT:-gpu_checks_out}
mkdir -p "$OUT"
# The package from this checkout, also where it is not pip-installed (a bare copy of the tree on a GPU machine).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' | tee "$OUT/env.txt"
import torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.cuda.get_device_name()}")
PY
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_zenith_cuda.py tests/test_zenith.py > "$OUT/tests.txt" 2>&1
tail -3 "$OUT/tests.txt"
python3 benchmarks/benchmark_optimizer.py --device cuda --threads 16 --rounds 50 --fwd-bwd-reps 5 2>&1 | tee "$OUT/benchmark_optimizer_cuda.txt"
python3 benchmarks/benchmark_grad_norm.py --device cuda --threads 16 --rounds 50 --blocks 5 --no-compile 2>&1 | tee "$OUT/benchmark_grad_norm_cuda.txt"
for dtype in bfloat16 float16; do
  python3 benchmarks/benchmark_engine.py --config benchmarks/configs/mask_rcnn_R_50_FPN_zenith_3min_bf16_synthetic.yaml \
      --optimizers ZENITH SGD --iters "${ITERS:-25}" --blocks "${BLOCKS:-4}" SOLVER.AMP.DTYPE "$dtype" \
      2>&1 | grep -v " INFO: " | tee "$OUT/benchmark_engine_R50_$dtype.txt"
done
