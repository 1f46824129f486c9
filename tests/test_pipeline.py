import json

import numpy as np
import pytest
import torch

from compare import run_name, summarize, tokens_to_reach, training_table
from conftest import run_script


def test_tokens_to_reach_interpolates_between_evaluations():
    tokens, losses = np.array([0, 100, 200, 300.0]), np.array([5.0, 3.0, 2.0, 1.5])
    assert tokens_to_reach(tokens, losses, 2.5) == pytest.approx(150)
    assert tokens_to_reach(tokens, losses, 2.0) == pytest.approx(200)
    assert tokens_to_reach(tokens, losses, 1.0) is None


def test_summary_reports_mean_std_and_the_tokens_cocomix_needs_to_match_ntp():
    row = lambda it, loss: {"iter": it, "tokens": 10_000 * it, "val_loss": loss}  # noqa: E731
    groups = {"ntp": [[row(0, 5), row(10, 3), row(20, 2)], [row(0, 5), row(10, 3), row(20, 2.2)]],
              "cocomix": [[row(0, 5), row(10, 2.1), row(20, 1.8)]]}
    rows = {r["method"]: r for r in summarize(groups)}
    assert rows["ntp"]["val_loss"] == pytest.approx(2.1) and rows["ntp"]["val_loss_std"] == pytest.approx(0.1)
    assert rows["cocomix"]["tokens_to_baseline"] == pytest.approx(100_000)  # reached at iteration 10
    assert "| cocomix | 1 | 0.20M | 1.8000 ± 0.0000 | 0.10M (50.0% fewer) |" in training_table(summarize(groups))


def test_run_names_give_method_and_seed_and_any_other_name_stands_alone():
    assert run_name("out/compare/cocomix_s12/") == ("cocomix", 12)
    assert run_name("ntp_lam_0.1_s3") == ("ntp_lam_0.1", 3)
    assert run_name("out/owt_ntp_69m") == ("owt_ntp_69m", None)
    assert run_name("out/my_stest") == ("my_stest", None) and run_name("_s1") == ("_s1", None)


def test_pipeline_runs_every_stage_compares_and_skips_finished_stages_when_rerun(tiny_run):
    root, args, first = tiny_run
    out_root = root / "out"
    table = (out_root / "compare" / "compare.md").read_text()
    assert "| ntp | 1 |" in table and "| cocomix | 1 |" in table
    assert (out_root / "compare" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    cocomix_log = [json.loads(r) for r in open(out_root / "compare" / "cocomix_s1" / "metrics.jsonl")]
    assert first.count("skipping") == 1  # only prepare: the data was made above
    # the student learns to predict the teacher's concept labels: in 20 iterations from near chance (k_attr / C =
    # 0.06) to 0.52 of them among its top k_attr on the tiny run, as its concept loss falls from ln C = 4.16 to 3.6
    ckpt = torch.load(out_root / "compare" / "cocomix_s1" / "ckpt.pt", weights_only=False)
    chance = ckpt["config"]["k_attr"] / ckpt["model_args"]["n_concepts"]
    assert cocomix_log[-1]["iter"] == 20 and cocomix_log[-1]["val_concept_acc"] > 3 * chance
    assert cocomix_log[-1]["val_concept_loss"] < cocomix_log[0]["val_concept_loss"] - 0.2
    # it records its concept head but carries neither the teacher nor the SAE
    assert ckpt["model_args"]["n_concepts"] == 64 and ckpt["model_args"]["insert_layer"] == 1
    assert {k.split(".")[0] for k in ckpt["model"]} == {"transformer", "lm_head", "concept_head"}
    sample = run_script("sample.py", f"--out_dir={out_root / 'compare' / 'cocomix_s1'}", "--num_samples=1",
                        "--max_new_tokens=5", "--device=cpu").stdout
    assert sample.count("---------------") == 1
    second = run_script(*args).stdout
    assert second.count("skipping") == 7  # prepare, teacher, sae, ntp, cocomix, concepts, steering
