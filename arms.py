"""
The fair comparison: CoCoMix against the paper's baselines and controls (Table 1 and Fig. 6), each arm at a
learning rate that is good for it. Every arm sees the same tokens; its learning rate is the best of a grid by
seed-1 validation loss, a grid that grows past its edge while the best rate lies there; then the arm is trained
on n_seeds seeds at that rate.

    python arms.py                                      # the README's comparison: 9 arms x 3 rates (more where
                                                        # an arm's best is at an edge), then 2 more seeds each
                                                        # (45 runs or more: hours on 2 CPU cores)
    python arms.py --arms=ntp,kd --lrs=2e-3 --n_seeds=1 # a part of it

The arms, at the student sizes of config/concepts_ntp.py (width 108) and config/concepts_cocomix.py (width 96,
whose activated parameters the 108 matches):
    ntp                 next-token prediction
    kd                  + 0.1 x KL(teacher || student) per token (the paper's KD), from the teacher of the SAE
    pause               a learned pause token after every token, from CoCoMix's block on, at NTP's width (as the
                        paper: the same doubled sequence as CoCoMix, without concepts)
    kd_pause            both
    regress             the teacher's hidden state regressed by a 2-layer MLP and mixed in instead of concepts
                        (Fig. 6b), at CoCoMix's width; regress_cosine: with a cosine loss instead of l2
    cocomix             CoCoMix, attribution labels (the official code's)
    cocomix_activation  CoCoMix, activation labels (Fig. 6a)
    cocomix_prediction  concept prediction only, no mixing (Fig. 6d)

Writes into out_root/arms: grid/<arm>_lr<lr>_s1 (the grid runs), <arm>_s<seed> (each arm at its chosen rate;
seed 1 is a link to its grid run), grid.md (every grid loss and each arm's rate), chosen.json (the rates),
compare.md and compare.png (compare.py: losses with seed spread, tokens and FLOPs to reach NTP's final loss), and
paired.md (each arm's gap to NTP on the same seed). It first runs the pipeline's
teacher and SAE stages (out_root/teacher, out_root/sae). Stages are stamped and skipped when done, like the
pipeline's. `jobs` trainings run at once, each on cores/jobs threads, with their output in <run>/train.log;
losses are deterministic for a given jobs (the thread count changes float rounding).
"""
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from checkpoint import replacing
from configurator import check, configure
from pipeline import TRAIN, stage, teacher_and_sae

# -----------------------------------------------------------------------------
dataset = "concepts"
data_root = "data"
out_root = "out"
arms = "ntp,kd,pause,kd_pause,regress,regress_cosine,cocomix,cocomix_activation,cocomix_prediction"  # of ARMS
lrs = "1e-3,2e-3,4e-3"      # the learning-rate grid, run on seed 1 for every arm
max_extend = 2              # times an arm's grid grows by a factor 2 past the edge its best rate is at
n_seeds = 3                 # seeds at each arm's chosen rate
max_iters = 1000            # the token budget: max_iters x 32 x 64 tokens
jobs = 2                    # trainings at once
teacher_config = "config/concepts_teacher.py"
sae_config = ""             # sae.py overrides, as in pipeline.py
ntp_config = "config/concepts_ntp.py"          # the arms at NTP's width
cocomix_config = "config/concepts_cocomix.py"  # the arms at CoCoMix's width
insert_layer = 2            # the pause arms' block: CoCoMix's in cocomix_config
# -----------------------------------------------------------------------------

# arm: (at NTP's width?, train.py flags)
KD = ["--lam_kd=0.1"]
ARMS = {"ntp": (True, []), "kd": (True, KD), "pause": (True, ["--mode=pause"]),
        "kd_pause": (True, ["--mode=pause", *KD]), "regress": (False, ["--mode=regress"]),
        "regress_cosine": (False, ["--mode=regress", "--regress_loss=cosine"]), "cocomix": (False, []),
        "cocomix_activation": (False, ["--concept_method=activation"]),
        "cocomix_prediction": (False, ["--mixing=none"])}
# minutes of one 1,000-iteration run at NTP's width (True) or CoCoMix's, 2 at once on 1 thread each, on the
# AVX2-only 2-core EPYC of 2026-12-01 (4 and 8 on the 2-core machine of 2026-11-30)
MINUTES = {True: 7, False: 13}


