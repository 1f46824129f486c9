#!/usr/bin/env bash
# The GPU check: what the CPU tests cannot show, in one command on one CUDA GPU, in under 8 minutes (most of it
# torch.compile). Needs one CUDA GPU and the repo's requirements; reads no network. Refuses to start without a GPU.
#
#   bash gpu_check.sh                       # writes out/gpu_check/, everything it prints in gpu_check.log there
#   OUT=/tmp/check bash gpu_check.sh        # elsewhere
#
# 1. bench.py at the paper's 69M shapes (NTP d=624 and CoCoMix d=512 with a 32,768-latent SAE on a GPT-2 small
#    teacher, 16 x 1024 tokens, GPT-2's vocabulary), compiled, bf16: ms/step, tokens/s, MFU, peak memory.
# 2. The memory table of the six OWT presets (bench.py --memory_table=True), estimated, to set beside 1's peaks.
# 3. train.py under torchrun on the embedded concept world (prepare.py, offline) with the 69M NTP preset's
#    shape: 20 iterations uninterrupted, against 10 iterations resumed to 20 (--init_from=resume). Prints both
#    final val losses and whether they agree to 1e-4. With one process train.py makes no process group
#    (WORLD_SIZE=1), so this checks the torchrun launch, CUDA, compile and resume, not NCCL's all-reduce.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-out/gpu_check}

if ! python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "error: gpu_check.sh needs a CUDA GPU, and torch sees none here (torch.cuda.is_available() is False)" >&2
    exit 1
fi

check() {
    echo "gpu_check.sh, $(date -u '+%Y-%m-%d %H:%M:%S UTC')," \
         "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null ||
        python -c "import torch; print(torch.cuda.get_device_name())"
    python -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}')"

    echo; echo "== 1. bench.py: the paper's 69M shapes, compiled, bf16"
    python bench.py --ntp_config=config/owt_ntp_69m.py --cocomix_config=config/owt_cocomix_69m.py \
        --teacher_config=gpt2 --n_latents=32768 --sae_k=32 --sae_layer=5 --batch_size=16 --vocab_size=50304 \
        --device=cuda --compile=True

    echo; echo "== 2. the memory table (estimated)"
    python bench.py --memory_table=True

    echo; echo "== 3. torchrun train.py: 20 iterations, against 10 resumed to 20"
    python prepare.py --data_root="$OUT/data"  # the concept world: offline, seconds; not the repo's data/
    # The 69M NTP preset's model on the concept world's short windows. --overwrite lets the check run again in
    # the same $OUT. lr_decay_iters and warmup_iters are fixed so both runs follow the same schedule: a run
    # stopped at 10 would otherwise decay over 10 iterations (and the preset warms up over 130).
    local run=(config/owt_ntp_69m.py --dataset=concepts --data_root="$OUT/data" --block_size=64 --batch_size=16
               --gradient_accumulation_steps=1 --eval_interval=10 --eval_iters=2 --lr_decay_iters=20
               --warmup_iters=2 --device=cuda --overwrite)
    torchrun --standalone --nproc_per_node=1 train.py "${run[@]}" --max_iters=20 --out_dir="$OUT/a"
    torchrun --standalone --nproc_per_node=1 train.py "${run[@]}" --max_iters=10 --out_dir="$OUT/b"
    # a resume takes its settings from the checkpoint; a flag may change only RESUME_MAY_CHANGE (train.py)
    torchrun --standalone --nproc_per_node=1 train.py --init_from=resume --out_dir="$OUT/b" --max_iters=20
    # iteration 10 too: the same weights before the resume, so a difference only at 20 comes from the resume
    python - "$OUT/a/metrics.jsonl" "$OUT/b/metrics.jsonl" <<'EOF'
import json, sys
a, b = ({r["iter"]: r["val_loss"] for r in map(json.loads, open(path))} for path in sys.argv[1:])
for it in (10, 20):
    print(f"val loss at iteration {it}: uninterrupted {a[it]:.6f}, {'resumed at 10' if it == 20 else 'stopped at 10'} "
          f"{b[it]:.6f}, difference {abs(a[it] - b[it]):.1e}: " + ("agree" if abs(a[it] - b[it]) <= 1e-4 else "DIFFER")
          + " to 1e-4")
if abs(a[20] - b[20]) > 1e-4:
    print("resume check: the resumed run differs. bf16 and compiled kernels on a GPU need not be bit-exact (compare "
          "iteration 10); the checkpoint restores the CUDA generator that dropout draws from")
EOF
    echo; echo "gpu_check.sh: done in ${SECONDS}s; outputs in $OUT"
}

mkdir -p "$OUT"
check 2>&1 | tee "$OUT/gpu_check.log"
