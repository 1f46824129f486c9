"""
Describe every concept (SAE latent): the validation contexts it fires on most, the tokens there, and, on the
embedded default, the planted concept it detects best. CoCoMix students predict these same latents, so the
file describes their concepts too. sample.py --show_concepts, steer.py and the notebooks read it.

    python concepts.py                                  # out/sae/sae.pt -> out/sae/concepts.json
    python concepts.py --sae_path=out/sae_gpt2/sae.pt   # any SAE whose teacher's val split is prepared
"""
import json
import os
from collections import Counter

import numpy as np
import torch

from configurator import configure
from prepare import get_tokenizer, load_concept_labels, load_meta
from sae import concept_aurocs, evaluate, load_sae, load_teacher

# -----------------------------------------------------------------------------
sae_path = "out/sae/sae.pt"
out = ""                    # "": concepts.json next to the SAE
eval_tokens = 65536         # val tokens to read the latents on
n_contexts = 5              # top-activating contexts kept per latent
context = 8                 # tokens shown up to and including the one the latent fires on
match_auroc = 0.75          # a latent is named after a planted concept it detects with at least this AUROC
device = "auto"
# -----------------------------------------------------------------------------


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
    latent that detects each best."""
    sae, ckpt = load_sae(sae_path, device)
    teacher = load_teacher(ckpt["teacher"], device)
    data_dir = os.path.join(ckpt["data_root"], ckpt["dataset"])
    meta, val_path = load_meta(data_dir), os.path.join(data_dir, "val.bin")
    eot, (_, decode) = meta.get("eot_token"), get_tokenizer(meta)
    metrics, (vals, idx), where = evaluate(sae, teacher, ckpt["layer"], val_path, eot, ckpt["block_size"],
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
    planted = alignment = None
    if "concept_factors" in meta:
        concepts, drivers = load_concept_labels(data_dir, "val")
        a = concept_aurocs((vals, idx), sae.n_latents, concepts[where], drivers[where + 1], meta["concept_factors"])
        # where the factor chooses the next word (see concept_aurocs); nan -> 0 so that every planted concept,
        # even one that never occurs in this val sample, gets a latent to steer (concept_recovery gives None)
        a = a["driver_auroc"].nan_to_num(0.0)
        names = [f"{f['name']}={v}" for f in meta["concept_factors"] for v in f["values"]]
        words = {c["name"]: c["words"] for c in meta.get("concepts", [])}
        planted = [{"name": name, "latent": int(a[c].argmax()), "auroc": a[c].max().item(), "words": words.get(name)}
                   for c, name in enumerate(names)]
        best, concept = a.max(0)
        for lat, b, c in zip(latents, best.tolist(), concept.tolist()):
            lat["concept"], lat["concept_auroc"] = (names[c], b) if b > 0 else (None, None)
        shown = list(dict.fromkeys(c["latent"] for c in planted))  # each concept's best latent, once
        alignment = {"latents": shown, "auroc": a[:, shown].tolist()}
    for lat in latents:
        named = lat.get("concept") and lat["concept_auroc"] >= match_auroc
        lat["description"] = lat["concept"] if named else " ".join(repr(t) for t in lat["top_tokens"]) or "(dead)"
    return {"sae_path": sae_path, "teacher": ckpt["teacher"], "layer": ckpt["layer"], "dataset": ckpt["dataset"],
            "eval_tokens": metrics["eval_tokens"], "match_auroc": match_auroc, "latents": latents, "planted": planted,
            "alignment": alignment}


def load_descriptions(path):
    """{latent id: short description} from a concepts.json."""
    if not os.path.exists(path):
        raise ValueError(f"{path} not found: describe the SAE's concepts first with `python concepts.py`")
    return {lat["id"]: lat["description"] for lat in json.load(open(path))["latents"]}


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
    concept, with that concept's value under it (grey, and the first label's id: no label is named)."""
    import matplotlib.pyplot as plt
    latents = described["latents"]
    factors = list(dict.fromkeys(c["name"].split("=")[0] for c in described["planted"] or []))
    colors = dict(zip(factors, plt.cm.tab10.colors))
    for i, (w, lab) in enumerate(zip(words, labels)):
        named = [latents[j]["description"] for j in lab if "=" in latents[j]["description"]]
        factor, value = named[0].split("=") if named else (None, str(lab[0]))
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
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    path = out or os.path.join(os.path.dirname(sae_path), "concepts.json")
    result = describe(sae_path, eval_tokens, n_contexts, context, match_auroc, dev)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    named = sum(lat["concept"] == lat["description"] for lat in result["latents"] if lat.get("concept"))
    print(f"described {len(result['latents'])} latents on {result['eval_tokens']:,} val positions -> {path}")
    if result["planted"]:
        print(f"{named} latents named after a planted concept (driver AUROC >= {match_auroc}); "
              "the best latent per concept:")
        for c in result["planted"]:
            print(f"  {c['name']:<16} latent {c['latent']:>5}  AUROC {c['auroc']:.3f}")
    for lat in sorted(result["latents"], key=lambda lat: -lat["frequency"])[:5]:
        print(f"latent {lat['id']} ({lat['description']}), fires on {100 * lat['frequency']:.1f}%: "
              f"{lat['contexts'][0]['text'] if lat['contexts'] else ''}")


if __name__ == "__main__":
    configure(globals())
    try:
        main()
    except ValueError as e:
        raise SystemExit(f"error: {e}")
