# The NTP baseline for config/concepts_cocomix.py: same recipe and tokens, widened from 96 to 108 so that its
# parameters match CoCoMix's activated parameters (with the 1024-latent SAE), as the paper matches 624 to 512.
out_dir = "out/compare/ntp_s1"  # where compare.py and the pipeline look: python compare.py out/compare
seed = 1
dataset = "concepts"
n_layer, n_head, n_embd = 4, 4, 108
block_size = 64
batch_size = 32
max_iters = 1000
learning_rate = 2e-3
eval_interval = 100
