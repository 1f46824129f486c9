"""
Describe every concept (SAE latent): the validation contexts it fires on most, the tokens there, and, on the
embedded default, the planted concept it detects best (by AUROC), with how well the SAE recovers each planted
concept. CoCoMix students predict these same latents, so the file describes their concepts too.
sample.py --show_concepts, steer.py and the notebooks read it.

    python concepts.py                                  # out/sae/sae.pt -> out/sae/concepts.json
    python concepts.py --sae_path=out/sae_gpt2/sae.pt   # any SAE whose teacher's val split is prepared
"""
import json
import math
import os
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from checkpoint import write_json
from configurator import check, configure, resolve_device
from prepare import check_trained_on, get_tokenizer, load_meta, load_planted_concepts, load_tokens
from sae import evaluate_sae, load_sae_and_teacher
from teacher import check_vocab, tokenizer_of

# -----------------------------------------------------------------------------
sae_path = "out/sae/sae.pt"
out = ""                    # "": concepts.json next to the SAE
eval_tokens = 65536         # val tokens to read the latents on
n_contexts = 5              # top-activating contexts kept per latent
context = 8                 # tokens shown up to and including the one the latent fires on
match_auroc = 0.75          # a latent is named after a planted concept it detects with at least this AUROC
device = "auto"
# -----------------------------------------------------------------------------


# -----------------------------------------------------------------------------
# which latent detects which planted concept: AUROC by ranks

def tied_ranks(x):
    """1-based ranks down each column of x; tied values share the mean of their ranks."""
    s, order = x.sort(0)
    i = torch.arange(len(x), dtype=torch.float64)[:, None].expand(s.shape)
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[1:] = s[1:] != s[:-1]
    ends = torch.ones_like(starts)
    ends[:-1] = starts[1:]
    first = torch.where(starts, i, 0.0).cummax(0).values
    last = torch.where(ends, i, float(len(x))).flip(0).cummin(0).values.flip(0)
    return torch.empty_like(first).scatter_(0, order, (first + last) / 2 + 1)


def auroc(scores, labels):
    """AUROC of each score column (N, L) at telling each boolean label column (N, M) -> (M, L), by the
    rank-sum (Mann-Whitney) formula."""
    pos = labels.double()
    n_pos = pos.sum(0)[:, None]
    return (pos.t() @ tied_ranks(scores) - n_pos * (n_pos + 1) / 2) / (n_pos * (len(pos) - n_pos))


def dense_columns(vals, idx, lo, hi):
    """Dense (N, hi - lo) activations of latents lo..hi-1 from sparse (N, k) latents."""
    inside = (idx >= lo) & (idx < hi)
    return torch.zeros(len(vals), hi - lo).index_put_((inside.nonzero()[:, 0], idx[inside] - lo), vals[inside])


def concept_aurocs(latents, n_latents, concepts, next_drivers, factors, chunk=128):
    """AUROC of every latent at telling each planted concept (factor=value) from the factor's other values,
    as two (n_concepts, n_latents) matrices:
    "auroc" over all positions: does the position's document have this value?
    "driver_auroc" over the positions whose next word the factor chooses: h_t is what predicts x_t+1, so this
    asks for the value where the teacher needs it, and a latent for the current word cannot pass for it.
    nan where the value never occurs."""
    vals, idx = latents
    values, drivers = torch.from_numpy(concepts.astype(np.int64)), torch.from_numpy(next_drivers.astype(np.int64))
    onehots = [F.one_hot(values[:, f], len(factor["values"])) for f, factor in enumerate(factors)]
    doc, drv = [], []
    for j in range(0, n_latents, chunk):
        scores = dense_columns(vals, idx, j, min(j + chunk, n_latents))
        doc.append(auroc(scores, torch.cat(onehots, 1)))
        drv.append(torch.cat([auroc(scores[drivers == f], y[drivers == f]) for f, y in enumerate(onehots)]))
    return {"auroc": torch.cat(doc, 1), "driver_auroc": torch.cat(drv, 1)}


