"""
Steering concepts, and a measure of it on the embedded default (the paper shows steering only by examples,
Section 3.5 and its Fig. 5; here it gets a number).

CoCoMix is steered by scaling a concept's predicted logit z_t before the TopK that feeds the compressor. The
teacher is steered the same way through its SAE: the latent's pre-activation is scaled before the SAE's TopK,
and the change in the reconstruction is added to the teacher's hidden state (its reconstruction error is kept).
With force=True a steered concept is always among the K, whatever its scaled value.

The metric: for each planted concept, steer the latent that detects it best (concepts.json) and sample new
stories. A story expresses the concept when, of the words its factor chose, most belong to the concept (most
of the topic words are sea words, say). Success rate = the fraction of stories that do; unsteered stories
give the base rate.

    python steer.py                                   # out/compare/cocomix_s1 and its teacher + SAE
    python steer.py --out_dir=out/compare/cocomix_s2 --scales=-10,2,5,10 --force=False
"""
import json
import math
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

from checkpoint import replacing, write_json
from concepts import concepts_file
from configurator import check, configure, resolve_device
from model import GPT, generate, steered_topk
from sae import load_sae_and_teacher
from teacher import tokenizer_of

# -----------------------------------------------------------------------------
out_dir = "out/compare/cocomix_s1"   # a CoCoMix student (train.py --mode=cocomix) on a concept world
concepts_path = ""          # "": concepts.json next to the student's SAE (python concepts.py)
scales = "-10,2,5,10"       # steering scales besides 1 (unsteered), in the paper's range [-10, 10]
force = True                # keep the steered concept among the TopK
n_samples = 8               # stories per concept, scale and model
max_new_tokens = 32
temperature = 1.0           # 0: greedy decoding
seed = 1337
device = "auto"
# -----------------------------------------------------------------------------


def parse_steer(spec, n_concepts, planted=None):
    """{concept id: scale} from "ID:SCALE[,ID:SCALE...]"; ID is a latent id, or the name of a planted concept
    (like topic=sea) given planted, {name: its best latent} (concepts.planted_latents). A ValueError that says
    what is wrong otherwise."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        m = re.fullmatch(r"(\d+|\w+=\w+):([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)", item)
        if not m:
            raise ValueError(f"bad steering spec {item!r}: write ID:SCALE, e.g. --steer=521:10 or --steer=521:10,38:-5, "
                             "or name a planted concept, e.g. --steer=topic=sea:-10")
        concept, scale = m.group(1), float(m.group(2))
        if "=" in concept:
            if not planted or concept not in planted:
                known = ", ".join(sorted(planted or {})) or "none: this SAE's concepts.json names no planted concepts"
                raise ValueError(f"no planted concept {concept!r} (python concepts.py lists them; known: {known})")
            concept = planted[concept]
        concept = int(concept)
        if concept >= n_concepts:
            raise ValueError(f"concept {concept} does not exist: the model has concepts 0..{n_concepts - 1}")
        out[concept] = scale
    return out


def steer_vector(scale_of, n_concepts, device="cpu"):
    """(C,) multipliers: scale_of[j] for the steered concepts, 1 elsewhere."""
    steer = torch.ones(n_concepts, device=device)
    for j, s in scale_of.items():
        steer[j] = s
    return steer


def steered_sae_hidden(sae, h, steer=None, force=False):
    """h with the SAE's latents steered: h + decode(steered latents) - decode(latents), in h's space."""
    if steer is None:
        return h
    z = sae.encode(h.float())
    _, s_vals, s_idx = steered_topk(z.pre, sae.k, steer, force)
    delta = sae.decode(F.relu(s_vals), s_idx) - sae.decode(z.vals, z.idx)
    return h + (delta * z.std).to(h.dtype)


def teacher_sae_logits(teacher, sae, layer, steer=None, force=False):
    """A logits function (for model.generate) of the teacher steered through its SAE at `layer`."""
    return lambda idx: teacher.logits_from(steered_sae_hidden(sae, teacher.hidden(idx, layer), steer, force), layer)


def parse_scales(spec):
    """[scale, ...] from "-10,2,5,10"; a ValueError that says what is wrong otherwise."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            scale = float(item)
        except ValueError:
            scale = math.nan
        if not math.isfinite(scale):
            raise ValueError(f"bad steering scale {item!r} in --scales={spec}: write numbers separated by commas, "
                             "e.g. --scales=-10,2,5,10")
        out.append(scale)
    return out