def final_loss(run):
    """The last evaluation's val loss in run/metrics.jsonl."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return json.loads(f.readlines()[-1])["val_loss"]


def run_spec(arm, lr, seed, out_dir, common, inputs, configs, pause_layer):
    """(name, train.py args, out_dir, the files it reads) of one run of `arm` at rate lr and seed, for run_all.
    common: the flags every run shares (data, budget, teacher, SAE); inputs: the files behind them; configs: the
    config files at NTP's width and at CoCoMix's; pause_layer: the pause arms' insert_layer."""
    ntp_width, extra = ARMS[arm]
    config = configs[0] if ntp_width else configs[1]
    extra = [*extra, f"--insert_layer={pause_layer}"] if "--mode=pause" in extra else extra
    return (f"{arm} lr {lr} seed {seed}", [config, *common, *extra, f"--learning_rate={lr}", f"--seed={seed}"],
            out_dir, [config, *inputs])


def run_all(runs, jobs):
    """Train each (name, args, out_dir, inputs) of runs, `jobs` at once; stop at the first failure. After each run,
    a progress line: runs done, minutes so far, and the minutes left at the pace of the runs trained so far (runs
    already done and skipped do not count)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    t0, done, trained = time.time(), [], []

    def train(r):
        start = time.time()
        if stage(r[0], ["train.py", *r[1], f"--out_dir={r[2]}"], r[2], ["ckpt.pt", "metrics.jsonl"], r[3], **TRAIN,
                 log=os.path.join(r[2], "train.log"), threads=threads):
            trained.append((time.time() - start) / 60)
        done.append(r[0])
        left = len(runs) - len(done)
        pace = (f"about {sum(trained) / len(trained) * left / jobs:.0f} min left at this pace" if trained else
                "no run trained yet")
        print(f"== {len(done)}/{len(runs)} runs done, {(time.time() - t0) / 60:.1f} min, {pace}", flush=True)

    for r in runs:
        os.makedirs(r[2], exist_ok=True)
    with ThreadPoolExecutor(jobs) as pool:
        for _ in pool.map(train, runs):  # re-raises a stage's SystemExit here
            pass


def past_edge(losses):
    """The next rate past the grid's edge if the best of losses {lr: loss} lies at that edge (half the lowest, or
    twice the highest), else None. Needs 2 rates or more."""
    rates = sorted(losses, key=float)
    best = min(rates, key=losses.get)
    if len(rates) < 2 or best not in (rates[0], rates[-1]):
        return None
    return rate_name(float(best) / 2 if best == rates[0] else float(best) * 2)


def rate_name(lr):
    """A learning rate as the grid names it: 0.008 -> '8e-3', 0.00025 -> '2.5e-4'."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def estimate(names, runs_per_arm):
    """Minutes that runs_per_arm runs of each arm take, 2 at once on a quiet 2-core CPU (MINUTES)."""
    return round(sum(MINUTES[ARMS[a][0]] for a in names) * runs_per_arm / 2)


def grid_table(grid, chosen):
    """Markdown: seed-1 final val loss of every arm at every rate, the chosen rate in bold."""
    rates = sorted({lr for arm in grid.values() for lr in arm}, key=float)
    lines = ["| arm | " + " | ".join(f"lr {lr}" for lr in rates) + " | chosen |", "|---|" + "---|" * (len(rates) + 1)]
    for arm, losses in grid.items():
        cells = [f"**{losses[lr]:.4f}**" if lr == chosen[arm] else f"{losses[lr]:.4f}" if lr in losses else "—"
                 for lr in rates]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {chosen[arm]} |")
    return "\n".join(lines)


def paired_table(root, names, n_seeds, baseline="ntp"):
    """Markdown: each arm's final val loss on every seed, and its gap to the baseline on the same seed (same
    batches, same initialisation seed): the mean and the std over seeds (ddof 0, as compare.py's)."""
    seeds = range(1, n_seeds + 1)
    loss = {a: np.array([final_loss(f"{root}/{a}_s{s}") for s in seeds]) for a in names}
    lines = ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + f" | arm − {baseline}, same seed |",
             "|---|" + "---|" * (n_seeds + 1)]
    for a in names:
        gap = loss[a] - loss[baseline]
        cell = "—" if a == baseline else f"{gap.mean():+.4f}" + (f" ± {gap.std():.4f}" if n_seeds > 1 else "")
        lines.append(f"| {a} | " + " | ".join(f"{x:.4f}" for x in loss[a]) + f" | {cell} |")
    return "\n".join(lines)


