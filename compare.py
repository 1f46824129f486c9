"""
Compare training runs by their metrics logs: validation loss against tokens seen, one curve per method
(mean over seeds, with a band of +-1 std), a markdown table, and the tokens CoCoMix needs to reach NTP's
final validation loss (the paper's sample-efficiency number).

    python compare.py out/compare        # runs named <method>_s<seed> inside, e.g. ntp_s1, cocomix_s1
"""
import json
import os
import sys
from collections import defaultdict

import numpy as np


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} not found: is {run_dir} a train.py out_dir?")
    with open(path) as f:
        return [json.loads(line) for line in f]


def group_runs(root):
    """{method: [metrics rows of each seed]} for the run directories <method>_s<seed> under root."""
    groups = defaultdict(list)
    for name in sorted(os.listdir(root)):
        method, sep, seed = name.rpartition("_s")
        if sep and seed.isdigit() and os.path.exists(os.path.join(root, name, "metrics.jsonl")):
            groups[method].append(read_metrics(os.path.join(root, name)))
    if not groups:
        raise SystemExit(f"error: no runs named <method>_s<seed> with a metrics.jsonl under {root}")
    return dict(groups)


def curve(runs, key="val_loss"):
    """(tokens, mean, std) over seeds, on the evaluation points all seeds share."""
    n = min(len(r) for r in runs)
    tokens = np.array([row["tokens"] for row in runs[0][:n]], dtype=float)
    values = np.array([[row[key] for row in r[:n]] for r in runs])
    return tokens, values.mean(0), values.std(0)


def tokens_to_reach(tokens, losses, target):
    """First number of tokens at which the (linearly interpolated) loss curve reaches target, else None."""
    below = np.nonzero(losses <= target)[0]
    if len(below) == 0:
        return None
    i = below[0]
    if i == 0:
        return float(tokens[0])
    t0, t1, l0, l1 = tokens[i - 1], tokens[i], losses[i - 1], losses[i]
    return float(t0 + (t1 - t0) * (l0 - target) / (l0 - l1))


def summarize(groups, baseline="ntp"):
    """Rows of (method, seeds, final val loss mean, std, tokens to reach the baseline's final loss)."""
    target = curve(groups[baseline])[1][-1] if baseline in groups else None
    rows = []
    for method, runs in groups.items():
        tokens, mean, std = curve(runs)
        reach = tokens_to_reach(tokens, mean, target) if target is not None else None
        rows.append({"method": method, "seeds": len(runs), "tokens": tokens[-1], "val_loss": mean[-1],
                     "val_loss_std": std[-1], "tokens_to_baseline": reach})
    return rows


def markdown_table(rows, baseline="ntp"):
    lines = [f"| method | seeds | tokens | final val loss | tokens to reach {baseline}'s final val loss |",
             "|---|---|---|---|---|"]
    for r in rows:
        reach = "not reached" if r["tokens_to_baseline"] is None else \
            f"{r['tokens_to_baseline'] / 1e6:.2f}M ({1 - r['tokens_to_baseline'] / r['tokens']:.1%} fewer)"
        lines.append(f"| {r['method']} | {r['seeds']} | {r['tokens'] / 1e6:.2f}M | "
                     f"{r['val_loss']:.4f} ± {r['val_loss_std']:.4f} | {reach} |")
    return "\n".join(lines)


def plot_curves(groups, ax, key="val_loss"):
    """One curve per method of a metric against tokens: the mean over seeds with a band of +-1 std."""
    for method, runs in groups.items():
        if key not in runs[0][-1]:
            continue
        tokens, mean, std = curve(runs, key)
        keep = tokens > 0  # the untrained model's loss at 0 tokens squashes the interesting part
        ax.plot(tokens[keep] / 1e6, mean[keep], label=f"{method} ({len(runs)} seed{'s' * (len(runs) > 1)})")
        ax.fill_between(tokens[keep] / 1e6, (mean - std)[keep], (mean + std)[keep], alpha=0.25)
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel(key.replace("_", " "))
    ax.legend()
    ax.grid(alpha=0.3)


def plot_tokens_needed(groups, ax, baseline="ntp"):
    """Sample efficiency: for each validation loss the baseline passes on its way down, the tokens each method
    needs to reach it, relative to the baseline's (below 1: fewer tokens; a missing point: never reached)."""
    base_tokens, base_loss, _ = curve(groups[baseline])
    targets = np.linspace(base_loss[1], base_loss[-1], 40)  # from the first evaluation after 0 tokens
    base_reach = np.array([tokens_to_reach(base_tokens, base_loss, t) for t in targets])
    for method, runs in groups.items():
        tokens, loss, _ = curve(runs)
        ratio = np.array([tokens_to_reach(tokens, loss, t) or np.nan for t in targets]) / base_reach
        ax.plot(targets, ratio, label=method)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.invert_xaxis()  # training goes left to right
    ax.set_xlabel(f"validation loss reached ({baseline}'s curve)")
    ax.set_ylabel(f"tokens needed / {baseline}'s")
    ax.legend()
    ax.grid(alpha=0.3)


def plot(groups, path, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_curves(groups, ax)
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=120)
    os.replace(path + ".tmp.png", path)
    plt.close(fig)


def main(root):
    groups = group_runs(root)
    table = markdown_table(summarize(groups))
    with open(os.path.join(root, "compare.md"), "w") as f:
        f.write(table + "\n")
    plot(groups, os.path.join(root, "compare.png"), title=os.path.basename(os.path.normpath(root)))
    print(table)
    print(f"wrote {root}/compare.md and {root}/compare.png")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python compare.py RUNS_DIR   (runs named <method>_s<seed> inside)")
    main(sys.argv[1])
