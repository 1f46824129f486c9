"""train.py refuses what it cannot do right, in one line, and never destroys a good result.

Every bad input stops with a last line starting "error:", no traceback, a non-zero exit and nothing written:
the out_dir is absent, or byte for byte as it was where a run was already there."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script
from test_train import TINY

ENV = {"HF_HUB_OFFLINE": "1"}  # --init_from=gpt2 fails at once instead of retrying the network for 30 s


def make_dataset(data_root, name, n_train=20000, n_val=4000):
    """A learnable toy dataset (a noisy repeating pattern over 16 tokens) in prepare.py's format."""
    d = data_root / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        tokens = np.where(rng.random(n) < 0.1, rng.integers(0, 16, n), np.tile(np.arange(16), n // 16 + 1)[:n])
        tokens.astype(np.uint16).tofile(d / f"{split}.bin")
    (d / "meta.json").write_text(json.dumps({"dataset": name, "tokenizer": "chars", "vocab_size": 16,
                                             "itos": list("abcdefghijklmnop"), "eot_token": None}))


def toy_args(root, *extra):
    """train.py's arguments at toy size on root/data/toy into root/out (later flags override these)."""
    return [*TINY, f"--data_root={root / 'data'}", "--dataset=toy", f"--out_dir={root / 'out'}", *extra]


def train(root, *extra, check=False):
    return run_script("train.py", *toy_args(root, *extra), check=check, env=ENV)


def snapshot(root):
    """{path: content hash} of every file and directory under root: what 'nothing written' compares."""
    files = {}
    for d, dirs, names in os.walk(root):
        for name in dirs:
            files[os.path.relpath(os.path.join(d, name), root)] = "dir"
        for name in names:
            path = os.path.join(d, name)
            files[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return files


def assert_refused(p, message):
    lines = p.stdout.strip().splitlines()
    assert p.returncode != 0, p.stdout[-2000:]
    assert "Traceback" not in p.stdout, p.stdout[-3000:]
    assert lines[-1].startswith("error: ") and message in lines[-1], lines[-1]


# One Python process runs train.py once per argument list, so that torch is imported once (a row takes
# milliseconds, not seconds). Each run ends as `python train.py ARGS` would: a SystemExit message is printed
# with status 1, any other exception prints its traceback.
BATCH = r"""
import contextlib, io, json, runpy, sys, traceback
results = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        sys.argv = ["train.py", *argv]
        try:
            runpy.run_path("train.py", run_name="__main__")
            status = 0
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            status = 1 if isinstance(e.code, str) else e.code or 0
        except BaseException:
            traceback.print_exc()
            status = 1
    results.append([status, out.getvalue()])
print(json.dumps(results))
"""


def run_batch(arg_lists):
    """[(returncode, output)] of train.py run with each argument list."""
    p = subprocess.run([sys.executable, "-c", BATCH, json.dumps(arg_lists)], cwd=ROOT, stdout=subprocess.PIPE,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **ENV}, check=True)
    return [subprocess.CompletedProcess(argv, code, out) for argv, (code, out) in
            zip(arg_lists, json.loads(p.stdout.splitlines()[-1]))]


def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


NO_CUDA = not torch.cuda.is_available()
# (arguments, expected message) on a directory with data/{toy,short,empty,badmeta} and a plain file a_file
BAD_INPUTS = [
    # settings out of range
    ("--eval_interval=0", "eval_interval=0 must be at least 1"),
    ("--log_interval=0", "log_interval=0 must be at least 1"),
    ("--eval_iters=0", "eval_iters=0 must be at least 1"),
    ("--gradient_accumulation_steps=0", "gradient_accumulation_steps=0 must be at least 1"),
    ("--batch_size=0", "batch_size=0 must be at least 1"),
    ("--block_size=0", "block_size=0 must be at least 1"),
    ("--max_iters=-1", "max_iters=-1 must be at least 0"),
    ("--batch_size=None", "config key 'batch_size' expects int (like 32), got NoneType None"),
    ("--n_embd=33", "n_embd=33 is not a multiple of n_head=2"),
    ("--learning_rate=0", "learning_rate=0.0 must be in (0, inf)"),
    ("--learning_rate=1e999", "learning_rate=inf must be in (0, inf)"),
    ("--dropout=1.0", "dropout=1.0 must be in [0, 1)"),
    ("--beta2=1.5", "beta2=1.5 must be in [0, 1)"),
    ("--mode=foo", "mode='foo' must be 'ntp' or 'cocomix'"),
    ("--mixing=foo", "mixing='foo' must be 'interleave' or 'add' or 'none'"),
    ("--concept_method=foo", "concept_method='foo' must be 'attribution' or"),
    ("--k_concepts=0", "k_concepts=0 must be at least 1"),
    ("--k_attr=0", "k_attr=0 must be at least 1"),
    ("--mode=cocomix --insert_layer=2", "insert_layer=2 must leave blocks on both sides: use 1..1"),
    ("--mode=pause --insert_layer=0", "insert_layer=0 must leave blocks on both sides: use 1..1"),
    ("--mode=pause --insert_layer=1 --mixing=add", "mode=pause interleaves its pause tokens; mixing='add' has no"),
    ("--mode=kd", "mode='kd' must be 'ntp' or 'cocomix' or 'pause' or 'regress'"),
    ("--lam_kd=-1", "lam_kd=-1.0 must be in [0, inf)"),
    ("--compile=yes", "compile='yes' must be True, False or None"),
    ("--label_dtype=float16", "label_dtype='float16' must be 'float32' or 'bfloat16'"),
    ("--cached_labels", "--cached_labels holds concept labels, which mode=ntp does not learn: drop it"),
    ("--regress_loss=l1", "regress_loss='l1' must be 'l2' or 'cosine'"),
    ("--lam_kd=0.1 --teacher_path={dir}/none", "none not found: train one with `python train.py config/concepts_teacher.py`"),
    ("--mode=regress --insert_layer=1 --sae_path={dir}/none.pt", "none.pt not found"),
    ("--init_from=foo", "unknown init_from='foo'"),
    *[("--device=cuda", "--device=cuda but no CUDA device is visible: use --device=cpu")] * NO_CUDA,
    ("--device=gpu", "unknown device='gpu': use auto, cpu, cuda or cuda:N"),
    ("--dtype=float8", "unknown dtype='float8'"),
    # inputs that are missing, too small or of the wrong kind
    ("--init_from=resume", "ckpt.pt not found"),
    ("--init_from=gpt2", "could not load the GPT-2 weights 'gpt2'"),
    ("--dataset=nowhere", "nowhere/train.bin not found: run `python prepare.py --dataset=nowhere"),
    ("--block_size=4000", "toy/val.bin has 4000 tokens, fewer than one window of block_size+1=4001: use a smaller "
                         "--block_size"),
    ("--dataset=short", "short/val.bin has 10 tokens, fewer than one window of block_size+1=17"),
    ("--dataset=empty", "empty/train.bin has 0 tokens"),
    ("--dataset=badmeta", "badmeta/meta.json"),
    ("--mode=cocomix --sae_path={dir}/none.pt", "none.pt not found"),
    ("--out_dir=", "out_dir is empty"),
    ("--out_dir={dir}/a_file", "cannot write to out_dir"),
    ("--out_dir={dir}/a_file/out", "cannot write to out_dir"),
    *[("--out_dir=/proc/sys", "cannot write to out_dir /proc/sys (not writable)")] * os.path.isdir("/proc/sys"),
]
# (arguments to --init_from=resume --max_iters=8, damage done first, expected message) on a healthy run
BAD_RESUMES = [
    ("--n_layer=3", None, "n_layer=3 contradicts the checkpoint's n_layer=2: a resumed run keeps its settings"),
    ("--learning_rate=1e6", None, "learning_rate=1000000.0 contradicts the checkpoint's learning_rate=0.003"),
    ("--mode=cocomix", None, "mode='cocomix' contradicts the checkpoint's mode='ntp'"),
    ("--block_size=32", None, "block_size=32 contradicts the checkpoint's block_size=16"),
    ("--seed=2", None, "seed=2 contradicts the checkpoint's seed=1337"),
    ("{dir}/wide.py", lambda d: (d / "wide.py").write_text("n_embd = 64\n"), "n_embd=64 contradicts"),
    ("--eval_interval=0", None, "eval_interval=0 must be at least 1"),  # may change on resume, but not to that
    ("--overwrite", None, "give only one of them"),
    *[("--device=cuda", None, "no CUDA device is visible")] * NO_CUDA,
    ("", lambda d: truncate(d / "out" / "ckpt.pt"), "is damaged or not a train.py checkpoint"),
    ("", lambda d: open(d / "out" / "ckpt.pt", "w").close(), "is damaged or not a train.py checkpoint"),
    ("", lambda d: torch.save({"meta": {}}, d / "out" / "ckpt.pt"), "is damaged or not a train.py checkpoint"),
    ("", lambda d: (d / "data" / "toy" / "meta.json").write_text(json.dumps({"vocab_size": 16, "source": "x"})),
     "was re-prepared since"),
]


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """data/toy and out/: a healthy 4-iteration run with a checkpoint, to be copied by each test."""
    root = tmp_path_factory.mktemp("healthy")
    make_dataset(root / "data", "toy")
    train(root, "--max_iters=4", "--eval_interval=4", check=True)
    return root


@pytest.fixture(scope="module")
def refusals(tmp_path_factory, healthy):
    """Every row of BAD_INPUTS and BAD_RESUMES, each in its own directory, run in one batch:
    {row: (CompletedProcess, the directory's snapshot before, after)}."""
    dirs, arg_lists = [], []
    for i, (args, message) in enumerate(BAD_INPUTS):
        d = tmp_path_factory.mktemp(f"bad_input{i}")
        for name, n_train, n_val in (("toy", 20000, 4000), ("short", 20000, 10), ("empty", 0, 4000),
                                     ("badmeta", 20000, 4000)):
            make_dataset(d / "data", name, n_train, n_val)
        (d / "data" / "badmeta" / "meta.json").write_text('{"vocab_size": 16, ')
        (d / "a_file").write_text("not a directory\n")
        dirs.append(d)
        arg_lists.append(toy_args(d, *args.format(dir=d).split()))
    for i, (args, damage, message) in enumerate(BAD_RESUMES):
        d = tmp_path_factory.mktemp(f"bad_resume{i}")
        shutil.copytree(healthy, d, dirs_exist_ok=True)
        if damage:
            damage(d)
        dirs.append(d)
        arg_lists.append(toy_args(d, "--init_from=resume", "--max_iters=8", *args.format(dir=d).split()))
    before = [snapshot(d) for d in dirs]
    results = run_batch(arg_lists)
    return {row: (p, b, snapshot(d)) for row, p, b, d in zip(BAD_INPUTS + BAD_RESUMES, results, before, dirs)}


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_a_bad_setting_or_input_is_refused_in_one_line_and_writes_nothing(refusals, args, message):
    p, before, after = refusals[args, message]
    assert_refused(p, message)
    assert after == before  # in particular no out/


@pytest.mark.parametrize("args, damage, message", BAD_RESUMES)
def test_a_resume_that_cannot_continue_the_run_is_refused_and_changes_nothing(refusals, args, damage, message):
    p, before, after = refusals[args, damage, message]
    assert_refused(p, message)
    assert after == before


@pytest.fixture
def run(healthy, tmp_path):
    """A private copy of the healthy run."""
    shutil.copytree(healthy, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.fixture
def fresh(tmp_path):
    make_dataset(tmp_path / "data", "toy")
    return tmp_path


def weights(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=False)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_a_diverging_run_stops_and_never_overwrites_the_last_good_checkpoint(fresh):
    p = train(fresh, "--learning_rate=1e6", "--max_iters=20", "--eval_interval=4")
    assert_refused(p, "the learning rate (1e+06) is likely too high")
    assert "no checkpoint was written" in p.stdout and not os.path.exists(fresh / "out" / "ckpt.pt")
    # a healthy start (lr 0.1 * (it+1) in a long warmup), then an allowed schedule change on resume sends the
    # learning rate to 1e6: the run stops, and the iteration-4 checkpoint survives untouched
    train(fresh, "--learning_rate=1e6", "--eval_interval=4", "--max_iters=4", "--lr_decay_iters=3000000000",
          "--overwrite", check=True)
    good = weights(fresh / "out")
    p = train(fresh, "--learning_rate=1e6", "--init_from=resume", "--max_iters=8", "--lr_decay_iters=8")
    assert_refused(p, "the learning rate (1e+06) is likely too high")
    assert f"{fresh / 'out' / 'ckpt.pt'} (iteration 4) is kept" in p.stdout
    assert_same_weights(weights(fresh / "out"), good)
    assert not os.path.exists(fresh / "out" / "ckpt.pt.tmp")


def test_a_new_run_into_a_used_out_dir_needs_overwrite(run):
    before = snapshot(run)
    assert_refused(train(run, "--max_iters=2", "--eval_interval=2"),
                   "already holds a run (ckpt.pt, metrics.jsonl): resume it with --init_from=resume, replace it "
                   "with --overwrite")
    assert snapshot(run) == before
    train(run, "--max_iters=2", "--eval_interval=2", "--overwrite", check=True)
    rows = [json.loads(line) for line in open(run / "out" / "metrics.jsonl")]
    assert [r["iter"] for r in rows] == [0, 2]  # the new run's rows only
    assert torch.load(run / "out" / "ckpt.pt", weights_only=False)["iter_num"] == 2


def test_a_killed_runs_leftovers_are_cleaned_up_on_resume(run):
    out = run / "out"
    (out / "ckpt.pt.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")  # a save killed midway
    (out / "metrics.jsonl.tmp").write_text('{"iter": 0')
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 8, "train_lo')  # a row cut short by a kill
    train(run, "--init_from=resume", "--max_iters=8", "--eval_interval=4", check=True)
    assert not os.path.exists(out / "ckpt.pt.tmp") and not os.path.exists(out / "metrics.jsonl.tmp")
    assert [json.loads(line)["iter"] for line in open(out / "metrics.jsonl")] == [0, 4, 8]


def test_a_full_disk_at_save_keeps_the_last_checkpoint(run):
    good = snapshot(run / "out")["ckpt.pt"]
    # a 100 KiB file size limit (Python ignores SIGXFSZ, so the write fails with EFBIG) stands in for a full disk
    args = toy_args(run, "--init_from=resume", "--max_iters=8", "--eval_interval=4")
    p = subprocess.run(["bash", "-c", 'ulimit -f 100 && exec "$@"', "bash", sys.executable, "train.py", *args],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_refused(p, "could not write")
    assert "the disk is full or not writable" in p.stdout and "(iteration 4) is kept" in p.stdout
    assert snapshot(run / "out")["ckpt.pt"] == good and not os.path.exists(run / "out" / "ckpt.pt.tmp")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to a read-only directory anyway")
def test_a_read_only_out_dir_is_refused_before_training(run):
    os.chmod(run / "out", 0o555)
    try:
        assert_refused(train(run, "--init_from=resume", "--max_iters=8"), "cannot write to out_dir")
    finally:
        os.chmod(run / "out", 0o755)


@pytest.mark.skipif(os.name != "posix", reason="the out_dir lock is POSIX flock")
def test_a_second_run_on_an_out_dir_held_by_a_live_run_is_refused(run):
    out = run / "out"
    args = toy_args(run, "--init_from=resume", "--max_iters=1000000", "--eval_interval=1000000",
                    "--log_interval=1000000")
    first = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while open(out / ".lock").read().strip() != str(first.pid):
            assert first.poll() is None and time.time() < deadline, "the first run did not take the lock"
            time.sleep(0.2)
        time.sleep(1)  # let it rewrite metrics.jsonl, which follows the lock
        before = {name: h for name, h in snapshot(out).items() if name in ("ckpt.pt", "metrics.jsonl")}
        p = train(run, "--max_iters=2", "--eval_interval=2", "--overwrite")
        assert_refused(p, f"{out} is in use by another run (pid {first.pid}): wait for it or stop it")
        assert {name: snapshot(out)[name] for name in before} == before  # --overwrite deleted nothing
    finally:
        first.kill()
        first.wait()
    train(run, "--max_iters=2", "--eval_interval=2", "--overwrite", check=True)  # kill -9 released the lock


def test_a_cocomix_run_resumed_without_its_flags_stays_cocomix(tiny_run, tmp_path):
    """Resumed without --mode=cocomix, a CoCoMix run once trained on silently with no concept loss."""
    root, _, _ = tiny_run
    out = tmp_path / "cocomix"
    shutil.copytree(root / "out" / "compare" / "cocomix_s1", out)
    it = torch.load(out / "ckpt.pt", weights_only=False)["iter_num"]
    p = run_script("train.py", "--init_from=resume", f"--out_dir={out}", f"--max_iters={it + 2}", "--eval_interval=2")
    assert f"step {it + 2}: " in p.stdout and "val concept loss" in p.stdout
    assert torch.load(out / "ckpt.pt", weights_only=False)["config"]["mode"] == "cocomix"
    # and a new CoCoMix run cannot keep more concepts than the SAE has
    p = run_script("train.py", f"--data_root={root / 'data'}", "--sae_path=" + str(root / "out" / "sae" / "sae.pt"),
                   "--mode=cocomix", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16",
                   "--k_concepts=100000", f"--out_dir={tmp_path / 'new'}", "--device=cpu", check=False)
    assert_refused(p, "k_concepts=100000 exceeds the SAE's 64 concepts: use 1..64")
    assert not os.path.exists(tmp_path / "new")
