# payoff.py's stronger teacher: config/concepts_teacher.py 1.5x deeper and wider, trained 5x as long (12.3M
# tokens, within payoff.py's world without repeating a story).
out_dir = "out_payoff/concepts_teacher_strong/teacher"
dataset = "concepts"
n_layer = 6
n_head = 6
n_embd = 192
block_size = 64
batch_size = 32
learning_rate = 2e-3
max_iters = 6000
eval_interval = 500
