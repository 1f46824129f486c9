import json
import os

import pytest
import torch

from configurator import configure
from conftest import run_script

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4", "--eval_iters=4",
        "--log_interval=1", "--device=cpu", "--learning_rate=3e-3"]


def train(data, out_dir, *extra, torchrun=False, check=True):
    data_root, name = data
    args = ["train.py", *TINY, f"--data_root={data_root}", f"--dataset={name}", f"--out_dir={out_dir}", *extra]
    if torchrun:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return run_script(*args, check=check)


def metrics(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]


def test_training_lowers_val_loss_and_logs_one_json_line_per_eval(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    train(tiny_dataset, out, "--max_iters=60", "--eval_interval=20")
    rows = metrics(out)
    assert [r["iter"] for r in rows] == [0, 20, 40, 60]
    assert [r["tokens"] for r in rows] == [0, 20 * 64, 40 * 64, 60 * 64]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 1.0
    assert rows[-1]["tokens_per_sec"] > 0 and rows[0]["tokens_per_sec"] is None
    assert os.path.exists(out / "ckpt.pt") and not os.path.exists(out / "ckpt.pt.tmp")


def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(tiny_dataset, tmp_path):
    schedule = ["--lr_decay_iters=8", "--warmup_iters=2", "--eval_interval=4", "--dropout=0.1"]
    train(tiny_dataset, tmp_path / "a", "--max_iters=8", *schedule)
    train(tiny_dataset, tmp_path / "b", "--max_iters=4", *schedule)
    train(tiny_dataset, tmp_path / "b", "--max_iters=8", "--init_from=resume", *schedule)
    losses = lambda rows: [(r["iter"], r["train_loss"], r["val_loss"], r["lr"]) for r in rows]  # noqa: E731
    assert losses(metrics(tmp_path / "a")) == losses(metrics(tmp_path / "b"))  # bit-exact, no duplicate rows
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert a["iter_num"] == b["iter_num"] == 8
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


def test_ddp_with_two_gloo_processes_matches_one_process_with_the_same_global_batch(tiny_dataset, tmp_path):
    common = ["--max_iters=6", "--eval_interval=3", "--gradient_accumulation_steps=2"]
    train(tiny_dataset, tmp_path / "single", *common)
    train(tiny_dataset, tmp_path / "ddp", *common, torchrun=True)
    single, ddp = metrics(tmp_path / "single"), metrics(tmp_path / "ddp")
    assert [r["iter"] for r in single] == [r["iter"] for r in ddp] == [0, 3, 6]
    for s, d in zip(single, ddp):
        assert d["train_loss"] == pytest.approx(s["train_loss"], abs=1e-5)
        assert d["val_loss"] == pytest.approx(s["val_loss"], abs=1e-5)
    assert single[-1]["val_loss"] < single[0]["val_loss"]  # it did train


@pytest.mark.parametrize("flag, message", [
    ("--n_layerz=3", "unknown config key 'n_layerz'"),
    ("--batch_size=big", "config key 'batch_size' expects int"),
    ("config/nope.py", "config file 'config/nope.py' not found"),
])
def test_bad_config_gives_a_one_line_error_naming_the_key(tiny_dataset, tmp_path, flag, message):
    p = train(tiny_dataset, tmp_path / "out", flag, check=False)
    assert p.returncode != 0
    assert p.stdout.strip().splitlines()[-1].startswith(f"error: {message}")


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
    p = run_script("train.py", f"--data_root={tmp_path}", "--dataset=nowhere", "--device=cpu", check=False)
    assert p.returncode != 0 and f"run `python prepare.py --dataset=nowhere --data_root={tmp_path}`" in p.stdout.splitlines()[-1]


def test_resume_restores_the_runs_own_settings_and_says_what_it_changes(tiny_dataset, tmp_path):
    schedule = ["--lr_decay_iters=6", "--eval_interval=3", "--dropout=0.1"]
    train(tiny_dataset, tmp_path / "a", "--max_iters=6", *schedule)
    train(tiny_dataset, tmp_path / "b", "--max_iters=3", *schedule)
    # no model, data or batch flags: they come from the checkpoint; max_iters may change, and is said to
    p = run_script("train.py", "--init_from=resume", f"--out_dir={tmp_path / 'b'}", "--max_iters=6")
    assert "changed: max_iters 3 -> 6" in p.stdout
    losses = lambda rows: [(r["iter"], r["train_loss"], r["val_loss"], r["lr"]) for r in rows]  # noqa: E731
    assert losses(metrics(tmp_path / "a")) == losses(metrics(tmp_path / "b"))
    config = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)["config"]
    assert (config["max_iters"], config["n_embd"], config["dataset"], config["dropout"]) == (6, 32, "toy", 0.1)


