"""Bad inputs to the scripts that read results (sample, eval, steer, concepts, compare, pipeline): each stops with
one line that starts with "error:", no traceback, and writes nothing. Plus: a pipeline's stage dies with it.

Every row runs its script in this process, as `python SCRIPT ARGS` would run it from the workspace below
(a process per row would cost seconds of imports each); one row also runs as a real process, to show the two agree.
"""
import contextlib
import io
import json
import os
import runpy
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script
from model import GPT, GPTConfig
from prepare import fingerprint, prepare_concepts
from sae import SAE, save_checkpoint
from teacher import load_teacher, teacher_identity


pytestmark = pytest.mark.usefixtures("one_thread")


def save_run(run_dir, model, meta, **config):
    """A train.py out_dir: ckpt.pt in train.py's format (its dataset's meta recorded) and metrics.jsonl."""
    os.makedirs(run_dir)
    torch.save({"model": model.state_dict(), "model_args": asdict(model.config), "iter_num": 10, "meta": meta,
                "config": {"dataset": meta["dataset"], "data_root": "data", **config}}, f"{run_dir}/ckpt.pt")
    with open(f"{run_dir}/metrics.jsonl", "w") as f:
        f.writelines(json.dumps({"iter": i, "tokens": 64 * i, "val_loss": 4.0 - i / 10}) + "\n" for i in (0, 10))
    return run_dir


def tiny_gpt(vocab_size, n_concepts=0):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16,
                         n_concepts=n_concepts, k_concepts=4, insert_layer=1))


def save_sae(sae_dir, teacher_path, meta, n_latents=16, teacher_id=None):
    """An sae.pt as sae.py saves it, on teacher_path's layer 0, trained on the dataset of meta."""
    os.makedirs(sae_dir, exist_ok=True)
    info = {"teacher_path": teacher_path, "layer": 0, "dataset": "concepts", "data_root": "data", "block_size": 16,
            "tokenizer": "words", "config": {}, "data_fingerprint": fingerprint(meta),
            "teacher_id": teacher_id or teacher_identity(teacher_path, *load_teacher(teacher_path, "cpu"))}
    save_checkpoint(f"{sae_dir}/sae.pt", SAE(16, n_latents, 4), {"step": 1, "tokens": 1}, {"fvu": 0.1}, info)
    return f"{sae_dir}/sae.pt"


