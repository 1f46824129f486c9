"""
Where does CoCoMix pay off? The final val loss of CoCoMix, KD and pause tokens minus NTP's, each arm at the rate
arms.py chose for it, along three axes:
- tokens: 1x, 4x and 10x the comparison's budget (1,000 iterations of 32 x 64 tokens), on a concept world large
  enough (n_docs) that the largest budget sees no story twice;
- depth: a deeper pair (by default 8 layers, concepts at block 3: the paper's 69M proportions), activated
  parameters matched;
- teacher strength: the 4-layer pair labelled by (CoCoMix) or distilled from (KD) a weaker and a stronger teacher,
  each with its own SAE, against the teacher's advantage over the NTP student. NTP and pause use no teacher: their
  runs are the 1x runs.

    python arms.py && python payoff.py           # hours on 2 CPU cores
    python payoff.py --axes=tokens --budgets=1:1,4:1    # a part: budget:seeds pairs
    python payoff.py --report_only=True                 # the table and figure of the runs finished so far

Writes into out_root/payoff: <point>/<arm>_s<seed> (the runs; points tokens_<b>x, depth_<layers>, teacher_<config>),
payoff.md (the table and the trend of each gap against log tokens per parameter) and payoff.png (the figure).
A gap is the mean over seeds of (arm - NTP) on the same seed, +- its std across seeds (with 2 seeds or more).
Stages are stamped and skipped when done, and a stopped run resumes, as in arms.py.
"""
import json
import os
import runpy
import sys
import time

import numpy as np
import torch

from arms import ARMS, MINUTES, final_loss, run_all, run_spec
from checkpoint import replacing
from configurator import check, configure
from model import GPT, GPTConfig
from pipeline import execute, identity, read_stamp, teacher_and_sae

# -----------------------------------------------------------------------------
data_root = "data_payoff"   # its own concept world: larger than the default's 1.6M train tokens
n_docs = 110_000            # stories: about 21.6M train tokens, so the 10x budget (20.5M) repeats none
out_root = "out_payoff"
rates = "out/arms/chosen.json"  # arms.py's chosen rate of each arm
arms = "ntp,kd,pause,cocomix"
axes = "tokens,depth,teacher"
max_iters = 1000            # the 1x budget: iterations of 32 x 64 tokens
budgets = "1:3,4:3,10:1"    # tokens axis: budget (x max_iters) : seeds
n_seeds = 3                 # seeds on the depth and teacher axes, and at least that many at their 1x reference
ntp_config = "config/concepts_ntp.py"          # the 4-layer pair, as arms.py's
cocomix_config = "config/concepts_cocomix.py"
insert_layer = 2            # the pause arm's block in the 4-layer pair (CoCoMix's)
deep_ntp_config = "config/concepts_ntp_8l.py"  # the depth axis: the 8-layer pair
deep_cocomix_config = "config/concepts_cocomix_8l.py"
deep_insert_layer = 3
teacher_config = "config/concepts_teacher.py"  # the teacher of the tokens and depth axes
teachers = "config/concepts_teacher_weak.py,config/concepts_teacher_strong.py"  # the teacher axis adds these
sae_config = ""             # sae.py overrides, as in pipeline.py
jobs = 2                    # trainings at once
report_only = False         # True: train nothing; report the runs that finished with the planned settings
# -----------------------------------------------------------------------------
GAPS = ("cocomix", "kd", "pause")  # the arms whose gap to NTP the report shows


def parse_budgets(text):
    """'1:3,4:3,10:1' -> {1: 3, 4: 3, 10: 1} (budget multiple: seeds); SystemExit on anything else."""
    try:
        pairs = dict(tuple(int(x) for x in pair.split(":")) for pair in text.split(","))
    except ValueError:
        pairs = {}
    if not pairs or min(pairs) < 1 or min(pairs.values()) < 1:
        raise SystemExit(f"error: budgets={text!r} must be budget:seeds pairs of positive integers, like 1:3,4:3,10:1")
    return pairs


