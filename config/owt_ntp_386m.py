# The paper's 386M NTP baseline (Table 1): d=1072 matches CoCoMix-386M's activated parameters.
# 20B tokens of OpenWebText: 40k steps of 512 x 1024 tokens.
out_dir = "out/owt_ntp_386m"
dataset = "openwebtext"
n_layer, n_head, n_embd = 24, 16, 1072
block_size = 1024
dropout = 0.1
batch_size = 8
gradient_accumulation_steps = 64  # 8 x 64 x 1024 = 0.5M tokens per step
learning_rate = 3e-4
max_iters = 40000
warmup_iters = 130
eval_interval = 1000
eval_iters = 100
log_interval = 10
