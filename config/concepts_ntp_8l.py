# The 8-layer NTP baseline of payoff.py's depth axis, for config/concepts_cocomix_8l.py: width 104, whose
# parameters (1.10M) match CoCoMix's activated parameters (1.04M, 1.05x) as the 4-layer pair's do (1.04x).
out_dir = "out_payoff/ntp_8l"
seed = 1
dataset = "concepts"
n_layer, n_head, n_embd = 8, 4, 104
block_size = 64
batch_size = 32
max_iters = 1000
learning_rate = 2e-3
eval_interval = 100
