# The paper's 69M NTP baseline (Table 1): d=624 matches CoCoMix-69M's activated parameters.
# 20B tokens of OpenWebText: 40k steps of 512 x 1024 tokens. Prepare with `python prepare.py --dataset=openwebtext`.
# Launch: torchrun --standalone --nproc_per_node=8 train.py config/owt_ntp_69m.py
out_dir = "out/owt_ntp_69m"
dataset = "openwebtext"
n_layer, n_head, n_embd = 8, 8, 624
block_size = 1024
dropout = 0.1                 # the official code's effective value (HF GPT-2 defaults; see README)
batch_size = 16
gradient_accumulation_steps = 32  # 16 x 32 x 1024 = 0.5M tokens per step, over all GPUs
learning_rate = 6e-4
max_iters = 40000
warmup_iters = 130            # 1/300 of the steps
eval_interval = 1000
eval_iters = 100
log_interval = 10