def check_settings():
    """Refuse what payoff.py cannot run, before anything runs. Returns (arms, axes, budgets, chosen rates)."""
    check(globals(), at_least=dict(n_docs=2, max_iters=1, n_seeds=1, jobs=1, insert_layer=1, deep_insert_layer=1))
    names, axis_names, steps = arms.split(","), axes.split(","), parse_budgets(budgets)
    if "ntp" not in names or any(a not in ARMS for a in names):
        raise SystemExit(f"error: arms={arms!r} must name ntp and arms of arms.py ({', '.join(ARMS)})")
    if any(a not in ("tokens", "depth", "teacher") for a in axis_names):
        raise SystemExit(f"error: axes={axes!r}: choose from tokens, depth, teacher")
    configs = [ntp_config, cocomix_config, teacher_config, sae_config, *(
        [deep_ntp_config, deep_cocomix_config] if "depth" in axis_names else []), *(
        teachers.split(",") if "teacher" in axis_names else [])]
    missing = [c for c in configs if c and not os.path.isfile(c)]
    if missing:
        raise SystemExit(f"error: config file(s) {', '.join(missing)} not found: give config files (see config/)")
    if not os.path.isfile(rates):
        raise SystemExit(f"error: {rates} not found: run `python arms.py` first, which chooses each arm's rate")
    with open(rates) as f:
        chosen = json.load(f)
    if any(a not in chosen for a in names):
        raise SystemExit(f"error: {rates} has no rate for {', '.join(a for a in names if a not in chosen)}: run "
                         "arms.py with those arms")
    return names, axis_names, steps, chosen


def world(max_budget):
    """The large concept world (prepare.py, once) and its meta.json path; says whether the largest budget repeats
    training data."""
    meta_path = f"{data_root}/concepts/meta.json"
    if report_only and not os.path.exists(meta_path):
        raise SystemExit(f"error: {meta_path} not found, so there is nothing to report: run payoff.py without "
                         "--report_only first")
    if not os.path.exists(meta_path):
        execute("prepare", ["prepare.py", "--dataset=concepts", f"--data_root={data_root}", f"--n_docs={n_docs}"])
    with open(meta_path) as f:
        train_tokens = json.load(f)["train_tokens"]
    student = runpy.run_path(ntp_config)
    seen = max_budget * max_iters * student["batch_size"] * student["block_size"]
    print(f"== the world: {train_tokens:,} train tokens; the largest budget reads {seen:,} tokens, "
          + ("no story twice" if seen <= train_tokens else f"{seen / train_tokens:.1f} epochs: raise --n_docs"))
    return meta_path


def trained_teacher(config):
    """(teacher ckpt.pt, sae.pt) of a teacher config under out_root/<its stem>, trained first (pipeline stages,
    skipped when done); with report_only, only looked up, and SystemExit if missing."""
    if not report_only:
        return teacher_and_sae("concepts", data_root, f"{out_root}/{stem(config)}", config, sae_config)[1:]
    paths = (f"{out_root}/{stem(config)}/teacher/ckpt.pt", f"{out_root}/{stem(config)}/sae/sae.pt")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not found, so there is nothing to report: run payoff.py "
                         "without --report_only first")
    return paths


def finished(spec):
    """Whether the run_all spec (name, args, out_dir, inputs) finished with exactly these args and inputs, by its
    stamp (pipeline.stage's): a run with other settings, or over another teacher, is never reported as this one."""
    _, args, out_dir, inputs = spec
    stamp = read_stamp(os.path.join(out_dir, "train.stamp.json")) or {}
    return (stamp.get("finished") is True and stamp.get("args") == ["train.py", *args, f"--out_dir={out_dir}"]
            and stamp.get("inputs") == {path: identity(path) for path in inputs})


def stem(path):
    """config/concepts_teacher.py -> concepts_teacher"""
    return os.path.splitext(os.path.basename(path))[0]


