# The concept teacher for the embedded default, in the role GPT-2 124M plays in the paper: a plain GPT trained
# by next-token prediction on the synthetic concept world, deeper and trained longer than the student default
# (2 layers, 1000 iterations). sae.py reads its checkpoint from out_dir. About 2.5 minutes on 2 CPU cores:
#   python prepare.py && python train.py config/concepts_teacher.py && python sae.py
out_dir = "out/teacher"
dataset = "concepts"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
batch_size = 32
learning_rate = 3e-3
max_iters = 1200
eval_interval = 200
