"""Inputs that prepare.py and sae.py cannot work with: each stops, before writing anything, with one line that
starts with "error:", says what is wrong and how to fix it, and no traceback. Nothing here touches the network:
an offline machine is simulated by making the download raise."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script
from test_sae import make_teacher_and_data


def assert_refused(returncode, output, fragment):
    lines = output.strip().splitlines()
    assert returncode != 0 and "Traceback" not in output, output
    assert lines and lines[-1].startswith("error:") and fragment in lines[-1], output


def tree(path):
    """Every file under path with its bytes, to show that a refused command changed nothing."""
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(path) for f in fs}


# -----------------------------------------------------------------------------
# prepare.py

OFFLINE = {  # run before prepare.py, in its process: the download it would make raises as it does offline
    "tiktoken": "import tiktoken.load\n"
                "def offline(url): raise ConnectionError(f'Failed to resolve {url}')\n"
                "tiktoken.load.read_file = offline\n",
    "url": "import urllib.error, urllib.request\n"
           "def offline(*a, **k): raise urllib.error.URLError('[Errno -2] Name or service not known')\n"
           "urllib.request.urlopen = offline\n",
    "hub": "import datasets, tiktoken\n"
           "def offline(*a, **k): raise ConnectionError(\"Couldn't reach 'Skylion007/openwebtext' on the Hub\")\n"
           "datasets.load_dataset = offline\n"
           "from test_prepare import tiny_encoding\n"
           "tiktoken.get_encoding = lambda name: tiny_encoding()\n",
}
PREPARE = [  # (id, arguments, what the error says, the offline stand-in)
    ("missing-file", ["--input={in}/missing.txt"], "error: input file {in}/missing.txt not found: check the path",
     None),
    ("directory", ["--input={in}"], "input {in} is a directory: list the text files in it", None),
    ("empty-list-element", ["--input={in}/a.txt,,{in}/a.txt"], "has an empty file name: drop the extra comma", None),
    ("trailing-comma", ["--input={in}/a.txt,"], "has an empty file name: drop the extra comma", None),
    ("not-utf8", ["--input={in}/latin1.txt"], "input file {in}/latin1.txt is not UTF-8 text (byte 3 is 0xe9)", None),
    ("empty-file", ["--input={in}/blank.txt"], "input file {in}/blank.txt is empty", None),
    ("too-short", ["--input={in}/short.txt"], "5 tokens are too few to split with val_fraction=0.1: each split needs "
                                              "at least 2 tokens (train.py needs block_size + 1)", None),
    ("one-val-token", ["--input={in}/a.txt", "--val_fraction=0.05"], "each split needs at least 2 tokens", None),
    ("val-fraction-0", ["--val_fraction=0"], "val_fraction=0 must be in (0, 1)", None),
    ("val-fraction-1", ["--val_fraction=1.0"], "val_fraction=1.0 must be in (0, 1)", None),
    ("val-fraction-1.5", ["--val_fraction=1.5"], "error: val_fraction=1.5 must be in (0, 1)", None),
    ("val-fraction-negative", ["--val_fraction=-0.1"], "val_fraction=-0.1 must be in (0, 1)", None),
    ("no-train-story", ["--n_docs=2", "--val_fraction=0.9"], "val_fraction=0.9 of n_docs=2 stories leaves none to "
                                                             "train on", None),
    ("too-few-docs", ["--n_docs=1"], "error: n_docs=1 must be at least 2", None),
    ("negative-seed", ["--seed=-1"], "error: seed=-1 must be at least 0", None),
    ("unknown-tokenizer", ["--tokenizer=bpe"], "error: unknown tokenizer='bpe': use chars or gpt2", None),
    ("tokenizer-for-concepts", ["--tokenizer=gpt2"], "the concept world has its own words tokenizer: drop "
                                                     "--tokenizer=gpt2", None),
    ("unknown-dataset", ["--dataset=bogus"], "error: unknown dataset 'bogus': use concepts, shakespeare or "
                                             "openwebtext, or build one from local files with --input=FILE[,FILE...] "
                                             "--dataset=NAME", None),
    ("dataset-with-slash", ["--input={in}/a.txt", "--dataset=a/b"], "dataset name 'a/b' must be a plain directory "
                                                                     "name", None),
    ("empty-dataset-name", ["--input={in}/a.txt", "--dataset="], "dataset name '' must be a plain directory name",
     None),
    ("owt-chars", ["--dataset=openwebtext", "--tokenizer=chars"], "error: openwebtext is prepared with the gpt2 "
                                                                 "tokenizer only: drop --tokenizer=chars", None),
    ("owt-num-proc", ["--dataset=openwebtext", "--num_proc=0"], "num_proc=0 must be at least 1", None),
    ("data-root-is-a-file", ["--n_docs=20", "--data_root={in}/a.txt/data"],
     "cannot create {in}/a.txt/data/concepts (Not a directory)", None),
    ("offline-gpt2", ["--input={in}/a.txt", "--tokenizer=gpt2"], "could not download GPT-2's BPE files (vocab.bpe, "
     "encoder.json from openaipublic.blob.core.windows.net) for tiktoken (ConnectionError): connect once, or copy a "
     "cache made where there is a network", "tiktoken"),
    ("offline-owt-bpe", ["--dataset=openwebtext"], "set TIKTOKEN_CACHE_DIR=DIR here", "tiktoken"),
    ("offline-owt", ["--dataset=openwebtext"], "could not load Skylion007/openwebtext@refs/convert/parquet from the "
                                               "Hugging Face Hub (ConnectionError", "hub"),
    ("offline-shakespeare", ["--dataset=shakespeare"], "could not download https://raw.githubusercontent.com/karpathy/"
     "char-rnn/master/data/tinyshakespeare/input.txt (<urlopen error [Errno -2] Name or service not known>): check the "
     "network, or save the file yourself and pass --input=path/to/input.txt --dataset=shakespeare", "url"),
]


@pytest.mark.parametrize("name, args, error, offline", PREPARE, ids=[row[0] for row in PREPARE])
def test_prepare_refuses_what_it_cannot_make_a_dataset_of_and_writes_nothing(tmp_path, name, args, error, offline):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("hello world\n" * 3)
    (inputs / "short.txt").write_text("hello")
    (inputs / "blank.txt").write_text(" \n")
    (inputs / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    args = [a.replace("{in}", str(inputs)) for a in args]
    if not any(a.startswith("--data_root") for a in args):
        args.append(f"--data_root={tmp_path / 'data'}")
    before = tree(tmp_path)
    if offline:  # the stand-in runs prepare.py as `python prepare.py ARGS` would, after making downloads fail
        code = OFFLINE[offline] + "import runpy; runpy.run_path('prepare.py', run_name='__main__')"
        env = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty_cache"), "PYTHONPATH": os.path.join(ROOT, "tests")}
        p = run_script("-c", code, *args, check=False, env=env)
    else:
        p = run_script("prepare.py", *args, check=False)
    assert_refused(p.returncode, p.stdout, error.replace("{in}", str(inputs)))
    assert tree(tmp_path) == before and not (tmp_path / "data").exists() and not (tmp_path / "empty_cache").exists()


# -----------------------------------------------------------------------------
# sae.py: every row runs in one process (importing torch once), as `python sae.py ARGS` would

SAE_ARGS = ["--n_latents=32", "--k=4", "--batch_size=256", "--buffer_tokens=1024", "--eval_tokens=2048",
            "--max_tokens=2048", "--device=cpu"]
SAE = [  # (id, arguments, what the error says); {r} is the directory the fixture below fills
    ("k-0", ["--k=0"], "error: k=0 must be at least 1"),
    ("k-above-latents", ["--k=33"], "error: k=33 is more than n_latents=32: TopK keeps k of the latents"),
    ("no-latents", ["--n_latents=0"], "n_latents=0 must be at least 1"),
    ("batch-0", ["--batch_size=0"], "batch_size=0 must be at least 1"),
    ("batch-above-half-the-buffer", ["--batch_size=40000"], "error: batch_size=40000 is more than half of "
     "buffer_tokens=1024, so no batch ever leaves the shuffle buffer: use --buffer_tokens=80000 or more"),
    ("negative-max-tokens", ["--max_tokens=-1"], "max_tokens=-1 must be at least 0"),
    ("eval-tokens-below-a-window", ["--eval_tokens=8"], "error: eval_tokens=8 is less than one window of "
                                                        "block_size=16 tokens: use --eval_tokens=16 or more"),
    ("val-shorter-than-a-window", ["--dataset=shortval"], "val.bin has 10 tokens, fewer than one window of "
                                                          "block_size+1=17: use a smaller --block_size, or prepare "
                                                          "more text"),
    ("train-shorter-than-a-window", ["--dataset=shorttrain"], "train.bin has 10 tokens, fewer than one window"),
    ("no-dataset", ["--dataset=nope"], "nope/meta.json not found: run `python prepare.py --dataset=nope"),
    ("meta-json-damaged", ["--dataset=brokenmeta"], "brokenmeta/meta.json is damaged (JSONDecodeError): run `python "
                                                    "prepare.py --dataset=brokenmeta"),
    ("learning-rate-0", ["--learning_rate=0"], "learning_rate=0.0 must be in (0, 1]"),
    ("learning-rate-huge", ["--learning_rate=1e6"], "learning_rate=1000000.0 must be in (0, 1]"),
    ("learning-rate-inf", ["--learning_rate=1e999"], "learning_rate=inf must be in (0, 1]"),
    ("k-aux-0", ["--k_aux=0"], "k_aux=0 must be at least 1"),
    ("negative-aux-coef", ["--aux_coef=-1"], "aux_coef=-1.0 must be in [0, inf)"),
    ("dead-tokens-0", ["--dead_tokens=0"], "dead_tokens=0 must be at least 1"),
    ("log-interval-0", ["--log_interval=0"], "log_interval=0 must be at least 1"),
    ("ckpt-interval-0", ["--ckpt_interval=0"], "ckpt_interval=0 must be at least 1"),
    ("block-size-1", ["--block_size=1"], "block_size=1 leaves no position to train on"),
    ("negative-block-size", ["--block_size=-3"], "block_size=-3 must be at least 0"),
    ("block-size-above-the-teacher", ["--block_size=99"], "block_size=99 exceeds the teacher's 16"),
    ("layer-out-of-range", ["--layer=3"], "layer=3 is out of range: the teacher has blocks 0..2"),
    ("unknown-device", ["--device=tpu9"], "unknown device='tpu9': use auto, cpu, cuda or cuda:N"),
    ("unknown-init-from", ["--init_from=bogus"], "unknown init_from='bogus'"),
    ("teacher-missing", ["--teacher_path={r}/nowhere"], "teacher checkpoint {r}/nowhere not found"),
    ("teacher-truncated", ["--teacher_path={r}/truncated.pt"], "{r}/truncated.pt is damaged"),
    ("teacher-empty", ["--teacher_path={r}/empty.pt"], "{r}/empty.pt is damaged"),
    ("teacher-is-an-sae", ["--teacher_path={r}/trained/sae.pt"], "is an SAE (sae.py), not a train.py checkpoint"),
    ("teacher-not-finite", ["--teacher_path={r}/nan.pt"], "error: the SAE's loss is nan at step 1: the teacher's "
                                                          "activations are not finite: check its checkpoint"),
    ("openai-file-damaged", ["--init_from=openai:{r}/truncated.pt"],
     "{r}/truncated.pt is damaged or not an OpenAI SAE"),
    ("out-dir-is-a-file", ["--out_dir={r}/empty.pt/sae"], "cannot write to out_dir {r}/empty.pt/sae (Not a "
                                                          "directory): choose a writable --out_dir"),
    ("new-run-over-a-trained-sae", ["--out_dir={r}/trained"], "error: {r}/trained already holds a run (sae.pt): "
     "resume it with --init_from=resume, replace it with --overwrite, or use another --out_dir"),
    ("resume-missing", ["--init_from=resume"], "sae.pt not found: train one with `python sae.py`"),
    ("resume-truncated", ["--init_from=resume", "--out_dir={r}/truncated"], "error: {r}/truncated/sae.pt is damaged "
     "or not an SAE checkpoint (cut short or corrupt: "),
    ("resume-empty", ["--init_from=resume", "--out_dir={r}/empty"], "{r}/empty/sae.pt is damaged or not an SAE "
     "checkpoint (the file is empty): train the SAE again (python sae.py --overwrite --out_dir={r}/empty)"),
    ("resume-contradicting-a-setting", ["--init_from=resume", "--out_dir={r}/trained", "--k=8"],
     "error: k=8 contradicts the checkpoint's k=4: a resumed run keeps its settings"),
    ("resume-given-a-default-that-contradicts", ["--init_from=resume", "--out_dir={r}/trained", "--k=16"],
     "error: k=16 contradicts the checkpoint's k=4"),  # given is given, even at sae.py's default
]
if not torch.cuda.is_available():
    SAE.append(("cuda-without-cuda", ["--device=cuda"], "error: --device=cuda but no CUDA device is visible: use "
                                                        "--device=cpu"))

STOPPED_WHILE_TRAINING = {"teacher-not-finite"}

DRIVER = """
import contextlib, io, json, runpy, sys, traceback
results = []
for argv in json.loads(sys.argv[1]):
    out, code = io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        sys.argv = argv
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as e:  # what the interpreter does with it: print a message, exit 1
            code = e.code if isinstance(e.code, int) or e.code is None else (print(e.code) or 1)
        except BaseException:
            code = 1
            traceback.print_exc()
    results.append((code, out.getvalue()))
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def sae_refusals(tmp_path_factory):
    """{row id: (exit code, output, files before, files after)} for every row of SAE, and the fixture's directory."""
    r = tmp_path_factory.mktemp("guards")
    teacher_path, data_root = make_teacher_and_data(r)
    for name, split in (("shortval", "val"), ("shorttrain", "train")):
        shutil.copytree(os.path.join(data_root, "toyworld"), os.path.join(data_root, name))
        np.arange(10, dtype=np.uint16).tofile(os.path.join(data_root, name, f"{split}.bin"))
    shutil.copytree(os.path.join(data_root, "toyworld"), os.path.join(data_root, "brokenmeta"))
    open(os.path.join(data_root, "brokenmeta", "meta.json"), "w").write('{"dataset": "brokenm')
    run_script("sae.py", f"--teacher_path={teacher_path}", f"--out_dir={r / 'trained'}", *SAE_ARGS)
    data = open(r / "trained/sae.pt", "rb").read()
    (r / "truncated").mkdir(), (r / "empty").mkdir()
    (r / "truncated/sae.pt").write_bytes(data[:len(data) // 2]), (r / "empty/sae.pt").write_bytes(b"")
    (r / "truncated.pt").write_bytes(open(teacher_path, "rb").read()[:5000]), (r / "empty.pt").write_bytes(b"")
    ckpt = torch.load(teacher_path, weights_only=False)
    ckpt["model"]["transformer.h.0.attn.c_attn.weight"][0, 0] = float("nan")
    torch.save(ckpt, r / "nan.pt")
    argvs = [["sae.py", f"--teacher_path={teacher_path}", f"--out_dir={r / 'out' / row[0]}", *SAE_ARGS,
              *(a.replace("{r}", str(r)) for a in row[1])] for row in SAE]
    before = tree(r)
    p = run_script("-c", DRIVER, json.dumps(argvs))
    results = json.loads(p.stdout.strip().splitlines()[-1])
    return {row[0]: result for row, result in zip(SAE, results)}, r, before, tree(r)


@pytest.mark.parametrize("name, args, error", SAE, ids=[row[0] for row in SAE])
def test_sae_refuses_settings_data_and_checkpoints_it_cannot_train_with_and_writes_nothing(sae_refusals, name, args,
                                                                                          error):
    results, r, before, after = sae_refusals
    assert_refused(*results[name], error.replace("{r}", str(r)))
    outs = str(r / "out") + os.sep
    assert {path: data for path, data in after.items() if not path.startswith(outs)} == before  # nothing else changed
    if name in STOPPED_WHILE_TRAINING:  # by then it holds its out_dir: the lock is all it leaves there
        assert os.listdir(r / "out" / name) == [".lock"]
    else:
        assert not (r / "out" / name).exists()  # no row wrote, or removed, a byte
