import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_script(*args, check=True, env=None, cwd=ROOT):
    """Run a project script as a user would; returns the CompletedProcess (stdout+stderr in .stdout)."""
    cmd = [sys.executable, *args]
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}")
    return p


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and do not fight other tests for the cores."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_dataset(tmp_path):
    """A learnable toy token stream (a noisy repeating pattern) in prepare.py's format: (data_root, name)."""
    rng = np.random.default_rng(0)
    d = tmp_path / "data" / "toy"
    d.mkdir(parents=True)
    for split, n in (("train", 20000), ("val", 4000)):
        pattern = np.tile(np.arange(16), n // 16)
        noise = rng.integers(0, 16, n)
        tokens = np.where(rng.random(n) < 0.1, noise, pattern).astype(np.uint16)
        tokens.tofile(d / f"{split}.bin")
    (d / "meta.json").write_text(json.dumps({"dataset": "toy", "tokenizer": "chars", "vocab_size": 16,
                                             "itos": list("abcdefghijklmnop"), "eot_token": None}))
    return str(tmp_path / "data"), "toy"


# Tiny presets for the whole pipeline on a small concept world: seconds per stage on a CPU.
TINY_TEACHER = ("n_layer, n_head, n_embd, block_size, batch_size = 2, 2, 32, 16, 8\n"
                "max_iters, eval_interval, eval_iters = 40, 20, 2\n")
TINY_SAE = ("n_latents, k, max_tokens, batch_size, buffer_tokens, eval_tokens = 64, 4, 16384, 512, 2048, 2048\n"
            "log_interval = 10\n")
TINY_STUDENT = 'n_layer, n_head, block_size, batch_size, eval_interval, eval_iters = 2, 2, 16, 8, 10, 2\n'


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The embedded default's whole job at toy size, built once by pipeline.py: teacher, SAE, an NTP and a CoCoMix
    student, their comparison, concepts.json and the steering metric. Returns (root, pipeline args, its output)."""
    root = tmp_path_factory.mktemp("run")
    data_root, out_root = root / "data", root / "out"
    run_script("prepare.py", "--n_docs=120", f"--data_root={data_root}")
    configs = {"teacher": TINY_TEACHER, "sae": TINY_SAE, "ntp": TINY_STUDENT + "n_embd = 36\n",
               "cocomix": TINY_STUDENT + 'n_embd, insert_layer, k_concepts, mode = 32, 1, 8, "cocomix"\n'}
    for name, text in configs.items():
        (root / f"{name}.py").write_text(text)
    args = ["pipeline.py", f"--data_root={data_root}", f"--out_root={out_root}", "--max_iters=20",
            "--steer_samples=2", *(f"--{name}_config={root / name}.py" for name in configs)]
    return root, args, run_script(*args).stdout