def best_latents(aurocs):
    """For each planted concept (row of an (n_concepts, n_latents) AUROC matrix), the latent that detects it
    best: (AUROC (n_concepts,), nan where the concept never occurs; latent id (n_concepts,), the argmax over
    the latents whose AUROC is defined, so that every concept gets one to steer)."""
    best, latent = aurocs.nan_to_num(-1.0).max(1)
    return best.masked_fill(best < 0, float("nan")), latent


def concept_recovery(aurocs, factors):
    """How well the SAE recovers the planted concepts: each one's best latent by both AUROCs of concept_aurocs,
    with their mean and min over the concepts that occur (None where a concept never occurs)."""
    out = {"concepts": [{"name": f"{factor['name']}={v}"} for factor in factors for v in factor["values"]]}
    for key, a in aurocs.items():
        best, latent = best_latents(a)
        for c, b, j in zip(out["concepts"], best.tolist(), latent.tolist()):
            c[key], c[key.replace("auroc", "latent")] = (None, None) if math.isnan(b) else (b, j)
        seen = best[~best.isnan()]
        out[f"{key}_mean"], out[f"{key}_min"] = seen.mean().item(), seen.min().item()
    return out


# -----------------------------------------------------------------------------
# the SAE and the data it is read on

def concepts_file(sae_path):
    """Where concepts.json of the SAE at sae_path (its sae.pt or its out_dir) lies: next to the sae.pt."""
    return os.path.join(sae_path if os.path.isdir(sae_path) else os.path.dirname(sae_path), "concepts.json")


def check_sae_data(ckpt, sae_path, teacher, record, data_dir):
    """Raise ValueError unless data_dir holds the dataset the SAE (its ckpt) was trained on, unchanged since; an
    SAE that records none (an OpenAI SAE saved unevaluated) needs a dataset with its teacher's tokenizer."""
    if ckpt.get("data_fingerprint"):
        return check_trained_on(ckpt, data_dir, sae_path)
    check_vocab(teacher, tokenizer_of(record["meta"]), load_meta(data_dir), ckpt["dataset"])


# -----------------------------------------------------------------------------
# describing each latent

