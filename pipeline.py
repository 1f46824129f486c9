"""
The whole method on the embedded default, end to end, on a CPU in minutes:

    prepare the concept world -> train the teacher -> train the SAE on its activations ->
    train an NTP baseline and a CoCoMix student (equal tokens, matched activated parameters), per seed ->
    compare them (val loss against tokens, PNG + markdown table) ->
    describe the SAE's concepts (concepts.py) and measure steering on the first CoCoMix student (steer.py)

    python pipeline.py                      # one seed
    python pipeline.py --n_seeds=3          # the README's numbers
    python pipeline.py --help               # every key

Each stage is one of the project's scripts, run as a user would run it, and it stops when the pipeline stops
(even by kill -9). Each records a stamp next to its outputs (<script>.stamp.json): its command and what it read
(config files and meta.json by content, checkpoints by size and time). Re-running skips a stage only if its
outputs are all there and its stamp matches, resumes an interrupted training run with the same settings from its
checkpoint, and runs a stage again from the start when its settings or inputs changed: --max_iters=20 after
--max_iters=10 retrains the students, a retrained teacher retrains the SAE and all that depends on it. A run the
pipeline has no stamp for (made by hand, or by an older pipeline) is refused, never replaced.
Everything lands under out_root.
"""
import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

from checkpoint import write_json
from configurator import check, configure
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


def death_signal():
    """A preexec_fn for a stage's Popen on Linux (None elsewhere): the kernel sends the stage SIGTERM when the
    pipeline dies, even by kill -9, which no finally clause survives. libc is loaded here, in the pipeline, so
    that the forked child only makes a system call before its script starts."""
    if not sys.platform.startswith("linux"):
        return None
    libc, parent = ctypes.CDLL(None, use_errno=True), os.getpid()

    def set_death_signal():
        libc.prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the pipeline died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return set_death_signal


def execute(stage, args, log=None, threads=None):
    """Run `python args` as one stage, streaming its output (or appending it to the file log); stop the pipeline
    if it fails. threads: its CPU threads (torch's default: all cores). The stage stops with the pipeline: by the
    kernel on Linux (death_signal), and wherever the pipeline exits through Python (an error, Ctrl-C, SIGTERM)
    by the finally clause."""
    print(f"== {stage}: python {' '.join(args)}" + (f" > {log}" if log else ""), flush=True)
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    out = open(log, "a") if log else None
    proc = subprocess.Popen([sys.executable, *args], preexec_fn=death_signal(), env=env, stdout=out,
                            stderr=subprocess.STDOUT if log else None)
    try:
        returncode = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if out:
            out.close()
    if returncode != 0:
        raise SystemExit(f"error: stage '{stage}' failed (see its output {f'in {log}' if log else 'above'}); fix it "
                         "and re-run")
    print(f"== {stage}: done in {time.time() - t0:.0f}s", flush=True)


