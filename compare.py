"""
Report on finished runs, in two forms.

Training runs: validation loss against tokens seen and against training FLOPs (the teacher's and the SAE's
included), one curve per method (mean over seeds, with a band of +-1 std), a markdown table, and the tokens and
FLOPs each method needs to reach NTP's final validation loss (the paper's sample-efficiency number, and its
compute counterpart). Writes compare.md and compare.png into the runs directory.

    python compare.py out/compare                # runs named <method>_s<seed> inside, e.g. ntp_s1, cocomix_s1

Evaluations: Table 1 of the paper (one row per run, perplexities and zero-shot accuracies) from eval.py's
results.json, a bar chart per task, and the runs' training curves. Writes table.md, tasks.png and curves.png
next to the results.json.

    python compare.py out/eval/results.json
"""
import json
import os
import textwrap
from collections import defaultdict

import numpy as np

from checkpoint import replacing
from configurator import configure

# -----------------------------------------------------------------------------
runs = ""                   # a runs directory (<method>_s<seed> inside) or an eval.py results.json
baseline = "ntp"            # training runs: the method whose final val loss the others race to
# -----------------------------------------------------------------------------

# Table 1's columns: (task, metric, header). Avg PPL averages the first three, Avg Acc the next five.
COLUMNS = [("val", "ppl", "Val"), ("lambada_openai", "ppl", "LAMB"), ("wikitext", "word_perplexity", "Wiki"),
           ("hellaswag", "acc_norm", "HellaS"), ("piqa", "acc", "PIQA"), ("social_iqa", "acc", "SIQA"),
           ("arc_easy", "acc", "ARC-E"), ("winogrande", "acc", "WinoG"), ("concept_probes", "acc", "Probes")]
PPL = ("ppl", "word_perplexity")  # the lower-is-better metrics among them
# One colour per method in every plot and notebook (steer.COLORS repeats cocomix and teacher for the steering
# plots, which sit below this file); other methods take matplotlib's next colour
COLORS = {"ntp": "C0", "cocomix": "C1", "kd": "C2", "pause": "C3", "kd_pause": "C4", "regress": "C5",
          "cocomix_activation": "C6", "teacher": "C7", "regress_cosine": "C8", "cocomix_prediction": "C9"}


def run_name(run_dir):
    """(method, seed) of a run directory named <method>_s<seed>, e.g. ("cocomix", 1); (its name, None) else."""
    name = os.path.basename(os.path.normpath(run_dir))
    method, sep, seed = name.rpartition("_s")
    return (method, int(seed)) if sep and method and seed.isdigit() else (name, None)


def metrics_row(line):
    """A metrics.jsonl line as a dict, or None if it is not a train.py evaluation row."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and {"tokens", "val_loss"} <= row.keys() else None


def read_metrics(run_dir):
    """The evaluation rows of a train.py out_dir; a one-line error naming the file (and the line) if they cannot
    make a curve."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found: is {run_dir} a train.py out_dir?")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            rows.append(metrics_row(line))
            if rows[-1] is None:
                raise SystemExit(f"error: {path} line {i} is not a train.py metrics row (JSON with tokens and "
                                 "val_loss): the file is damaged; resume or retrain the run to rewrite it")
    if not rows:
        raise SystemExit(f"error: {path} is empty: the run has not evaluated yet; resume it with "
                         "python train.py --init_from=resume, or move it out of the way")
    return rows

# -----------------------------------------------------------------------------
# training runs: curves, the training table, tokens to reach the baseline


def by_method(run_dirs):
    """{method: [metrics rows of each run]}: the seeds of a method (<method>_s<seed>) together, any other run
    under its own name; runs without a metrics.jsonl are left out."""
    groups = defaultdict(list)
    for run in run_dirs:
        if os.path.exists(os.path.join(run, "metrics.jsonl")):
            groups[run_name(run)[0]].append(read_metrics(run))
    return dict(groups)


def group_runs(root):
    """{method: [metrics rows of each seed]} for the run directories <method>_s<seed> under root."""
    groups = by_method([os.path.join(root, n) for n in sorted(os.listdir(root)) if run_name(n)[1] is not None])
    if not groups:
        raise SystemExit(f"error: no runs named <method>_s<seed> with a metrics.jsonl under {root}")
    return groups


def curve(runs, key="val_loss", x="tokens"):
    """(x, mean, std) over seeds, on the evaluation points all seeds share; x "tokens" or "flops" (None if a run
    predates the FLOPs count)."""
    n = min(len(r) for r in runs)
    if any(x not in row for row in runs[0][:n]):
        return None, None, None
    xs = np.array([row[x] for row in runs[0][:n]], dtype=float)
    values = np.array([[row[key] for row in r[:n]] for r in runs])
    return xs, values.mean(0), values.std(0)


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
    """Rows of (method, seeds, final val loss mean, std, and the tokens and training FLOPs to reach the
    baseline's final loss; flops None for runs that predate the FLOPs count)."""
    target = curve(groups[baseline])[1][-1] if baseline in groups else None
    rows = []
    for method, runs in groups.items():
        tokens, mean, std = curve(runs)
        flops, flops_mean, _ = curve(runs, x="flops")
        reach = tokens_to_reach(tokens, mean, target) if target is not None else None
        reach_flops = tokens_to_reach(flops, flops_mean, target) if target is not None and flops is not None else None
        rows.append({"method": method, "seeds": len(runs), "tokens": tokens[-1], "val_loss": mean[-1],
                     "val_loss_std": std[-1], "tokens_to_baseline": reach,
                     "flops": None if flops is None else flops[-1], "flops_to_baseline": reach_flops})
    return rows


