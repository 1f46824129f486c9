"""
CoCoMix's concept labels computed once: the teacher + SAE labels (sae.ConceptExtractor) of every window of a
dataset on a fixed grid, in a uint16 memmap with a fingerprint of everything they depend on. train.py
--cached_labels reads them instead of running the teacher at every step.

    python labels.py                                     # out/sae/sae.pt's labels of data/concepts, windows of 64
    python labels.py --sae_path=out/sae_gpt2/sae.pt --dataset=openwebtext --block_size=1024 --device=cuda

Windows start at multiples of block_size, and train.py --cached_labels draws whole grid windows; the official
code (and train.py without the cache) draws windows at any offset, so the teacher sees each token in many
contexts. A label is a latent id, NONE (65535) for no label (-1: no latent scores above 0, see
ConceptExtractor.labels), so the SAE may have up to 65,535 latents. k_attr labels take 2 * k_attr bytes per
token: 8 for the paper's k_attr = 4.
Writes <the SAE's directory>/labels/<dataset>_<concept_method>_k<k_attr>_T<block_size>/{train,val}.bin and
labels.json (the fingerprint, and the shape of each split).
"""
import json
import os
import time

import numpy as np
import torch

from checkpoint import replacing, write_json
from configurator import check, configure, resolve_device
from prepare import check_splits, fingerprint, load_meta
from sae import load_concept_extractor
from teacher import weights_hash

# -----------------------------------------------------------------------------
sae_path = "out/sae/sae.pt"
dataset = "concepts"
data_root = "data"
block_size = 64             # the student's window (train.py's block_size)
concept_method = "attribution"
k_attr = 4
batch_size = 64             # windows per teacher pass
device = "auto"
# -----------------------------------------------------------------------------

NONE = np.uint16(np.iinfo(np.uint16).max)  # no label (a numpy scalar: not a config key)


def cache_dir(sae_path, dataset, method, k_attr, block_size):
    """Where the labels of these settings live: next to the SAE they come from."""
    root = os.path.dirname(sae_path) if sae_path.endswith(".pt") else sae_path
    return os.path.join(root, "labels", f"{dataset}_{method}_k{k_attr}_T{block_size}")


def cache_key(extractor, meta, block_size):
    """Everything the labels depend on: the teacher's and the SAE's weights, the dataset (the fingerprint of its
    meta.json), the window length and the labelling rule."""
    return {"teacher": weights_hash(extractor.teacher), "sae": weights_hash(extractor.sae), "data": fingerprint(meta),
            "block_size": block_size, "method": extractor.method, "k_attr": extractor.k_attr}


def n_windows(n_tokens, block_size):
    """Grid windows of a split: each needs its block_size tokens and the next one (its last target)."""
    return (n_tokens - 1) // block_size


def load_labels(directory, key):
    """{split: (n_windows, block_size, k_attr) uint16 memmap} of the cache in directory. Raises ValueError if it
    is missing, incomplete or made with other settings or inputs (saying which)."""
    path = os.path.join(directory, "labels.json")
    if not os.path.isfile(path):
        raise ValueError(f"no cached labels at {directory}: make them with python labels.py (with the same "
                         "sae_path, dataset, block_size, concept_method and k_attr), or train without --cached_labels")
    with open(path) as f:
        stored = json.load(f)
    changed = [k for k in key if stored["key"].get(k) != key[k]]
    if changed:
        raise ValueError(f"the cached labels at {directory} were made with another {', '.join(changed)}: make them "
                         "again with python labels.py, or train without --cached_labels")
    return {split: np.memmap(os.path.join(directory, f"{split}.bin"), dtype=np.uint16, mode="r",
                             shape=tuple(shape)) for split, shape in stored["shapes"].items()}


def as_labels(cached):
    """Cached labels (uint16 array, NONE for none) as ConceptExtractor's (int64 tensor, -1 for none)."""
    labels = torch.from_numpy(cached.astype(np.int64))
    return labels.masked_fill_(labels == NONE, -1)


def write_split(extractor, data_path, out_path, block_size, device):
    """Label every grid window of one split into out_path, whole or not at all; a progress line every ~10 s."""
    data = np.memmap(data_path, dtype=np.uint16, mode="r")
    n = n_windows(len(data), block_size)
    t0 = last = time.time()
    with replacing(out_path) as tmp:
        out = np.memmap(tmp, dtype=np.uint16, mode="w+", shape=(n, block_size, extractor.k_attr))
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            idx = torch.from_numpy(data[start * block_size:stop * block_size].astype(np.int64))
            labels = extractor(idx.view(stop - start, block_size).to(device)).cpu()
            out[start:stop] = labels.masked_fill(labels < 0, int(NONE)).numpy().astype(np.uint16)
            if time.time() - last > 10:
                last = time.time()
                print(f"  {os.path.basename(data_path)}: {stop:,}/{n:,} windows, "
                      f"{stop * block_size / (last - t0):,.0f} tokens/s", flush=True)
        out.flush()
        del out
    return n


def main():
    check(globals(), at_least=dict(block_size=1, k_attr=1, batch_size=1))
    dev = resolve_device(device)
    data_dir = os.path.join(data_root, dataset)
    check_splits(data_dir, block_size)
    meta = load_meta(data_dir)
    try:
        extractor = load_concept_extractor(sae_path, dev, k_attr=k_attr, method=concept_method)
        extractor.check_data(meta, dataset)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if extractor.n_concepts > NONE:
        raise SystemExit(f"error: the SAE has {extractor.n_concepts} latents, more than the {NONE} a uint16 label "
                         "cache holds: label online (train.py without --cached_labels)")
    if block_size > extractor.teacher.config.block_size:
        raise SystemExit(f"error: block_size={block_size} exceeds the teacher's {extractor.teacher.config.block_size}")
    out = cache_dir(sae_path, dataset, concept_method, k_attr, block_size)
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, "labels.json")):  # first: an old key must never vouch for new files
        os.remove(os.path.join(out, "labels.json"))
    key, shapes = cache_key(extractor, meta, block_size), {}
    for split in ("train", "val"):
        t0 = time.time()
        n = write_split(extractor, os.path.join(data_dir, f"{split}.bin"), os.path.join(out, f"{split}.bin"),
                        block_size, dev)
        shapes[split] = [n, block_size, k_attr]
        print(f"{split}: {n:,} windows of {block_size} tokens labelled in {time.time() - t0:.0f}s")
    write_json({"key": key, "shapes": shapes}, os.path.join(out, "labels.json"))  # last: the cache is now whole
    print(f"wrote {out}: {2 * k_attr} bytes per token")


if __name__ == "__main__":
    configure(globals())
    main()