def plan(names, axis_names, steps, chosen, meta):
    """(points, teacher run dirs). points: {name: dict(axis, value, teacher, ntp_from, runs)}, runs being run_all
    specs and ntp_from the point whose NTP runs this point's gaps are taken against (itself, or tokens_1x on the
    teacher axis). tokens_1x, the 4-layer pair at 1x with the default teacher, is every axis's reference point.
    Trains the teachers and their SAEs first (stages, skipped when done; with report_only, only looks them up)."""
    paths = [teacher_config, *(teachers.split(",") if "teacher" in axis_names else [])]
    frozen = {stem(t): trained_teacher(t) for t in paths}
    root = f"{out_root}/payoff"

    def runs(point, arms_here, seeds, budget, configs, pause_layer, teacher):
        ckpt, sae = frozen[teacher]
        common = ["--dataset=concepts", f"--data_root={data_root}", f"--max_iters={budget * max_iters}",
                  f"--eval_interval={max(1, budget * max_iters // 10)}", f"--sae_path={sae}",
                  f"--teacher_path={os.path.dirname(ckpt)}"]
        return [run_spec(a, chosen[a], s, f"{root}/{point}/{a}_s{s}", common, [meta, sae, ckpt], configs,
                         pause_layer) for s in range(1, seeds + 1) for a in arms_here]

    default, shallow, points = stem(teacher_config), (ntp_config, cocomix_config), {}
    # 1x is every axis's reference point: it has the tokens axis's seeds there, and the other axes' n_seeds
    on_tokens = {1: n_seeds, **steps} if "tokens" in axis_names else {}
    at_1x = max(on_tokens.get(1, 0), n_seeds if set(axis_names) - {"tokens"} else 0)
    for b, seeds in sorted({**on_tokens, 1: at_1x}.items()):
        points[f"tokens_{b}x"] = dict(axis="tokens", value=b, teacher=default, ntp_from=f"tokens_{b}x",
                                      runs=runs(f"tokens_{b}x", names, seeds, b, shallow, insert_layer, default))
    if "depth" in axis_names:
        depth = runpy.run_path(deep_ntp_config)["n_layer"]
        points[f"depth_{depth}"] = dict(axis="depth", value=depth, teacher=default, ntp_from=f"depth_{depth}",
                                        runs=runs(f"depth_{depth}", names, n_seeds, 1,
                                                  (deep_ntp_config, deep_cocomix_config), deep_insert_layer, default))
    if "teacher" in axis_names:  # only the arms that use a teacher; NTP is the 1x runs'
        taught = [a for a in names if a in ("kd", "cocomix")]
        for t in teachers.split(","):
            points[f"teacher_{stem(t)}"] = dict(axis="teacher", value=stem(t), teacher=stem(t), ntp_from="tokens_1x",
                                                runs=runs(f"teacher_{stem(t)}", taught, n_seeds, 1, shallow,
                                                          insert_layer, stem(t)))
    return points, {name: os.path.dirname(ckpt) for name, (ckpt, _) in frozen.items()}


def run_minutes(spec):
    """arms.MINUTES of one run_all spec, scaled by its budget and its depth (4 layers: 1x)."""
    name, args = spec[0], spec[1]
    iters = next(int(a.split("=")[1]) for a in args if a.startswith("--max_iters="))
    return MINUTES[ARMS[name.split()[0]][0]] * iters / 1000 * runpy.run_path(args[0])["n_layer"] / 4


def seed_runs(point):
    """{arm: {seed: run dir}} of a point's finished runs."""
    out = {}
    for spec in filter(finished, point["runs"]):
        arm, seed = os.path.basename(spec[2]).rsplit("_s", 1)
        out.setdefault(arm, {})[int(seed)] = spec[2]
    return out


def losses(point):
    """{arm: {seed: final val loss}} of a point's finished runs."""
    return {arm: {seed: final_loss(run) for seed, run in runs.items()} for arm, runs in seed_runs(point).items()}


def activated_params(run_dir):
    """The activated parameters (GPT.get_num_params(activated=True)) of run_dir's model, built on the meta device."""
    record = torch.load(os.path.join(run_dir, "ckpt.pt"), map_location="cpu", weights_only=False, mmap=True)
    with torch.device("meta"):
        return GPT(GPTConfig(**record["model_args"])).get_num_params(activated=True)


def mean_std(values):
    """(mean, std or None) of values; the std (ddof 0, as compare.py's) needs 2 of them."""
    v = list(values)
    return float(np.mean(v)), float(np.std(v)) if len(v) > 1 else None