def write(path, content):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Data, runs and broken files, all under one directory that the rows run in."""
    ws = tmp_path_factory.mktemp("ws")
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        world = prepare_concepts("data", n_docs=40, val_fraction=0.25)
        itos = list("abcdefghijklmnop")
        chars = {"dataset": "chars", "tokenizer": "chars", "vocab_size": 16, "itos": itos, "eot_token": None}
        os.makedirs("data/chars")
        for split in ("train", "val"):
            (np.arange(400) % 16).astype(np.uint16).tofile(f"data/chars/{split}.bin")
        write("data/chars/meta.json", json.dumps(chars))
        save_run("runs/ntp_s1", tiny_gpt(64), chars)
        save_run("runs/stale", tiny_gpt(64), {**chars, "source": "another text"})  # data re-prepared since
        save_run("runs/cocomix_chars", tiny_gpt(64, 16), chars, sae_path="sae/sae.pt")
        teacher = save_run("teacher", tiny_gpt(384), world)
        save_sae("sae", teacher, world)
        write("sae/concepts.json", json.dumps({"latents": [{"id": j, "description": "x"} for j in range(16)],
                                               "planted": [{"name": "topic=sea", "latent": 3}]}))
        for name, concepts_json in (("nojson", None), ("badjson", "{"), ("otherjson", json.dumps(
                {"latents": [{"id": 0, "description": "x"}], "planted": [{"name": "topic=sea", "latent": 0}]}))):
            save_sae(f"sae_{name}", teacher, world)
            if concepts_json:
                write(f"sae_{name}/concepts.json", concepts_json)
        save_sae("sae_8", teacher, world, n_latents=8)
        save_sae("sae_stale", teacher, {**world, "seed": 7})  # the data was prepared again since
        save_sae("sae_old_teacher", teacher, world, teacher_id={"data": "-", "iter_num": 1, "weights": "-"})
        for name, sae_path in (("student", "sae/sae.pt"), ("student_nosae", "missing/sae.pt"),
                               ("student_badsae", "bad/truncated.pt"), ("student_sae8", "sae_8/sae.pt"),
                               ("student_nojson", "sae_nojson/sae.pt"), ("student_badjson", "sae_badjson/sae.pt"),
                               ("student_otherjson", "sae_otherjson/sae.pt"), ("student_ckptsae", "teacher/ckpt.pt"),
                               ("student_oldteacher", "sae_old_teacher/sae.pt")):
            save_run(name, tiny_gpt(384, 16), world, sae_path=sae_path)
        good = open("runs/ntp_s1/ckpt.pt", "rb").read()
        write("bad/truncated.pt", good[:len(good) // 2])
        write("bad/empty.pt", b"")
        write("bad/text.pt", "not a checkpoint\n")
        torch.save([1, 2], "bad/list.pt")
        torch.save({"weights": 1}, "bad/nomodel.pt")
        os.makedirs("bad/ckpt_is_dir/ckpt.pt")
        os.makedirs("bad/empty_run")
        write("bad/latin1.txt", "caf\xe9".encode("latin-1"))
        os.makedirs("bad/tasks/piqa.jsonl")
        write("bad/wino.jsonl", json.dumps({"sentence": "the _", "option1": "the", "option2": "the", "answer": "1"}))
        write("bad/results.json", "{not json")
        write("bad/results_list.json", "[1, 2]")
        write("runs_empty/ntp_s1/metrics.jsonl", "")
        write("runs_bad/ntp_s1/metrics.jsonl", '{"iter": 0, "tokens": 0, "val_loss": 4.0}\n{"iter": 10, "tok\n')
        write("tiny.py", "max_iters = 1\n")
        os.makedirs("pipe/out/teacher")  # a run the pipeline has no stamp for
        write("pipe/out/teacher/ckpt.pt", good)
        os.symlink(os.path.abspath("data"), "pipe/data")
    finally:
        os.chdir(cwd)
    return ws


CONFIGS = " ".join(f"--{stage}_config=tiny.py" for stage in ("teacher", "ntp", "cocomix"))
TRUNCATED = "bad/truncated.pt is damaged or not a train.py checkpoint (cut short or corrupt: "
ROWS = [
    # sample.py: settings, the prompt, checkpoints of every wrong kind
    ("sample.py", "--out_dir=runs/ntp_s1 --temperature=-1", "temperature=-1.0 must be at least 0"),
    ("sample.py", "--out_dir=runs/ntp_s1 --top_k=-5", "top_k=-5 must be at least 0"),
    ("sample.py", "--out_dir=runs/ntp_s1 --num_samples=0", "num_samples=0 must be at least 1"),
    ("sample.py", "--out_dir=runs/ntp_s1 --max_new_tokens=-1", "max_new_tokens=-1 must be at least 0"),
    ("sample.py", "--out_dir=runs/ntp_s1 --init_from=gtp2", "unknown init_from='gtp2'"),
    ("sample.py", "--out_dir=runs/ntp_s1 --start=FILE:missing.txt", "prompt file 'missing.txt' not found"),
    ("sample.py", "--out_dir=runs/ntp_s1 --start=FILE:bad", "prompt file 'bad' is a directory"),
    ("sample.py", "--out_dir=runs/ntp_s1 --start=FILE:bad/latin1.txt", "prompt file bad/latin1.txt is not UTF-8"),
    ("sample.py", "--out_dir=runs/ntp_s1 --start=xyz", "the prompt does not fit the model's tokenizer: character 'x'"),
    ("sample.py", "--out_dir=runs/ntp_s1 --dtype=float64", "unknown dtype='float64'"),
    ("sample.py", "--out_dir=runs/ntp_s1 --device=gpu", "unknown device='gpu': use auto, cpu, cuda or cuda:N"),
    ("sample.py", "--out_dir=bad/empty_run", "bad/empty_run/ckpt.pt not found: train a model first"),
    ("sample.py", "--out_dir=bad/truncated.pt", TRUNCATED),
    ("sample.py", "--out_dir=bad/empty.pt", "bad/empty.pt is damaged or not a train.py checkpoint (the file is empty)"),
    ("sample.py", "--out_dir=bad/text.pt", "bad/text.pt is damaged or not a train.py checkpoint (not a torch.save"),
    ("sample.py", "--out_dir=bad/list.pt", "bad/list.pt is damaged or not a train.py checkpoint (it holds a list)"),
    ("sample.py", "--out_dir=bad/nomodel.pt", "bad/nomodel.pt is damaged or not a train.py checkpoint (it holds no"),
    ("sample.py", "--out_dir=bad/ckpt_is_dir", "bad/ckpt_is_dir/ckpt.pt is a directory, not a train.py checkpoint"),
    ("sample.py", "--out_dir=sae/sae.pt", "sae/sae.pt is an SAE (sae.py), not a train.py checkpoint"),
    ("sample.py", "--out_dir=runs/ntp_s1 --start=abc --show_concepts", "need a CoCoMix model"),
    ("sample.py", "--out_dir=student --steer=99:2", "concept 99 does not exist"),
    ("sample.py", "--out_dir=student --steer=topic=moon:2", "no planted concept 'topic=moon' (python concepts.py"),
    ("sample.py", "--out_dir=student_nosae --compare_teacher", "SAE checkpoint missing/sae.pt not found"),
    ("sample.py", "--out_dir=student_badsae --compare_teacher", "bad/truncated.pt is damaged"),
    ("sample.py", "--out_dir=student_sae8 --compare_teacher", "sae_8/sae.pt has 8 latents but the student predicts 16"),
    ("sample.py", "--out_dir=student_badjson --show_concepts", "sae_badjson/concepts.json is damaged or not a"),
    # eval.py
    ("eval.py", "runs/ntp_s1 --limit=-1", "limit=-1 must be at least 0"),
    ("eval.py", "runs/ntp_s1 --batch_size=0", "batch_size=0 must be at least 1"),
    ("eval.py", "runs/ntp_s1 --probe_prefix=0", "probe_prefix=0 must be at least 1"),
    ("eval.py", "runs/ntp_s1 --dtype=fp8", "unknown dtype='fp8'"),
    ("eval.py", "runs/ntp_s1 --device=cuda:99", "--device=cuda:99 but "),  # no CUDA device, or fewer than 100
    ("eval.py", "runs/ntp_s1 --out=tiny.py", "--out=tiny.py is a file"),
    ("eval.py", "bad/empty_run", "bad/empty_run/ckpt.pt not found"),
    ("eval.py", "bad/truncated.pt", TRUNCATED),
    ("eval.py", "sae/sae.pt", "sae/sae.pt is an SAE (sae.py), not a train.py checkpoint"),
    ("eval.py", "runs/stale", "data/chars/meta.json was re-prepared since runs/stale was trained (its fingerprint is"),
    ("eval.py", "runs/ntp_s1 --dataset=concepts", "data/concepts is tokenized with words"),
    ("eval.py", "runs/ntp_s1 --tasks=piqa --task_dir=bad/tasks", "task file bad/tasks/piqa.jsonl is a directory"),
    ("eval.py", "runs/ntp_s1 --tasks=piqa=bad/latin1.txt", "bad/latin1.txt is not UTF-8 text"),
    ("eval.py", "teacher --tasks=winogrande=bad/wino.jsonl", "winogrande row 1: the continuation ' ' encodes to no "
     "tokens"),
    # steer.py
    ("steer.py", "--out_dir=runs/ntp_s1", "runs/ntp_s1 is not a CoCoMix model"),
    ("steer.py", "--out_dir=runs/cocomix_chars", "runs/cocomix_chars was not trained on a concept world"),
    ("steer.py", "--out_dir=student --scales=-10,x", "bad steering scale 'x' in --scales=-10,x"),
    ("steer.py", "--out_dir=student --scales=nan", "bad steering scale 'nan'"),
    ("steer.py", "--out_dir=student --n_samples=0", "n_samples=0 must be at least 1"),
    ("steer.py", "--out_dir=student --max_new_tokens=0", "max_new_tokens=0 must be at least 1"),
    ("steer.py", "--out_dir=student --temperature=-0.5", "temperature=-0.5 must be at least 0"),
    ("steer.py", "--out_dir=student --device=tpu", "unknown device='tpu'"),
    ("steer.py", "--out_dir=bad/truncated.pt", TRUNCATED),
    ("steer.py", "--out_dir=student_nosae", "SAE checkpoint missing/sae.pt not found"),
    ("steer.py", "--out_dir=student_badsae", "bad/truncated.pt is damaged"),
    ("steer.py", "--out_dir=student_ckptsae", "teacher/ckpt.pt is not an SAE checkpoint"),
    ("steer.py", "--out_dir=student_oldteacher", "sae_old_teacher/sae.pt cannot be used: the teacher at teacher was "
     "retrained since"),
    ("steer.py", "--out_dir=student_sae8", "sae_8/sae.pt has 8 latents but the student predicts 16 concepts"),
    ("steer.py", "--out_dir=student_nojson", "sae_nojson/concepts.json not found: describe the SAE's concepts"),
    ("steer.py", "--out_dir=student_badjson", "sae_badjson/concepts.json is damaged or not a concepts.json"),
    ("steer.py", "--out_dir=student_otherjson", "sae_otherjson/concepts.json describes 1 latents but the SAE has 16"),
    # concepts.py
    ("concepts.py", "--sae_path=missing/sae.pt", "SAE checkpoint missing/sae.pt not found"),
    ("concepts.py", "--sae_path=bad/empty_run", "bad/empty_run/sae.pt not found"),
    ("concepts.py", "--sae_path=bad/empty.pt", "bad/empty.pt is damaged"),
    ("concepts.py", "--sae_path=teacher/ckpt.pt", "teacher/ckpt.pt is not an SAE checkpoint"),
    ("concepts.py", "--sae_path=sae_stale/sae.pt", "data/concepts/meta.json was re-prepared since sae_stale/sae.pt "
     "was trained"),
    ("concepts.py", "--sae_path=sae_old_teacher", "sae_old_teacher cannot be used: the teacher at teacher was "
     "retrained since"),
    ("concepts.py", "--eval_tokens=0", "eval_tokens=0 must be at least 1"),
    ("concepts.py", "--sae_path=sae/sae.pt --eval_tokens=8", "no window of 16 tokens to read the latents on"),
    ("concepts.py", "--context=0", "context=0 must be at least 1"),
    ("concepts.py", "--match_auroc=1.5", "match_auroc=1.5 must be in [0, 1]"),
    ("concepts.py", "--device=cuda:99", "--device=cuda:99 but "),
    ("concepts.py", "--sae_path=sae/sae.pt --out=bad", "cannot write --out=bad: name a file in an existing directory"),
    # compare.py
    ("compare.py", "runs_empty", "runs_empty/ntp_s1/metrics.jsonl is empty: the run has not evaluated yet"),
    ("compare.py", "runs_bad", "runs_bad/ntp_s1/metrics.jsonl line 2 is not a train.py metrics row"),
    ("compare.py", "bad/results.json", "bad/results.json is not JSON"),
    ("compare.py", "bad/results_list.json", "bad/results_list.json is not an eval.py results.json"),
    ("compare.py", "nowhere", "'nowhere' is neither a runs directory nor an eval.py results.json"),
    # pipeline.py: its own settings, and a run it did not make
    ("pipeline.py", "--n_seeds=0", "n_seeds=0 must be at least 1"),
    ("pipeline.py", "--max_iters=0", "max_iters=0 must be at least 1"),
    ("pipeline.py", "--steer_samples=0", "steer_samples=0 must be at least 1"),
    ("pipeline.py", "--teacher_config=nope.py", "teacher_config=nope.py not found"),
    ("pipeline.py", f"--out_root=tiny.py {CONFIGS}", "out_root=tiny.py is a file"),
    ("pipeline.py", f"--dataset=nope {CONFIGS}", "data/nope not found: run `python prepare.py --dataset=nope` first"),
    ("pipeline.py", f"--data_root=pipe/data --out_root=pipe/out {CONFIGS}",
     "pipe/out/teacher holds a run the pipeline did not record"),
    # arms.py: its arms, its grid and its configs, before any stage runs
    ("arms.py", "--arms=ntp,foo", "unknown arm(s) foo: choose from ntp, kd, pause"),
    ("arms.py", "--lrs=2e-3,fast", "lrs='2e-3,fast' must be positive numbers separated by commas"),
    ("arms.py", "--lrs=0", "lrs='0' must be positive numbers"),
    ("arms.py", "--jobs=0", "jobs=0 must be at least 1"),
    ("arms.py", f"{CONFIGS} --ntp_config=nope.py", "ntp_config=nope.py not found"),
    ("arms.py", f"--data_root=pipe/data --out_root=pipe/out {CONFIGS}",
     "pipe/out/teacher holds a run the pipeline did not record"),
    # payoff.py: its axes, budgets and arms, the configs and arms.py's rates, before anything runs
    ("payoff.py", "--budgets=1:3,4:0", "budgets='1:3,4:0' must be budget:seeds pairs of positive integers"),
    ("payoff.py", "--budgets=1x", "budgets='1x' must be budget:seeds pairs"),
    ("payoff.py", "--arms=kd,cocomix", "arms='kd,cocomix' must name ntp and arms of arms.py"),
    ("payoff.py", "--axes=tokens,width", "axes='tokens,width': choose from tokens, depth, teacher"),
    ("payoff.py", "--n_docs=1", "n_docs=1 must be at least 2"),
    ("payoff.py", "--axes=tokens --teacher_config=tiny.py --ntp_config=tiny.py --cocomix_config=nope.py",
     "config file(s) nope.py not found"),
    ("payoff.py", "--axes=tokens --teacher_config=tiny.py --ntp_config=tiny.py --cocomix_config=tiny.py "
     "--rates=nope.json", "nope.json not found: run `python arms.py` first"),
    # labels.py: its settings and the SAE it reads
    ("labels.py", "--block_size=0", "block_size=0 must be at least 1"),
    ("labels.py", "--sae_path=nope/sae.pt", "nope/sae.pt not found"),
    ("labels.py", "--dataset=nope", "data/nope/train.bin not found: run `python prepare.py --dataset=nope` first"),
]


def snapshot(root):
    """Every file and directory under root, with size and modification time."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(d, name))
            out[os.path.relpath(os.path.join(d, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


def run_here(script, args, cwd):
    """(exit code, output) of `python SCRIPT ARGS` run in cwd, in this process: SystemExit is the exit, any other
    exception what a user would see as a traceback."""
    out, argv, handler, old_cwd = io.StringIO(), sys.argv, signal.getsignal(signal.SIGTERM), os.getcwd()
    sys.argv = [script, *args]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) or e.code is None else (print(e.code, file=sys.stderr) or 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
        os.chdir(old_cwd)
        signal.signal(signal.SIGTERM, handler)  # pipeline.py installs its own
    return code, out.getvalue()


@pytest.mark.parametrize("script, args, expected", ROWS, ids=[f"{s[:-3]}: {a}" for s, a, _ in ROWS])
def test_a_bad_input_stops_in_one_line_and_writes_nothing(workspace, script, args, expected):
    before = snapshot(workspace)
    code, output = run_here(script, args.split(), workspace)
    last = output.strip().splitlines()[-1] if output.strip() else ""
    assert code not in (0, None), output
    assert "Traceback" not in output, output
    assert last.startswith("error: ") and expected in last, output
    assert snapshot(workspace) == before, "it wrote or changed files"


def test_a_real_process_gives_the_same_one_line_error(workspace):
    p = run_script(os.path.join(ROOT, "sample.py"), "--out_dir=bad/truncated.pt", check=False, cwd=workspace)
    assert p.returncode == 1 and "Traceback" not in p.stdout
    assert p.stdout.strip().splitlines()[-1].startswith(f"error: {TRUNCATED}")


def children(pid):
    """{child pid: its command line} of a process, from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                with open(f"/proc/{entry}/cmdline") as f:
                    out[int(entry)] = f.read().replace("\0", " ")
        except (OSError, ValueError, IndexError):
            continue
    return out


def alive(pid):
    """True while pid runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_stage_dies_with_the_pipeline(workspace, tmp_path, sig):
    (tmp_path / "long.py").write_text("n_layer, n_head, n_embd, block_size, batch_size = 1, 1, 8, 8, 2\n"
                                      "max_iters, eval_interval, eval_iters = 10**7, 10**7, 1\n")
    log = open(tmp_path / "log.txt", "w")
    args = [f"--data_root={workspace}/data", f"--out_root={tmp_path}/out", f"--teacher_config={tmp_path}/long.py"]
    pipeline = subprocess.Popen([sys.executable, "pipeline.py", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    child = None
    try:
        for _ in range(600):  # the teacher's train.py starts within seconds
            child = next((pid for pid, cmd in children(pipeline.pid).items() if "train.py" in cmd), None)
            if child or pipeline.poll() is not None:
                break
            time.sleep(0.1)
        assert child, open(tmp_path / "log.txt").read()
        time.sleep(1)  # let it get going
        os.kill(pipeline.pid, sig)
        pipeline.wait(timeout=30)
        deadline = time.time() + 10
        while alive(child) and time.time() < deadline:
            time.sleep(0.1)
        assert not alive(child), "the teacher's train.py outlived the pipeline"
    finally:
        for pid in (child, pipeline.pid):
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