def main():
    names, rates = arms.split(","), lrs.split(",")
    check(globals(), at_least=dict(n_seeds=1, max_iters=1, jobs=1, insert_layer=1, max_extend=0))
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        raise SystemExit(f"error: unknown arm(s) {', '.join(unknown)}: choose from {', '.join(ARMS)}")
    try:
        bad = [lr for lr in rates if not float(lr) > 0]
    except ValueError:
        bad = rates
    if bad:
        raise SystemExit(f"error: lrs={lrs!r} must be positive numbers separated by commas, like 1e-3,2e-3,4e-3")
    for key in ("teacher_config", "sae_config", "ntp_config", "cocomix_config"):
        if globals()[key] and not os.path.isfile(globals()[key]):
            raise SystemExit(f"error: {key}={globals()[key]} not found: give a config file (see config/)")
    t0 = time.time()
    meta, teacher, sae = teacher_and_sae(dataset, data_root, out_root, teacher_config, sae_config)
    root = f"{out_root}/arms"
    common = [f"--dataset={dataset}", f"--data_root={data_root}", f"--max_iters={max_iters}",
              f"--sae_path={sae}", f"--teacher_path={os.path.dirname(teacher)}"]

    def spec(arm, lr, seed, out_dir):
        return run_spec(arm, lr, seed, out_dir, common, [meta, sae, teacher], (ntp_config, cocomix_config),
                        insert_layer)

    print(f"== grid: {len(names)} arms x {len(rates)} learning rates, seed 1, {jobs} at once; an arm best at an "
          f"edge gets the next rate past it, up to {max_extend} times (about {estimate(names, len(rates))} min on 2 "
          "quiet cores before any extension)")
    grid = {a: {} for a in names}
    pending = [(a, lr) for a in names for lr in rates]
    for _ in range(max_extend + 1):
        run_all([spec(a, lr, 1, f"{root}/grid/{a}_lr{lr}_s1") for a, lr in pending], jobs)
        for a, lr in pending:
            grid[a][lr] = final_loss(f"{root}/grid/{a}_lr{lr}_s1")
        pending = [(a, lr) for a in names if (lr := past_edge(grid[a])) is not None]
        if not pending:
            break
    chosen = {a: min(grid[a], key=grid[a].get) for a in names}
    table = grid_table(grid, chosen)
    edge = [a for a in names if past_edge(grid[a]) is not None]
    if edge:  # the best rate may lie outside the grid: say so, in the table too
        table += (f"\n\nStill at the grid's edge after {max_extend} extensions: {', '.join(edge)}. A better rate "
                  "may lie outside it: raise --max_extend.")
    with replacing(f"{root}/grid.md") as tmp, open(tmp, "w") as f:
        f.write(table + "\n")
    with replacing(f"{root}/chosen.json") as tmp, open(tmp, "w") as f:  # what payoff.py trains each arm at
        json.dump(chosen, f, indent=1)
    print(table)
    for a in names:  # seed 1 at the chosen rate is the grid's run
        link = f"{root}/{a}_s1"
        if os.path.exists(link) and not os.path.islink(link):
            raise SystemExit(f"error: {link} is not the link to a grid run arms.py makes: move it away and re-run")
        if os.path.islink(link):
            os.remove(link)
        os.symlink(f"grid/{a}_lr{chosen[a]}_s1", link)
    print(f"== seeds 2..{n_seeds} at each arm's chosen rate, {jobs} at once (about "
          f"{estimate(names, n_seeds - 1)} min on 2 quiet cores)")
    run_all([spec(a, chosen[a], s, f"{root}/{a}_s{s}") for s in range(2, n_seeds + 1) for a in names], jobs)
    from compare import compare_training
    compare_training(root, [f"{root}/{a}_s{s}" for a in names for s in range(1, n_seeds + 1)])
    if "ntp" in names:
        paired = paired_table(root, names, n_seeds)
        with replacing(f"{root}/paired.md") as tmp, open(tmp, "w") as f:
            f.write(paired + "\n")
        print(paired)
    print(f"arms finished in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    configure(globals())
    sys.exit(main())