def rows_of(points, teacher_dirs):
    """One row per point: its axis and value, tokens per NTP parameter, the teacher's val loss and its advantage
    over the point's NTP student, NTP's loss (mean, std, seeds), and each arm's gap: the mean over seeds of
    (arm - NTP) on the same seed, its std and its seeds."""
    rows = []
    for name, p in points.items():
        got, ntp = losses(p), losses(points[p["ntp_from"]]).get("ntp")
        if not ntp:  # only with report_only: nothing to take the gaps against yet
            print(f"== {name}: no NTP run has finished there yet, left out of the report")
            continue
        ntp_run = next(d for _, _, d, _ in points[p["ntp_from"]]["runs"] if os.path.basename(d) == f"ntp_s{min(ntp)}")
        with open(os.path.join(ntp_run, "metrics.jsonl")) as f:
            tokens = json.loads(f.readlines()[-1])["tokens"]
        teacher_loss, (ntp_mean, ntp_std) = final_loss(teacher_dirs[p["teacher"]]), mean_std(ntp.values())
        gaps = {}
        for arm in GAPS:
            paired = [got[arm][s] - ntp[s] for s in got.get(arm, {}) if s in ntp]
            if paired:
                gaps[arm] = (*mean_std(paired), len(paired))
        rows.append(dict(point=name, axis=p["axis"], value=p["value"], tokens=tokens,
                         tokens_per_param=tokens / activated_params(ntp_run), teacher=p["teacher"],
                         teacher_loss=teacher_loss, teacher_advantage=ntp_mean - teacher_loss,
                         ntp=(ntp_mean, ntp_std, len(ntp)), gaps=gaps))
    return rows