def top_activations(vals, idx, where, n_latents, n):
    """For each latent, the val positions of its n largest activations, largest first: a list of
    (positions, activations) numpy pairs. vals, idx: sparse (N, k) latents at val positions `where` (N,)."""
    vals, idx = vals.numpy().ravel(), idx.numpy().ravel()
    pos = np.repeat(where, len(vals) // len(where))
    fired = vals > 0
    vals, idx, pos = vals[fired], idx[fired], pos[fired]
    order = np.lexsort((-vals, idx))  # by latent, then by activation, descending
    starts = np.searchsorted(idx[order], np.arange(n_latents + 1))
    return [(pos[order[a:min(a + n, b)]], vals[order[a:min(a + n, b)]]) for a, b in zip(starts[:-1], starts[1:])]


def show_context(tokens, p, decode, eot, width):
    """The `width` tokens up to and including position p, from p's document only, with p in [brackets]."""
    before = [int(t) for t in tokens[max(0, p - width + 1):p]]
    if eot is not None and eot in before:
        before = before[len(before) - before[::-1].index(eot):]
    return (decode(before) + " [" + decode([int(tokens[p])]) + "]").strip()


def describe(sae_path, eval_tokens, n_contexts, context, match_auroc, device):
    """The concepts.json content: one entry per latent, and on a concept world the planted concepts with the
    latent that detects each best, the alignment matrix and the recovery summary (concept_recovery)."""
    sae, ckpt, teacher, record = load_sae_and_teacher(sae_path, device)
    data_dir = os.path.join(ckpt["data_root"], ckpt["dataset"])
    check_sae_data(ckpt, sae_path, teacher, record, data_dir)
    meta, val_path = load_meta(data_dir), os.path.join(data_dir, "val.bin")
    n_val = len(load_tokens(data_dir, "val"))
    if min(eval_tokens, n_val - 1) < ckpt["block_size"]:  # evaluate_sae reads whole windows
        raise ValueError(f"no window of {ckpt['block_size']} tokens to read the latents on ({val_path} has {n_val} "
                         f"tokens, eval_tokens={eval_tokens}): raise --eval_tokens, or prepare more val data")
    eot, (_, decode) = meta.get("eot_token"), get_tokenizer(meta)
    metrics, (vals, idx), where = evaluate_sae(sae, teacher, ckpt["layer"], val_path, eot, ckpt["block_size"],
                                               eval_tokens, device)
    tokens = np.memmap(val_path, dtype=np.uint16, mode="r")
    counts = np.bincount(idx[vals > 0].numpy(), minlength=sae.n_latents)
    latents = []
    for j, (pos, act) in enumerate(top_activations(vals, idx, where, sae.n_latents, max(n_contexts, 20))):
        top_tokens = Counter(decode([int(tokens[p])]) for p in pos)  # over its top 20 activations
        latents.append({"id": j, "frequency": counts[j] / len(where),
                        "max_activation": float(act[0]) if len(act) else 0.0,
                        "top_tokens": [t for t, _ in top_tokens.most_common(3)],
                        "contexts": [{"text": show_context(tokens, p, decode, eot, context), "activation": float(a)}
                                     for p, a in zip(pos[:n_contexts], act[:n_contexts])]})
    planted = alignment = recovery = None
    if "concept_factors" in meta:
        concepts, drivers = load_planted_concepts(data_dir, "val")
        aurocs = concept_aurocs((vals, idx), sae.n_latents, concepts[where], drivers[where + 1],
                                meta["concept_factors"])
        recovery = concept_recovery(aurocs, meta["concept_factors"])
        a = aurocs["driver_auroc"]  # where the factor chooses the next word (see concept_aurocs)
        best, latent = best_latents(a)
        names = [c["name"] for c in recovery["concepts"]]
        words = {c["name"]: c["words"] for c in meta.get("concepts", [])}
        planted = [{"name": name, "latent": j, "auroc": None if math.isnan(b) else b, "words": words.get(name)}
                   for name, b, j in zip(names, best.tolist(), latent.tolist())]
        best_of_latent, concept = a.nan_to_num(0.0).max(0)
        for lat, b, c in zip(latents, best_of_latent.tolist(), concept.tolist()):
            lat["concept"], lat["concept_auroc"] = (names[c], b) if b > 0 else (None, None)
        shown = list(dict.fromkeys(c["latent"] for c in planted))  # each concept's best latent, once
        alignment = {"latents": shown, "auroc": a[:, shown].nan_to_num(0.0).tolist()}
    for lat in latents:
        named = lat.get("concept") and lat["concept_auroc"] >= match_auroc
        lat["description"] = lat["concept"] if named else " ".join(repr(t) for t in lat["top_tokens"]) or "(dead)"
    return {"sae_path": sae_path, "teacher_path": ckpt["teacher_path"], "layer": ckpt["layer"],
            "dataset": ckpt["dataset"], "eval_tokens": metrics["eval_tokens"], "match_auroc": match_auroc,
            "latents": latents, "planted": planted, "alignment": alignment, "recovery": recovery}


def planted_latents(path):
    """{planted concept name: the latent that detects it best} from a concepts.json ({} off the concept world)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: describe the SAE's concepts first with `python concepts.py`")
    try:
        with open(path, encoding="utf-8") as f:
            return {c["name"]: c["latent"] for c in json.load(f)["planted"] or []}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a concepts.py concepts.json ({type(e).__name__}): write it again with "
                         "python concepts.py") from None


def load_descriptions(path):
    """{latent id: short description} from a concepts.json."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: describe the SAE's concepts first with `python concepts.py`")
    try:
        with open(path, encoding="utf-8") as f:
            return {lat["id"]: lat["description"] for lat in json.load(f)["latents"]}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is damaged or not a concepts.json ({type(e).__name__}: {e}): describe the SAE "
                         "again with python concepts.py") from None


