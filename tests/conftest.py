import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_script(*args, check=True, env=None):
    """Run a project script as a user would; returns the CompletedProcess (stdout+stderr in .stdout)."""
    cmd = [sys.executable, *args]
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}")
    return p


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