def per_seed_table(points):
    """Markdown: for every point, arm and seed with a finished NTP run on the same seed, the arm's final val loss
    minus NTP's, and the tokens and training FLOPs (teacher and SAE included) its curve takes to reach NTP's
    final val loss, linear between evaluations (compare.tokens_to_reach), against what NTP spent."""
    from compare import reach_cell, read_metrics, tokens_to_reach
    lines = ["| point | arm | seed | arm − NTP | tokens to NTP's final val loss | FLOPs to NTP's final val loss |",
             "|---|---|---|---|---|---|"]
    for name, p in points.items():
        ntp = seed_runs(points[p["ntp_from"]]).get("ntp", {})
        for arm, runs in seed_runs(p).items():
            for seed, run in sorted(runs.items()):
                if arm == "ntp" or seed not in ntp:
                    continue
                base, rows = read_metrics(ntp[seed])[-1], read_metrics(run)
                target = base["val_loss"]
                cells = [reach_cell(tokens_to_reach(np.array([r[x] for r in rows], dtype=float),
                                                    np.array([r["val_loss"] for r in rows]), target),
                                    base[x], scale, unit) for x, scale, unit in (("tokens", 1e6, "M"),
                                                                                 ("flops", 1e12, "T"))]
                lines.append(f"| {name} | {arm} | {seed} | {rows[-1]['val_loss'] - target:+.4f} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


def trend(rows, arm):
    """The tokens axis's gap of arm against log10(tokens per parameter): (slope per decade, its standard error,
    the tokens per parameter where the fitted line crosses 0, or None) by least squares on the seed means; None with
    fewer than 3 budgets. The crossing is given only when the slope is at least 2 standard errors from 0."""
    points = [(np.log10(r["tokens_per_param"]), r["gaps"][arm][0]) for r in rows
              if r["axis"] == "tokens" and arm in r["gaps"]]
    if len(points) < 3:
        return None
    x, y = np.array(points).T
    (slope, intercept), cov = np.polyfit(x, y, 1, cov=True)
    se = float(np.sqrt(cov[0, 0]))
    crossing = 10 ** (-intercept / slope) if abs(slope) >= 2 * se and slope != 0 else None
    return float(slope), se, crossing


def cell(g):
    if g is None:
        return "—"
    mean, std, n = g
    return f"{mean:+.4f}" + (f" ± {std:.4f}" if std is not None else "") + f" ({n})"


def table(rows):
    """Markdown: one row per point, gaps with their std and seed count; then the tokens axis's trends."""
    lines = ["| point | tokens | tokens / param | teacher val loss | teacher advantage | NTP val loss | "
             + " | ".join(f"{a} − NTP" for a in GAPS) + " |", "|---" * (6 + len(GAPS)) + "|"]
    for r in rows:
        ntp_mean, ntp_std, n = r["ntp"]
        lines.append(f"| {r['point']} | {r['tokens']:,} | {r['tokens_per_param']:.3g} | "
                     f"{r['teacher_loss']:.4f} ({r['teacher']}) | {r['teacher_advantage']:+.4f} | "
                     f"{ntp_mean:.4f}" + (f" ± {ntp_std:.4f}" if ntp_std is not None else "") + f" ({n}) | "
                     + " | ".join(cell(r["gaps"].get(a)) for a in GAPS) + " |")
    lines += ["", "Gap against log10(tokens per parameter) on the tokens axis, least squares on the seed means:"]
    for arm in GAPS:
        t = trend(rows, arm)
        if t is None:
            lines.append(f"- {arm}: fewer than 3 budgets, no trend")
        else:
            slope, se, crossing = t
            measured = [r["tokens_per_param"] for r in rows if r["axis"] == "tokens"]
            where = ("no crossing given: the slope is within 2 standard errors of 0" if crossing is None else
                     f"the line crosses 0 at about {crossing:.3g} tokens per parameter, " + (
                         "within the budgets run" if min(measured) <= crossing <= max(measured) else
                         "an extrapolation beyond the budgets run" if crossing > max(measured) else
                         "below the smallest budget run"))
            lines.append(f"- {arm}: {slope:+.4f} ± {se:.4f} per decade; {where}")
    return "\n".join(lines)


def plot(rows, path):
    """Three panels: each arm's gap to NTP against tokens per parameter, depth, and the teacher's advantage."""
    from compare import COLORS, pyplot, save
    plt, shallow_depth = pyplot(), runpy.run_path(ntp_config)["n_layer"]
    fig, axes_ = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    panels = (("tokens", "tokens per parameter (NTP's activated)", lambda r: r["tokens_per_param"]),
              ("depth", "layers", lambda r: shallow_depth if r["axis"] == "tokens" else r["value"]),
              ("teacher", "teacher's advantage over NTP (val loss)", lambda r: r["teacher_advantage"]))
    for ax, (axis, label, x) in zip(axes_, panels):
        # the 1x 4-layer runs with the default teacher belong to every panel
        here = [r for r in rows if r["axis"] == axis or r["point"] == "tokens_1x"]
        for arm in GAPS:
            pts = sorted((x(r), *r["gaps"][arm][:2]) for r in here if arm in r["gaps"])
            if pts:
                xs, ys, errs = zip(*pts)
                ax.errorbar(xs, ys, yerr=[e or 0 for e in errs], marker="o", capsize=3, color=COLORS.get(arm),
                            label=f"{arm} − NTP")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(label)
        if axis == "tokens":
            ax.set_xscale("log")
    axes_[0].set_ylabel("final val loss gap to NTP (lower: the arm wins)")
    axes_[0].legend()
    fig.suptitle("Where does CoCoMix pay off? Gap to NTP on the concept world (mean ± std over seeds, same seeds)")
    save(fig, path)


def main():
    names, axis_names, steps, chosen = check_settings()
    t0 = time.time()
    meta = world(max(steps) if "tokens" in axis_names else 1)
    points, teacher_dirs = plan(names, axis_names, steps, chosen, meta)
    specs = [r for p in points.values() for r in p["runs"]]
    if report_only:
        print(f"== report only: {sum(map(finished, specs))} of the {len(specs)} planned runs have finished")
    else:
        left = [spec for spec in specs if not finished(spec)]
        minutes = sum(run_minutes(spec) for spec in left) / 2  # MINUTES: 2 at once on 2 cores
        print(f"== {len(specs)} runs over {len(points)} points, {len(left)} of them to train, {jobs} at once, at the "
              f"rates of {rates} (" + ", ".join(f"{a} {chosen[a]}" for a in names) + f"): about {minutes:.0f} min "
              "on 2 quiet cores, teachers and SAEs aside")
        run_all(specs, jobs)
    rows = rows_of(points, teacher_dirs)
    root = f"{out_root}/payoff"
    text = table(rows) + "\n\nPer seed (NTP: the same seed's run of the point's NTP):\n\n" + per_seed_table(points)
    with replacing(f"{root}/payoff.md") as tmp, open(tmp, "w") as f:
        f.write(text + "\n")
    plot(rows, f"{root}/payoff.png")
    print(text)
    print(f"payoff {'reported' if report_only else 'finished'} in {(time.time() - t0) / 60:.1f} min: "
          f"{root}/payoff.md, {root}/payoff.png")


if __name__ == "__main__":
    configure(globals())
    sys.exit(main())