def test_resume_with_another_process_count_continues_the_run(tiny_dataset, tmp_path):
    common = ["--lr_decay_iters=6", "--eval_interval=3", "--gradient_accumulation_steps=2"]
    train(tiny_dataset, tmp_path / "single", "--max_iters=6", *common)
    train(tiny_dataset, tmp_path / "switched", "--max_iters=3", *common)
    train(tiny_dataset, tmp_path / "switched", "--max_iters=6", "--init_from=resume", *common, torchrun=True)
    single, switched = metrics(tmp_path / "single"), metrics(tmp_path / "switched")
    assert [r["iter"] for r in single] == [r["iter"] for r in switched] == [0, 3, 6]
    for s, d in zip(single, switched):  # rank 1 continues rank 0's dropout stream: without dropout, the same run
        assert d["val_loss"] == pytest.approx(s["val_loss"], abs=1e-5)


def test_configurator_bare_flags_set_booleans_and_string_keys_keep_their_text():
    ns = {"force": False, "steer": "", "scales": "2,5", "lr": 1e-3, "n": 4}
    configure(ns, ["--force", "--steer=5:10,7:-2", "--scales=-10,2", "--lr=1", "--n=8"])
    assert ns == {"force": True, "steer": "5:10,7:-2", "scales": "-10,2", "lr": 1.0, "n": 8}
    with pytest.raises(SystemExit, match="expected --n=VALUE"):
        configure(ns, ["--n"])


def test_compile_true_trains_on_cpu_to_the_eager_losses(tiny_dataset, tmp_path):
    data_root, name = tiny_dataset
    args = [f"--dataset={name}", f"--data_root={data_root}", "--n_layer=2", "--n_head=2", "--n_embd=32",
            "--block_size=16", "--batch_size=8", "--max_iters=4", "--eval_interval=4", "--eval_iters=2"]
    losses = {}
    for flag in ("True", "False"):
        run_script("train.py", *args, f"--compile={flag}", f"--out_dir={tmp_path / flag}")
        losses[flag] = [json.loads(r)["val_loss"] for r in (tmp_path / flag / "metrics.jsonl").read_text().splitlines()]
    assert losses["True"] == pytest.approx(losses["False"], abs=1e-4)


def test_compile_true_trains_cocomix_with_a_kd_teacher_to_the_eager_losses(tiny_run, tmp_path):
    """--compile also compiles the teacher's blocks (the labels' teacher and the KD teacher): same losses."""
    root, _, _ = tiny_run
    args = [str(root / "cocomix.py"), f"--data_root={root / 'data'}", f"--sae_path={root / 'out' / 'sae' / 'sae.pt'}",
            "--lam_kd=0.1", f"--teacher_path={root / 'out' / 'teacher'}", "--max_iters=2", "--eval_interval=2",
            "--eval_iters=1"]
    rows = {}
    for flag in ("True", "False"):
        run_script("train.py", *args, f"--compile={flag}", f"--out_dir={tmp_path / flag}")
        rows[flag] = json.loads((tmp_path / flag / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("val_loss", "val_concept_loss", "val_kd_loss"):
        assert rows["True"][key] == pytest.approx(rows["False"][key], abs=1e-4), key
    assert rows["True"]["val_concept_acc"] == rows["False"]["val_concept_acc"]  # the same labels