def plot_alignment(described, ax):
    """Heatmap: AUROC of each planted concept's best latent (columns) at detecting every planted concept (rows)."""
    a, names = np.array(described["alignment"]["auroc"]), [c["name"] for c in described["planted"]]
    im = ax.imshow(a, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xticks(range(a.shape[1]), described["alignment"]["latents"], fontsize=7, rotation=90)
    ax.set_xlabel("latent (the best one for some planted concept)")
    ax.figure.colorbar(im, ax=ax, label="AUROC where the factor picks the next word")


def plot_labels(words, labels, described, ax, per_line=12):
    """An example text, each token coloured by the factor of the first of its labels that is named after a planted
    concept, with that concept's value under it (grey, and the first label's id: no label is named; "-": the token
    has no label, as the window's last one)."""
    import matplotlib.pyplot as plt
    latents = described["latents"]
    factors = list(dict.fromkeys(c["name"].split("=")[0] for c in described["planted"] or []))
    colors = dict(zip(factors, plt.cm.tab10.colors))
    for i, (w, lab) in enumerate(zip(words, labels)):
        named = [latents[j]["description"] for j in lab if j >= 0 and "=" in latents[j]["description"]]
        factor, value = named[0].split("=") if named else (None, str(lab[0]) if lab[0] >= 0 else "-")
        x, y = i % per_line, -(i // per_line)
        ax.text(x, y, w, ha="center", va="center", fontsize=9,
                bbox=dict(facecolor=colors.get(factor, (0.85, 0.85, 0.85)), alpha=0.6, lw=0))
        ax.text(x, y - 0.35, value, ha="center", va="center", fontsize=6, color="0.3")
    ax.set_xlim(-0.7, per_line - 0.3)
    ax.set_ylim(-((len(words) - 1) // per_line) - 0.8, 0.6)
    ax.axis("off")
    for f, c in colors.items():
        ax.scatter([], [], color=c, alpha=0.6, marker="s", label=f)
    if colors:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0), ncol=len(colors), fontsize=8, frameon=False)


def main():
    check(globals(), at_least=dict(eval_tokens=1, n_contexts=0, context=1), between={"match_auroc": "[0, 1]"})
    dev = resolve_device(device)
    path = out or concepts_file(sae_path)
    if out and (os.path.isdir(out) or not os.path.isdir(os.path.dirname(out) or ".")):
        raise ValueError(f"cannot write --out={out}: name a file in an existing directory, e.g. "
                         f"--out={os.path.join(out if os.path.isdir(out) else '.', 'concepts.json')}")
    print(f"encoding up to {eval_tokens:,} val tokens with the teacher and {sae_path}, then scoring every latent "
          "against the planted concepts ...", flush=True)
    result = describe(sae_path, eval_tokens, n_contexts, context, match_auroc, dev)
    write_json(result, path)
    named = sum(lat["concept"] == lat["description"] for lat in result["latents"] if lat.get("concept"))
    print(f"described {len(result['latents'])} latents on {result['eval_tokens']:,} val positions -> {path}")
    if result["planted"]:
        print(f"{named} latents named after a planted concept (driver AUROC >= {match_auroc}); "
              "the best latent per concept:")
        for c in result["planted"]:
            auroc_text = "-" if c["auroc"] is None else f"{c['auroc']:.3f}"  # None: the concept is not in val
            print(f"  {c['name']:<16} latent {c['latent']:>5}  AUROC {auroc_text}")
        rec = result["recovery"]
        print(f"concept recovery, AUROC of the best single latent for each of {len(rec['concepts'])} planted "
              f"concepts: mean {rec['auroc_mean']:.3f}, min {rec['auroc_min']:.3f} over all positions; "
              f"mean {rec['driver_auroc_mean']:.3f}, min {rec['driver_auroc_min']:.3f} where the factor "
              "chooses the next word")
    for lat in sorted(result["latents"], key=lambda lat: -lat["frequency"])[:5]:
        print(f"latent {lat['id']} ({lat['description']}), fires on {100 * lat['frequency']:.1f}%: "
              f"{lat['contexts'][0]['text'] if lat['contexts'] else ''}")


if __name__ == "__main__":
    configure(globals())
    try:
        main()
    except ValueError as e:
        raise SystemExit(f"error: {e}")
