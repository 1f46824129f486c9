# The paper's 1.38B NTP baseline (Table 1): d=2096 matches CoCoMix-1.38B's activated parameters.
# 20B tokens of OpenWebText: 20k steps of 1024 x 1024 tokens.
out_dir = "out/owt_ntp_1b"
dataset = "openwebtext"
n_layer, n_head, n_embd = 24, 16, 2096
block_size = 1024
dropout = 0.1
batch_size = 4
gradient_accumulation_steps = 256  # 4 x 256 x 1024 = 1M tokens per step
learning_rate = 2e-4
max_iters = 20000
warmup_iters = 65
eval_interval = 500
eval_iters = 100
log_interval = 10
