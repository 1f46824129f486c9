import json

import numpy as np
import pytest
import torch

from compare import markdown_table, summarize, tokens_to_reach
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
    assert "| cocomix | 1 | 0.20M | 1.8000 ± 0.0000 | 0.10M (50.0% fewer) |" in markdown_table(summarize(groups))


def test_pipeline_runs_every_stage_compares_and_skips_finished_stages_when_rerun(tiny_run):
    root, args, first = tiny_run
    out_root = root / "out"
    table = (out_root / "compare" / "compare.md").read_text()
    assert "| ntp | 1 |" in table and "| cocomix | 1 |" in table
    assert (out_root / "compare" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    cocomix_log = [json.loads(r) for r in open(out_root / "compare" / "cocomix_s1" / "metrics.jsonl")]
    assert cocomix_log[-1]["iter"] == 20 and 0 <= cocomix_log[-1]["val_concept_acc"] <= 1
    assert first.count("skipping") == 1  # only prepare: the data was made above
    # the student records its concept head but carries neither the teacher nor the SAE
    ckpt = torch.load(out_root / "compare" / "cocomix_s1" / "ckpt.pt", weights_only=False)
    assert ckpt["model_args"]["n_concepts"] == 64 and ckpt["model_args"]["insert_layer"] == 1
    assert {k.split(".")[0] for k in ckpt["model"]} == {"transformer", "lm_head", "concept_head"}
    sample = run_script("sample.py", f"--out_dir={out_root / 'compare' / 'cocomix_s1'}", "--num_samples=1",
                        "--max_new_tokens=5", "--device=cpu").stdout
    assert sample.count("---------------") == 1
    second = run_script(*args).stdout
    assert second.count("skipping") == 7  # prepare, teacher, sae, ntp, cocomix, concepts, steering
