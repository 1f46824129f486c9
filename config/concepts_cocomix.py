# CoCoMix student on the embedded concept world: concepts from out/sae (sae.py on out/teacher), predicted from
# and interleaved at the input of block 2 of 4 (the paper's 69M model predicts at block 3 of 8).
out_dir = "out/compare/cocomix_s1"  # where compare.py and the pipeline look: python compare.py out/compare
seed = 1
dataset = "concepts"
mode = "cocomix"
sae_path = "out/sae/sae.pt"
n_layer, n_head, n_embd = 4, 4, 96
insert_layer = 2
k_attr, k_concepts, lam_concept = 4, 32, 0.1
block_size = 64
batch_size = 32
max_iters = 1000
learning_rate = 2e-3
eval_interval = 100
