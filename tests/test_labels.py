import json

import numpy as np
import torch

from conftest import run_script
from labels import NONE, as_labels, cache_dir, cache_key, load_labels
from prepare import load_meta
from sae import load_concept_extractor


def test_cached_labels_equal_online_labels_and_train_py_uses_them_only_when_they_match(tiny_run, tmp_path):
    root, _, _ = tiny_run
    sae, data_root = str(root / "out" / "sae" / "sae.pt"), str(root / "data")
    p = run_script("labels.py", f"--sae_path={sae}", f"--data_root={data_root}", "--block_size=16", "--batch_size=7")
    assert "8 bytes per token" in p.stdout
    directory = cache_dir(sae, "concepts", "attribution", 4, 16)
    extractor = load_concept_extractor(sae, "cpu")
    meta = load_meta(f"{data_root}/concepts")
    cache = load_labels(directory, cache_key(extractor, meta, 16))
    val = np.memmap(f"{data_root}/concepts/val.bin", dtype=np.uint16, mode="r")
    assert cache["val"].shape == ((len(val) - 1) // 16, 16, 4)
    for split, windows in (("val", range(len(cache["val"]))), ("train", [0, 5, len(cache["train"]) - 1])):
        data = np.memmap(f"{data_root}/concepts/{split}.bin", dtype=np.uint16, mode="r")
        idx = torch.from_numpy(np.stack([data[16 * w:16 * w + 16] for w in windows]).astype(np.int64))
        assert torch.equal(as_labels(cache[split][list(windows)]), extractor(idx))
    assert (cache["val"][:, -1] == NONE).all()  # the window's last token: no label

    student = ["train.py", str(root / "cocomix.py"), f"--sae_path={sae}", f"--data_root={data_root}",
               "--max_iters=4", "--eval_interval=2"]
    run_script(*student, "--cached_labels", f"--out_dir={tmp_path / 'cached'}")
    rows = [json.loads(r) for r in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iter"] == 4 and 0 < rows[-1]["val_concept_acc"] <= 1
    p = run_script(*student, "--cached_labels", "--k_attr=3", f"--out_dir={tmp_path / 'other'}", check=False)
    assert p.returncode == 1 and "no cached labels at" in p.stdout.splitlines()[-1]
    stored = json.loads(open(f"{directory}/labels.json").read())
    stored["key"]["sae"] = "0" * 16  # as if the SAE were retrained since
    open(f"{directory}/labels.json", "w").write(json.dumps(stored))
    p = run_script(*student, "--cached_labels", f"--out_dir={tmp_path / 'stale'}", check=False)
    assert p.returncode == 1 and "were made with another sae" in p.stdout.splitlines()[-1]
    assert not (tmp_path / "stale").exists() and not (tmp_path / "other").exists()  # refused before writing