def reach_cell(reach, base_total, scale, unit):
    """'0.10M (50.0% fewer)': tokens or FLOPs to reach the baseline's final loss, against what the baseline spent
    to reach it (its total)."""
    if reach is None:
        return "not reached"
    saving = 1 - reach / base_total
    return f"{reach / scale:.2f}{unit} ({abs(saving):.1%} {'fewer' if saving >= 0 else 'more'})"


def training_table(rows, baseline="ntp"):
    """summarize()'s rows as a markdown table: the mean final loss, with its std over seeds where there are two
    or more, and the tokens and FLOPs each method needs to reach the baseline's final loss ("—" for the baseline
    itself)."""
    base = next((r for r in rows if r["method"] == baseline), None)
    with_flops = all(r["flops"] is not None for r in rows)
    heads = ["method", "seeds", "tokens", "final val loss", f"tokens to reach {baseline}'s final val loss"]
    heads += ["training FLOPs (teacher and SAE included)", f"FLOPs to reach {baseline}'s final val loss"] * with_flops
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        loss = f"{r['val_loss']:.4f}" + (f" ± {r['val_loss_std']:.4f}" if r["seeds"] >= 2 else "")
        cells = [r["method"], str(r["seeds"]), f"{r['tokens'] / 1e6:.2f}M", loss]
        reach = [("tokens", 1e6, "M")] + [("flops", 1e12, "T")] * with_flops
        cells += ["—" if r is base or base is None else reach_cell(r[f"{key}_to_baseline"], base[key], scale, unit)
                  for key, scale, unit in reach]
        if with_flops:
            cells.insert(5, f"{r['flops'] / 1e12:.2f}T")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(groups, ax, key="val_loss", x="tokens"):
    """One curve per method of a metric against tokens seen or training FLOPs (x): the mean over seeds with a band
    of +-1 std. Runs that predate the FLOPs count are left out of a FLOPs plot."""
    scale, label = {"tokens": (1e6, "tokens seen (millions)"),
                    "flops": (1e12, "training FLOPs, teacher and SAE included (10^12)")}[x]
    for method, runs in groups.items():
        xs, mean, std = curve(runs, key, x)
        if key not in runs[0][-1] or xs is None:
            continue
        keep = xs > 0  # the untrained model's loss at 0 tokens squashes the interesting part
        ax.plot(xs[keep] / scale, mean[keep], color=COLORS.get(method),
                label=f"{method} ({len(runs)} seed{'s' * (len(runs) > 1)})")
        ax.fill_between(xs[keep] / scale, (mean - std)[keep], (mean + std)[keep], color=COLORS.get(method), alpha=0.25)
    ax.set_xlabel(label)
    ax.set_ylabel(key.replace("_", " "))
    ax.legend(fontsize=8)
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
        ax.plot(targets, ratio, color=COLORS.get(method), label=method)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.invert_xaxis()  # training goes left to right
    ax.set_xlabel(f"validation loss reached ({baseline}'s curve)")
    ax.set_ylabel(f"tokens needed / {baseline}'s")
    ax.legend()
    ax.grid(alpha=0.3)


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path):
    """Write the figure as a PNG, replacing path whole (a reader never sees half a PNG), and close it."""
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    pyplot().close(fig)


def plot(groups, path, title):
    """Validation loss against tokens and, where the runs count them, against training FLOPs, as one PNG."""
    with_flops = all(curve(runs, x="flops")[0] is not None for runs in groups.values())
    fig, axes = pyplot().subplots(1, 1 + with_flops, figsize=(6 * (1 + with_flops), 4), squeeze=False)
    for ax, x in zip(axes[0], ["tokens", "flops"]):
        plot_curves(groups, ax, x=x)
        ax.set_ylabel("validation loss (nats/token)")
    fig.suptitle(title)
    save(fig, path)


def describe(groups, data=None):
    """A plot title: what is compared, on which data, with how many seeds."""
    seeds = sorted({len(runs) for runs in groups.values()})
    data = data or next((r.get("dataset") for runs in groups.values() for r in runs[0] if r.get("dataset")), None)
    title = (f"{' vs '.join(groups)}: validation loss" + (f" on {data}" if data else "") +
             f", {'/'.join(map(str, seeds))} seed{'s' * (seeds != [1])} per method")
    return textwrap.fill(title, 110)  # many methods: several lines, not a title cut at the figure's edge

# -----------------------------------------------------------------------------
# evaluations: Table 1 from eval.py's results.json


def format_ppl(v):
    return f"{v:.2f}" if v < 1e5 else f"{v:.2e}"  # an untrained model's perplexity is astronomical