def teacher_and_sae(sae_path, meta, n_concepts, device):
    """(SAE, teacher, layer) that a CoCoMix student (the meta of its data, its n_concepts) learned its concepts
    from. Raises ValueError if the SAE cannot be read or no longer fits the student: another number of latents,
    or a teacher that reads other tokens (either was replaced after the student was trained), or if the teacher
    was retrained after the SAE (sae.load_sae_and_teacher)."""
    sae, ckpt, teacher, record = load_sae_and_teacher(sae_path, device)
    if sae.n_latents != n_concepts:
        raise ValueError(f"{sae_path} has {sae.n_latents} latents but the student predicts {n_concepts} concepts: "
                         "the SAE was replaced after the student was trained; retrain the student on it")
    if tokenizer_of(record["meta"]) != tokenizer_of(meta):
        raise ValueError(f"the teacher of {sae_path} ({ckpt['teacher_path']}) reads {record['meta']['dataset']}'s "
                         f"tokens, not those of the student's {meta['dataset']}: it was replaced after the student "
                         "was trained; retrain the SAE and the student on it")
    return sae, teacher, ckpt["layer"]


def load_concepts(path, n_latents):
    """concepts.json (python concepts.py) of an SAE of n_latents latents on a concept world."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: describe the SAE's concepts first with `python concepts.py "
                         f"--sae_path={os.path.join(os.path.dirname(path), 'sae.pt')}`")
    try:
        with open(path, encoding="utf-8") as f:
            concepts = json.load(f)
        described, planted = len(concepts["latents"]), concepts["planted"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is damaged or not a concepts.json ({type(e).__name__}: {e}): "
                         "describe the SAE again with python concepts.py") from None
    if described != n_latents:
        raise ValueError(f"{path} describes {described} latents but the SAE has {n_latents}: it describes "
                         "another SAE; describe this one with python concepts.py")
    if not planted:
        raise ValueError(f"{path} names no planted concepts: its SAE was described on data without any "
                         "(the steering metric needs the concept world)")
    return concepts


def expresses(stories, concept_ids, factor_ids):
    """(n_stories,) bool: of the generated words belonging to a factor, most belong to the concept."""
    in_concept = torch.isin(stories, concept_ids).sum(-1)
    in_factor = torch.isin(stories, factor_ids).sum(-1)
    return in_concept * 2 > in_factor


def steering_success(logits_fns, planted, meta, scales, n_samples, max_new_tokens, block_size, n_concepts,
                     temperature, force, seed, device):
    """{model name: {scale: [success rate per planted concept]}}; scale 1 is the unsteered base rate. All
    concepts are steered at once: one batch row per (concept, sample), each with its own steering vector."""
    stoi = {w: i for i, w in enumerate(meta["itos"])}
    ids = lambda words: torch.tensor([stoi[w] for w in words], device=device)  # noqa: E731
    factor_ids = {f: ids([w for c in meta["concepts"] if c["factor"] == f for w in c["words"]])
                  for f in {c["factor"] for c in meta["concepts"]}}
    concept = {c["name"]: c for c in meta["concepts"]}
    targets = [(ids(concept[p["name"]]["words"]), factor_ids[concept[p["name"]]["factor"]]) for p in planted]
    rows = torch.arange(len(planted), device=device).repeat_interleave(n_samples)
    results, t0, done, total = {}, time.time(), 0, len(logits_fns) * (1 + len(scales))
    for name, make_logits_fn in logits_fns.items():
        results[name] = {}
        for scale in [1.0, *scales]:
            steer = torch.ones(len(planted), n_concepts, device=device)
            steer[torch.arange(len(planted)), [c["latent"] for c in planted]] = scale
            torch.manual_seed(seed)  # every model and scale samples with the same noise
            start = torch.full((len(rows), 1), meta["eot_token"], device=device)
            stories = generate(make_logits_fn(steer[rows][:, None], force), start, max_new_tokens, block_size,
                               temperature, vocab_size=len(meta["itos"]))[:, 1:]
            results[name][scale] = [expresses(stories[rows == i], *t).float().mean().item()
                                    for i, t in enumerate(targets)]
            done += 1  # a progress line per model and scale: the whole metric takes a minute or more on a CPU
            print(f"  {name}, scale {scale:g}: {np.mean(results[name][scale]):.3f} of the stories express the steered "
                  f"concept ({done}/{total}, {time.time() - t0:.0f}s)", flush=True)
    return results


COLORS = {"CoCoMix": "C1", "teacher + SAE": "C7"}  # compare.COLORS' cocomix and teacher (compare sits above us)


def plot(results, planted, ax):
    """Success rate (mean over the planted concepts) against the steering scale, one line per model."""
    for name, by_scale in results.items():
        s = sorted(by_scale)
        ax.plot(s, [np.mean(by_scale[x]) for x in s], marker="o", color=COLORS.get(name), label=name)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("steering scale (1 = unsteered)")
    ax.set_ylabel(f"stories expressing the steered concept\n(mean over {len(planted)} planted concepts)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(alpha=0.3)


def check_settings():
    """Refuse settings the metric cannot run with, before any model is loaded."""
    check(globals(), at_least=dict(n_samples=1, max_new_tokens=1, temperature=0))
    return parse_scales(scales)


def main():
    scale_list = check_settings()
    dev = resolve_device(device)
    student, record = GPT.from_checkpoint(out_dir, dev)
    if not student.config.n_concepts:
        raise ValueError(f"{out_dir} is not a CoCoMix model (it predicts no concepts): steer a --mode=cocomix run")
    student.eval()
    meta, sae_path = record["meta"], record["config"]["sae_path"]
    if "concepts" not in meta:
        raise ValueError(f"{out_dir} was not trained on a concept world: the steering metric needs planted concepts")
    sae, teacher, layer = teacher_and_sae(sae_path, meta, student.config.n_concepts, dev)
    concepts = load_concepts(concepts_path or concepts_file(sae_path), sae.n_latents)
    planted = concepts["planted"]
    logits_fns = {"CoCoMix": lambda steer, f: (lambda idx: student(idx, steer=steer, force=f)[0]),
                  "teacher + SAE": lambda steer, f: teacher_sae_logits(teacher, sae, layer, steer, f)}
    block_size = min(student.config.block_size, teacher.config.block_size)
    results = steering_success(logits_fns, planted, meta, scale_list, n_samples, max_new_tokens, block_size,
                               sae.n_latents, temperature, force, seed, dev)
    print(f"stories expressing the steered concept, mean over {len(planted)} planted concepts "
          f"({n_samples} stories each, force={force}):")
    print("scale          " + "".join(f"{name:>16}" for name in results))
    for scale in sorted(results["CoCoMix"]):
        print(f"{scale:<15g}" + "".join(f"{np.mean(r[scale]):>16.3f}" for r in results.values()))
    out = {"out_dir": out_dir, "force": force, "n_samples": n_samples, "max_new_tokens": max_new_tokens,
           "temperature": temperature, "planted": planted,
           "results": {name: {str(k): v for k, v in r.items()} for name, r in results.items()}}
    write_json(out, os.path.join(out_dir, "steering.json"))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    plot(results, planted, ax)
    fig.tight_layout()
    with replacing(os.path.join(out_dir, "steering.png")) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    print(f"wrote {out_dir}/steering.json and steering.png")


if __name__ == "__main__":
    configure(globals())
    try:
        main()
    except ValueError as e:
        raise SystemExit(f"error: {e}")
