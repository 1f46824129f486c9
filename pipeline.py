"""
The whole method on the embedded default, end to end, on a CPU in minutes:

    prepare the concept world -> train the teacher -> train the SAE on its activations ->
    train an NTP baseline and a CoCoMix student (equal tokens, matched activated parameters), per seed ->
    compare them (val loss against tokens, PNG + markdown table) ->
    describe the SAE's concepts (concepts.py) and measure steering on the first CoCoMix student (steer.py)

    python pipeline.py                      # one seed
    python pipeline.py --n_seeds=3          # the README's numbers
    python pipeline.py --help               # every key

Each stage is one of the project's scripts, run as a user would run it. Finished stages are skipped and an
interrupted training run resumes from its checkpoint, so re-running picks up where it stopped.
Everything lands under out_root.
"""
import os
import subprocess
import sys
import time

import torch

from configurator import configure
from prepare import prepare_command

# -----------------------------------------------------------------------------
dataset = "concepts"        # a prepared dataset; "concepts" is generated here if missing
data_root = "data"
out_root = "out"
n_seeds = 1                 # students are trained with seeds 1..n_seeds
teacher_config = "config/concepts_teacher.py"
sae_config = ""             # an optional config file of sae.py overrides (sae.py's defaults suit the teacher)
ntp_config = "config/concepts_ntp.py"
cocomix_config = "config/concepts_cocomix.py"
max_iters = 1000            # student iterations (both methods)
steer_samples = 8           # stories per planted concept and scale in the steering metric (steer.py)
# -----------------------------------------------------------------------------


def run(stage, args, done_file):
    """Run one stage unless its output exists; stream its output, stop the pipeline if it fails."""
    if os.path.exists(done_file):
        print(f"== {stage}: {done_file} exists, skipping")
        return
    execute(stage, args)


def train(stage, args, out_dir):
    """A train.py stage: skipped if its checkpoint reached max_iters, resumed if it stopped before."""
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["iter_num"] >= ckpt["config"]["max_iters"]:
            print(f"== {stage}: {out_dir} finished, skipping")
            return
        args = [*args, "--init_from=resume"]
    execute(stage, [*args, f"--out_dir={out_dir}"])


def sae(stage, args, out_dir):
    """An sae.py stage: skipped if finished (metrics are written last), resumed if it stopped before."""
    path = os.path.join(out_dir, "sae.pt")
    if os.path.exists(path):
        if torch.load(path, map_location="cpu", weights_only=False)["metrics"] is not None:
            print(f"== {stage}: {path} finished, skipping")
            return
        args = [*args, "--init_from=resume"]
    execute(stage, [*args, f"--out_dir={out_dir}"])


def execute(stage, args):
    print(f"== {stage}: python {' '.join(args)}", flush=True)
    t0 = time.time()
    if subprocess.run([sys.executable, *args]).returncode != 0:
        raise SystemExit(f"error: stage '{stage}' failed (see its output above); fix it and re-run the pipeline")
    print(f"== {stage}: done in {time.time() - t0:.0f}s", flush=True)


def main():
    data = [f"--dataset={dataset}", f"--data_root={data_root}"]
    teacher_dir, sae_dir = f"{out_root}/teacher", f"{out_root}/sae"
    compare_dir = f"{out_root}/compare"
    if dataset == "concepts":
        run("prepare", ["prepare.py", "--dataset=concepts", f"--data_root={data_root}"],
            f"{data_root}/concepts/meta.json")
    elif not os.path.exists(f"{data_root}/{dataset}/meta.json"):
        data_dir = os.path.join(data_root, dataset)
        raise SystemExit(f"error: {data_dir} not found: run `{prepare_command(data_dir)}` first")
    train("teacher", ["train.py", teacher_config, *data], teacher_dir)
    sae("sae", ["sae.py", *([sae_config] if sae_config else []), f"--teacher_path={teacher_dir}"], sae_dir)
    for seed in range(1, n_seeds + 1):
        student = [*data, f"--seed={seed}", f"--max_iters={max_iters}"]
        train(f"ntp seed {seed}", ["train.py", ntp_config, *student], f"{compare_dir}/ntp_s{seed}")
        train(f"cocomix seed {seed}", ["train.py", cocomix_config, *student, f"--sae_path={sae_dir}/sae.pt"],
              f"{compare_dir}/cocomix_s{seed}")
    from compare import main as compare
    compare(compare_dir)
    run("concepts", ["concepts.py", f"--sae_path={sae_dir}/sae.pt"], f"{sae_dir}/concepts.json")
    if dataset == "concepts":  # the steering metric needs planted concepts
        run("steering", ["steer.py", f"--out_dir={compare_dir}/cocomix_s1", f"--n_samples={steer_samples}"],
            f"{compare_dir}/cocomix_s1/steering.json")


if __name__ == "__main__":
    configure(globals())
    t_start = time.time()
    main()
    print(f"pipeline finished in {(time.time() - t_start) / 60:.1f} min")
