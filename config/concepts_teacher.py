# The concept teacher for the embedded default (the role GPT-2 124M plays in the paper): a GPT trained by
# next-token prediction on the synthetic concept world, larger and trained longer than the student default.
# sae.py reads its checkpoint from out_dir. About 2-3 minutes on 2 CPU cores:
#   python prepare.py && python train.py config/concepts_teacher.py
out_dir = "out/teacher"
dataset = "concepts"
n_layer = 4
n_head = 6
n_embd = 192
block_size = 64
batch_size = 32
max_iters = 1500
learning_rate = 2e-3
eval_interval = 250