def identity(path):
    """What a stamp records of a file a stage reads: small text files (config files, meta.json, concepts.json)
    by content, checkpoints by size and modification time, which every save changes; None if it is missing."""
    if not os.path.isfile(path):
        return None
    if path.endswith((".py", ".json")):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def read_stamp(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_stamp(path, stamp):
    """A stamp is whole or absent (checkpoint.write_json)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(stamp, path)


PROGRESS = {"stages": None, "done": 0, "t0": time.time()}  # main() sets the count of stages


def progress(name):
    """After each stage (run or skipped), how far the pipeline is: stages done of all, and minutes so far."""
    PROGRESS["done"] += 1
    if PROGRESS["stages"]:
        print(f"== {PROGRESS['done']}/{PROGRESS['stages']} stages done ({name}), "
              f"{(time.time() - PROGRESS['t0']) / 60:.1f} min so far", flush=True)


def stage(name, args, home, outputs, inputs, checkpoint=None, fresh=(), **how):
    """Run one stage, `python args`, which writes the files `outputs` into the directory home and reads the
    files `inputs`. Skipped if its stamp there (<script>.stamp.json) says it finished with the same args and
    inputs and all its outputs exist. A training stage (checkpoint: the file in home it resumes from) resumes
    when its args and inputs are the same, and starts over, adding the flags `fresh`, when they changed; it
    refuses a checkpoint the pipeline has no stamp for, since nothing says which settings made it. how: execute's
    log and threads. Returns whether it ran (False: skipped as done)."""
    stamp_path = os.path.join(home, os.path.splitext(os.path.basename(args[0]))[0] + ".stamp.json")
    want = {"args": args, "inputs": {path: identity(path) for path in inputs}}
    stamp = read_stamp(stamp_path)
    same = stamp is not None and all(stamp.get(key) == value for key, value in want.items())
    if same and stamp.get("finished") and all(os.path.exists(os.path.join(home, f)) for f in outputs):
        print(f"== {name}: finished with these settings and inputs ({stamp_path}), skipping")
        progress(name)
        return False
    ckpt = os.path.join(home, checkpoint) if checkpoint else None
    if ckpt and os.path.exists(ckpt) and stamp is None:
        raise SystemExit(f"error: {home} holds a run the pipeline did not record (no {stamp_path}), so it cannot "
                         "tell which settings made it: move it away (or delete it) and re-run")
    # resume its own run; not the checkpoint of an older run that a start-over was about to replace
    resume = same and ckpt is not None and os.path.exists(ckpt) and identity(ckpt) != stamp.get("replaces")
    if stamp is not None and not same:
        print(f"== {name}: its settings or inputs changed since {stamp_path}: running it again from the start")
    if resume:
        extra = ["--init_from=resume"]
    else:  # from the start; `fresh` lets it replace what an earlier attempt left in home
        extra = list(fresh) if stamp is not None else []
    write_stamp(stamp_path, {**want, "finished": False, "replaces": None if resume or not ckpt else identity(ckpt)})
    execute(name, [*args, *extra], **how)
    write_stamp(stamp_path, {**want, "finished": True})
    progress(name)
    return True


def check_settings():
    """Refuse what the pipeline cannot run, before any stage starts."""
    check(globals(), at_least=dict(n_seeds=1, max_iters=1, steer_samples=1))
    for key, path in (("teacher_config", teacher_config), ("sae_config", sae_config), ("ntp_config", ntp_config),
                      ("cocomix_config", cocomix_config)):
        if path and not os.path.isfile(path):
            raise SystemExit(f"error: {key}={path} not found: give a config file (see config/ for the presets)")
    if os.path.exists(out_root) and not os.path.isdir(out_root):
        raise SystemExit(f"error: out_root={out_root} is a file: give a directory")
    if dataset != "concepts" and not os.path.exists(f"{data_root}/{dataset}/meta.json"):
        data_dir = os.path.join(data_root, dataset)
        raise SystemExit(f"error: {data_dir} not found: run `{prepare_command(data_dir)}` first")


TRAIN = dict(checkpoint="ckpt.pt", fresh=["--overwrite"])  # train.py and sae.py replace a run only when told


def teacher_and_sae(dataset, data_root, out_root, teacher_config, sae_config=""):
    """The stages every student needs: the data, the teacher (out_root/teacher) and its SAE (out_root/sae).
    Returns (meta.json, the teacher's ckpt.pt, sae.pt)."""
    data = [f"--dataset={dataset}", f"--data_root={data_root}"]
    meta = f"{data_root}/{dataset}/meta.json"
    teacher_dir, sae_dir = f"{out_root}/teacher", f"{out_root}/sae"
    teacher, sae = f"{teacher_dir}/ckpt.pt", f"{sae_dir}/sae.pt"
    if os.path.exists(meta):  # the data is an input of the stages: their stamps record its meta
        print(f"== prepare: {meta} exists, skipping")
    else:
        execute("prepare", ["prepare.py", "--dataset=concepts", f"--data_root={data_root}"])
    stage("teacher", ["train.py", teacher_config, *data, f"--out_dir={teacher_dir}"], teacher_dir, ["ckpt.pt"],
          [teacher_config, meta], **TRAIN)
    sae_args = [*([sae_config] if sae_config else []), f"--teacher_path={teacher_dir}", f"--out_dir={sae_dir}"]
    stage("sae", ["sae.py", *sae_args], sae_dir, ["sae.pt"], [*([sae_config] if sae_config else []), teacher, meta],
          checkpoint="sae.pt", fresh=["--overwrite"])
    return meta, teacher, sae


def main():
    check_settings()
    # teacher, SAE, two students per seed, concepts, and the steering metric on the concept world
    PROGRESS["stages"] = 2 + 2 * n_seeds + 1 + (dataset == "concepts")
    print(f"== {PROGRESS['stages']} stages: about {8 + 5 * (n_seeds - 1)} minutes on a quiet 2-core CPU with the "
          "default settings (8 for the first seed, 5 for each student pair after it)")
    data = [f"--dataset={dataset}", f"--data_root={data_root}"]
    meta, teacher, sae = teacher_and_sae(dataset, data_root, out_root, teacher_config, sae_config)
    sae_dir, compare_dir = os.path.dirname(sae), f"{out_root}/compare"
    train = TRAIN
    students = []
    for seed in range(1, n_seeds + 1):
        student = [*data, f"--seed={seed}", f"--max_iters={max_iters}"]
        for method, config, extra, reads in (("ntp", ntp_config, [], []),
                                             ("cocomix", cocomix_config, [f"--sae_path={sae}"], [sae, teacher])):
            out_dir = f"{compare_dir}/{method}_s{seed}"
            stage(f"{method} seed {seed}", ["train.py", config, *student, *extra, f"--out_dir={out_dir}"], out_dir,
                  ["ckpt.pt", "metrics.jsonl"], [config, meta, *reads], **train)
            students.append(out_dir)
    from compare import compare_training
    compare_training(compare_dir, students)  # these runs only, not others left in compare_dir
    stage("concepts", ["concepts.py", f"--sae_path={sae}"], sae_dir, ["concepts.json"], [sae, teacher, meta])
    if dataset == "concepts":  # the steering metric needs planted concepts
        run = f"{compare_dir}/cocomix_s1"
        stage("steering", ["steer.py", f"--out_dir={run}", f"--n_samples={steer_samples}"], run,
              ["steering.json", "steering.png"], [f"{run}/ckpt.pt", sae, teacher, f"{sae_dir}/concepts.json"])


if __name__ == "__main__":
    configure(globals())
    # SIGTERM and Ctrl-C end the pipeline through Python, so that execute's finally stops the running stage
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("error: pipeline.py was terminated: re-run it to continue"))
    t_start = time.time()
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("error: pipeline.py was interrupted: re-run it to continue") from None
    print(f"pipeline finished in {(time.time() - t_start) / 60:.1f} min")
