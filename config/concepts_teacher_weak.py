# payoff.py's weaker teacher: config/concepts_teacher.py at half the width and depth, trained a third as long.
out_dir = "out_payoff/concepts_teacher_weak/teacher"
dataset = "concepts"
n_layer = 2
n_head = 4
n_embd = 64
block_size = 64
batch_size = 32
learning_rate = 3e-3
max_iters = 400
eval_interval = 100