def format_params(n):
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e6:.3f}M"


def table1_row(name, r):
    cells = [name, r["method"], format_params(r["params"])]
    for task, metric, _ in COLUMNS:
        if task in r["tasks"]:
            v = r["tasks"][task][metric]
            cells.append(format_ppl(v) if metric in PPL else f"{100 * v:.1f}")
    ppl = [r["tasks"][t][m] for t, m, _ in COLUMNS[:3] if t in r["tasks"]]
    acc = [r["tasks"][t][m] for t, m, _ in COLUMNS[3:8] if t in r["tasks"]]
    cells += [format_ppl(np.mean(ppl))] if len(ppl) == 3 else []
    cells += [f"{100 * np.mean(acc):.1f}"] if len(acc) == 5 else []
    return "| " + " | ".join(cells) + " |"


def table1(results):
    """Table 1's layout for eval.py's results ({run name: entry}): one row per run; PPL columns lower is
    better, accuracies in percent. The columns are the tasks of the first run."""
    first = next(iter(results.values()))
    val_name = "OWT" if first["dataset"] == "openwebtext" else f"Val PPL ({first['dataset']})"
    heads = ["Run", "Method", "Params"] + [val_name if t == "val" else h for t, _, h in COLUMNS if t in first["tasks"]]
    heads += ["Avg PPL"] * all(t in first["tasks"] for t, _, _ in COLUMNS[:3])
    heads += ["Avg Acc"] * all(t in first["tasks"] for t, _, _ in COLUMNS[3:8])
    if "concept_probes" in first["tasks"]:
        heads[heads.index("Probes")] = f"Probes (chance {100 * first['tasks']['concept_probes']['chance']:.1f})"
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    return "\n".join(lines + [table1_row(name, r) for name, r in results.items()])


def plot_tasks(results, path):
    """One panel per Table 1 column, one bar per run."""
    cols = [c for c in COLUMNS if all(c[0] in r["tasks"] for r in results.values())]
    rows, per_row = -(-len(cols) // 4), min(4, len(cols))
    fig, axes = pyplot().subplots(rows, per_row, figsize=(3 * per_row, 3 * rows), squeeze=False)
    for ax in axes.flat[len(cols):]:
        ax.axis("off")
    for ax, (task, metric, head) in zip(axes.flat, cols):
        values = [r["tasks"][task][metric] for r in results.values()]
        ax.bar(range(len(results)), values, color=[f"C{i}" for i in range(len(results))])
        ax.set_xticks(range(len(results)), list(results), rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{head} {metric}" + (" (lower is better)" if metric in PPL else ""), fontsize=8)
    save(fig, path)

# -----------------------------------------------------------------------------


def compare_training(root, run_dirs=None):
    """compare.md and compare.png in root, of the runs <method>_s<seed> in it, or of run_dirs only."""
    groups = group_runs(root) if run_dirs is None else by_method(run_dirs)
    table = training_table(summarize(groups, baseline), baseline)
    with open(os.path.join(root, "compare.md"), "w") as f:
        f.write(table + "\n")
    plot(groups, os.path.join(root, "compare.png"), describe(groups))
    print(table)
    print(f"wrote {root}/compare.md and {root}/compare.png")


def read_results(path):
    """eval.py's results.json ({run name: entry}); a one-line error if it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except ValueError as e:
        raise SystemExit(f"error: {path} is not JSON ({e}): write it again with python eval.py RUN_DIR [...]")
    entry = {"run", "method", "params", "dataset", "tasks"}
    if not isinstance(results, dict) or not all(isinstance(r, dict) and entry <= r.keys() for r in results.values()):
        raise SystemExit(f"error: {path} is not an eval.py results.json (each run needs {', '.join(sorted(entry))}): "
                         "write it with python eval.py RUN_DIR [...]")
    if not results:
        raise SystemExit(f"error: {path} holds no runs: evaluate some with python eval.py RUN_DIR [RUN_DIR ...]")
    return results


def compare_evaluations(path):
    results = read_results(path)
    out = os.path.dirname(path) or "."
    table = table1(results)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    plot_tasks(results, os.path.join(out, "tasks.png"))
    groups = by_method([r["run"] for r in results.values()])  # their training curves, where the runs have them
    if groups:
        plot(groups, os.path.join(out, "curves.png"), describe(groups, next(iter(results.values()))["dataset"]))
    print(table)
    print(f"wrote {out}/table.md, tasks.png" + (", curves.png" if groups else ""))


def main(path):
    """compare_training for a runs directory, compare_evaluations for an eval.py results.json."""
    if not path:
        raise SystemExit("error: nothing to compare: python compare.py out/compare (training runs), or "
                         "python compare.py out/eval/results.json (eval.py's results)")
    if os.path.isdir(path):
        compare_training(path)
    elif path.endswith(".json") and os.path.isfile(path):
        compare_evaluations(path)
    else:
        raise SystemExit(f"error: {path!r} is neither a runs directory nor an eval.py results.json: "
                         "python compare.py out/compare, or python compare.py out/eval/results.json")


if __name__ == "__main__":
    configure(globals(), positional="runs")
    main(runs)
