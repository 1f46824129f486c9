# The 8-layer CoCoMix student of payoff.py's depth axis: concepts predicted from and interleaved at the input of
# block 3 of 8, the paper's 69M proportions (config/owt_cocomix_69m.py).
out_dir = "out_payoff/cocomix_8l"
seed = 1
dataset = "concepts"
mode = "cocomix"
sae_path = "out/sae/sae.pt"
n_layer, n_head, n_embd = 8, 4, 96
insert_layer = 3
k_attr, k_concepts, lam_concept = 4, 32, 0.1
block_size = 64
batch_size = 32
max_iters = 1000
learning_rate = 2e-3
eval_interval = 100
