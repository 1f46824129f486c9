"""
Sample from a trained model (a train.py checkpoint) or from GPT-2; read and steer a CoCoMix model's concepts.

    python sample.py --out_dir=out/compare/ntp_s1 --start="the ship" --num_samples=3
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt     # needs transformers and the network
CoCoMix (concept descriptions come from `python concepts.py`):
    python sample.py --out_dir=out/compare/cocomix_s1 --show_concepts       # the concepts predicted at each token
    python sample.py --out_dir=out/compare/cocomix_s1 --steer=topic=sea:-10 --force --compare_teacher
"""
import os

import torch

from configurator import autocast_for, check, configure, resolve_device
from concepts import concepts_file, load_descriptions, planted_latents
from model import GPT, generate
from prepare import get_tokenizer
from steer import parse_steer, steer_vector, teacher_and_sae, teacher_sae_logits
from teacher import load_teacher

# -----------------------------------------------------------------------------
init_from = "resume"        # "resume" (the checkpoint in out_dir) or a GPT-2 name like "gpt2"
out_dir = "out/compare/cocomix_s1"
start = ""                  # the prompt, or "FILE:path" to read it from a file; "" starts a new document
num_samples = 3
max_new_tokens = 100        # 0 prints the prompt (with --show_concepts: the concepts predicted on it)
temperature = 0.8           # 0: greedy decoding (the most likely token each time)
top_k = 200                 # sample among the top_k most likely tokens; 0: among all
seed = 1337
# CoCoMix only
show_concepts = False       # print each sampled token with the concepts the model predicts there
steer = ""                  # "ID:SCALE[,ID:SCALE]", ID a latent or a planted concept (topic=sea): scale these
                            # concepts' logits before the TopK (paper: [-10, 10])
force = False               # keep the steered concepts among the TopK whatever their scaled logits
compare_teacher = False     # also sample the teacher, steered through the same SAE latents (the paper's Fig. 5)
concepts_path = ""          # "": concepts.json next to the model's SAE
device = "auto"
dtype = "auto"
# -----------------------------------------------------------------------------


def concept_lines(model, y, decode, descriptions, steer=None, force=False, n=3):
    """One line per token of y (T,): the token, then the n concepts with the largest (steered) predicted logits
    there, which shape the prediction of the next token."""
    z = model(y[None, -model.config.block_size:], steer=steer, force=force)[1][0]
    vals, ids = z.topk(n, dim=-1)
    show = lambda j, v: f"{j} {descriptions[j]} ({v:.1f})" if j in descriptions else f"{j} ({v:.1f})"  # noqa: E731
    return [f"  {decode([t]).strip()!r:>14} -> " + ", ".join(show(j, v) for j, v in zip(js, vs))
            for t, js, vs in zip(y[-z.size(0):].tolist(), ids.tolist(), vals.tolist())]


def concept_tools(model, record, dev):
    """What --steer, --show_concepts and --compare_teacher need of a CoCoMix model (its checkpoint's record
    names the SAE it learned): the steering vector, the concept descriptions, and (a logits function of the
    steering vector, block size) for its teacher + SAE. Raises ValueError for a model without concepts, a bad
    --steer, or an SAE that cannot be read or no longer fits the model."""
    if not model.config.n_concepts:
        raise ValueError("--show_concepts, --steer and --compare_teacher need a CoCoMix model "
                         "(train.py --mode=cocomix); this one predicts no concepts")
    sae_path = record["config"]["sae_path"]
    planted = planted_latents(concepts_path or concepts_file(sae_path)) if "=" in steer else None  # names, as topic=sea
    steer_vec = steer_vector(parse_steer(steer, model.config.n_concepts, planted), model.config.n_concepts, dev)
    descriptions, teacher = {}, None
    if show_concepts:
        descriptions = load_descriptions(concepts_path or concepts_file(sae_path))
    if compare_teacher:
        sae, t, layer = teacher_and_sae(sae_path, record["meta"], model.config.n_concepts, dev)
        teacher = (lambda s: teacher_sae_logits(t, sae, layer, s, force), t.config.block_size)
    return steer_vec, descriptions, teacher


def check_settings():
    """Refuse settings that cannot sample, before any model is loaded."""
    if init_from != "resume" and not init_from.startswith("gpt2"):
        raise SystemExit(f"error: unknown init_from={init_from!r}: use 'resume' (the checkpoint in out_dir) or a "
                         "GPT-2 name like 'gpt2'")
    check(globals(), at_least=dict(num_samples=1, max_new_tokens=0, temperature=0, top_k=0))


def read_prompt(start):
    """The prompt: start itself, or the text of the file it names as FILE:path."""
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "not found"
        raise SystemExit(f"error: prompt file {path!r} {what}: --start=FILE:path reads the prompt from a file")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise SystemExit(f"error: prompt file {path} is not UTF-8 text: save it as UTF-8") from None


def main():
    check_settings()
    prompt = read_prompt(start)
    dev = resolve_device(device)
    _, autocast = autocast_for(dev, dtype)
    torch.manual_seed(seed)
    try:  # GPT-2 comes through load_teacher, which explains a missing transformers or network in one line
        model, record = GPT.from_checkpoint(out_dir) if init_from == "resume" else load_teacher(init_from, dev)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    meta = record["meta"]
    model.eval().to(dev)
    encode, decode = get_tokenizer(meta)

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
    models = {"model": (lambda s: (lambda idx: model(idx, steer=s, force=force)[0]), model.config.block_size)}
    steer_vec, descriptions = None, {}
    if show_concepts or steer or compare_teacher:
        try:
            steer_vec, descriptions, teacher = concept_tools(model, record, dev)
        except ValueError as e:
            raise SystemExit(f"error: {e}")
        if teacher:
            models["teacher + SAE"] = teacher
    with autocast:
        for name, (make_logits_fn, block_size) in models.items():
            if len(models) > 1 or steer:
                scaled = [(j, steer_vec[j].item()) for j in (steer_vec != 1).nonzero().flatten().tolist()] if steer else []
                print(f"=== {name}" + (f", steered {steer} (" + ", ".join(f"latent {j} x {s:g}" for j, s in scaled)
                                       + ")" if steer else ""))
            torch.manual_seed(seed)
            for _ in range(num_samples):
                y = generate(make_logits_fn(steer_vec), x, max_new_tokens, block_size, temperature, top_k,
                             meta.get("vocab_size"))
                print(decode(y[0].tolist()))
                if show_concepts and name == "model":
                    print("\n".join(concept_lines(model, y[0], decode, descriptions, steer_vec, force)))
                print("---------------")


if __name__ == "__main__":
    configure(globals())
    main()
