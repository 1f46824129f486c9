"""
Sample from a trained model (a train.py checkpoint) or from GPT-2.

    python sample.py --out_dir=out/ntp --start="the ship" --num_samples=3
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt     # needs transformers and the network
"""
import os
from contextlib import nullcontext

import torch

from configurator import configure
from model import GPT, GPTConfig
from prepare import get_tokenizer, load_meta

# -----------------------------------------------------------------------------
init_from = "resume"        # "resume" (the checkpoint in out_dir) or a GPT-2 name like "gpt2"
out_dir = "out/ntp"
start = ""                  # the prompt, or "FILE:path" to read it from a file; "" starts a new document
num_samples = 3
max_new_tokens = 100
temperature = 0.8
top_k = 200
seed = 1337
device = "auto"
dtype = "auto"
# -----------------------------------------------------------------------------


def load_model(out_dir, device):
    """(model, meta) from out_dir/ckpt.pt; meta describes the dataset (and so the tokenizer) it learned."""
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.exists(ckpt_path):
        raise SystemExit(f"error: {ckpt_path} not found: train a model first (python train.py --out_dir={out_dir})")
    checkpoint = torch.load(ckpt_path, map_location=device, weights_only=False)
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    cfg = checkpoint["config"]
    return model, load_meta(os.path.join(cfg["data_root"], cfg["dataset"]))


def main():
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    dev_type = "cuda" if dev.startswith("cuda") else "cpu"
    ptdtype = {"auto": torch.bfloat16 if dev_type == "cuda" else torch.float32, "float32": torch.float32,
               "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    torch.manual_seed(seed)
    if init_from == "resume":
        model, meta = load_model(out_dir, dev)
    else:
        model, meta = GPT.from_pretrained(init_from), {"tokenizer": "gpt2", "eot_token": 50256}
    model.eval().to(dev)
    encode, decode = get_tokenizer(meta)

    prompt = open(start[5:]).read() if start.startswith("FILE:") else start
    try:
        ids = encode(prompt)
    except ValueError as e:
        raise SystemExit(f"error: the prompt does not fit the model's tokenizer: {e}")
    if not ids:  # an empty prompt starts a fresh document
        if meta.get("eot_token") is None:
            raise SystemExit("error: this dataset has no end-of-text token to start from: give --start=TEXT")
        ids = [meta["eot_token"]]
    if len(ids) > model.config.block_size:
        print(f"note: prompt of {len(ids)} tokens is cropped to the model's last {model.config.block_size}")
    x = torch.tensor(ids, dtype=torch.long, device=dev)[None, -model.config.block_size:]
    ctx = nullcontext() if ptdtype == torch.float32 else torch.autocast(dev_type, dtype=ptdtype)
    with ctx:
        for _ in range(num_samples):
            y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k)
            print(decode(y[0].tolist()))
            print("---------------")


if __name__ == "__main__":
    configure(globals())
    main()
