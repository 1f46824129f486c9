"""payoff.py at toy size: the three axes' runs at the chosen rates, the gaps paired by seed, the trend, the figure."""
import json
import os

import numpy as np

from compare import reach_cell, tokens_to_reach
from conftest import TINY_SAE, TINY_STUDENT, TINY_TEACHER, run_script


def last(run, key="val_loss"):
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])[key]


def test_payoff_runs_every_axis_at_the_chosen_rates_and_reports_gaps_paired_by_seed(tmp_path):
    configs = {"teacher": TINY_TEACHER, "weak": TINY_TEACHER.replace("40, 20, 2", "10, 5, 2"), "sae": TINY_SAE,
               "ntp": TINY_STUDENT + "n_embd = 36\n",
               "cocomix": TINY_STUDENT + 'n_embd, insert_layer, k_concepts, mode = 32, 1, 8, "cocomix"\n',
               "deep_ntp": TINY_STUDENT + "n_embd, n_layer = 36, 3\n",
               "deep_cocomix": TINY_STUDENT + 'n_embd, n_layer, insert_layer, k_concepts, mode = 32, 3, 2, 8, '
                               '"cocomix"\n'}
    for name, text in configs.items():
        (tmp_path / f"{name}.py").write_text(text)
    rates = tmp_path / "chosen.json"
    rates.write_text(json.dumps({"ntp": "1e-3", "kd": "3e-3", "cocomix": "2e-3"}))
    out_root = tmp_path / "out"
    args = ["payoff.py", f"--data_root={tmp_path / 'data'}", "--n_docs=150", f"--out_root={out_root}",
            f"--rates={rates}", "--arms=ntp,kd,cocomix", "--max_iters=10", "--budgets=1:2,2:1,3:1", "--n_seeds=1",
            "--insert_layer=1", "--deep_insert_layer=2", f"--teacher_config={tmp_path / 'teacher.py'}",
            f"--teachers={tmp_path / 'weak.py'}", f"--sae_config={tmp_path / 'sae.py'}",
            *(f"--{k}_config={tmp_path / k}.py" for k in ("ntp", "cocomix", "deep_ntp", "deep_cocomix"))]
    out = run_script(*args).stdout
    runs = out_root / "payoff"
    assert last(runs / "tokens_2x" / "kd_s1", "iter") == 20 and last(runs / "tokens_3x" / "ntp_s1", "iter") == 30
    stamp = json.loads((runs / "tokens_1x" / "kd_s2" / "train.stamp.json").read_text())
    assert "--learning_rate=3e-3" in stamp["args"] and "--seed=2" in stamp["args"]
    weak = json.loads((runs / "teacher_weak" / "cocomix_s1" / "train.stamp.json").read_text())["args"]
    assert f"--teacher_path={out_root / 'weak' / 'teacher'}" in weak
    assert f"--sae_path={out_root / 'weak' / 'sae' / 'sae.pt'}" in weak
    assert sorted(os.listdir(runs / "teacher_weak")) == ["cocomix_s1", "kd_s1"]  # NTP: the 1x runs'
    assert last(runs / "depth_3" / "ntp_s1", "iter") == 10
    table = (runs / "payoff.md").read_text()
    diffs = [last(runs / "tokens_1x" / f"cocomix_s{s}") - last(runs / "tokens_1x" / f"ntp_s{s}") for s in (1, 2)]
    row = next(line for line in table.splitlines() if line.startswith("| tokens_1x |"))
    assert f"{np.mean(diffs):+.4f} ± {np.std(diffs):.4f} (2)" in row
    row = next(line for line in table.splitlines() if line.startswith("| teacher_weak |"))
    gap = last(runs / "teacher_weak" / "kd_s1") - last(runs / "tokens_1x" / "ntp_s1")
    assert f"{gap:+.4f} (1)" in row and row.count("—") == 1  # no pause run there (nor in arms)
    assert "- cocomix: " in table and "per decade" in table.split("- cocomix: ")[1].splitlines()[0]
    assert (runs / "payoff.png").stat().st_size > 0
    # per seed: each run against NTP's run on its seed (the teacher point's: tokens_1x's), and the tokens it takes
    # to reach that run's final val loss
    per_seed = table.split("Per seed")[1]
    row = next(line for line in per_seed.splitlines() if line.startswith("| tokens_1x | cocomix | 2 | "))
    assert f"| {diffs[1]:+.4f} |" in row
    assert f"| teacher_weak | kd | 1 | {gap:+.4f} |" in per_seed
    cocomix = [json.loads(line) for line in (runs / "tokens_1x" / "cocomix_s1" / "metrics.jsonl").read_text().splitlines()]
    reach = tokens_to_reach(np.array([r["tokens"] for r in cocomix], dtype=float),
                            np.array([r["val_loss"] for r in cocomix]), last(runs / "tokens_1x" / "ntp_s1"))
    row = next(line for line in per_seed.splitlines() if line.startswith("| tokens_1x | cocomix | 1 | "))
    spent = last(runs / "tokens_1x" / "ntp_s1", "tokens")
    assert row.split(" | ")[4] == ("not reached" if reach is None else reach_cell(reach, spent, 1e6, "M"))
    rerun = run_script(*args).stdout
    assert "python train.py" not in rerun and rerun.count("skipping") >= 4 * 3 + 3 + 2
    # the time estimate counts only the runs left to train
    assert "17 runs over 5 points, 17 of them to train" in out and "17 of them to train" not in rerun
    assert "17 runs over 5 points, 0 of them to train" in rerun and "about 0 min" in rerun

    # --report_only trains nothing and reports only the runs that finished with the planned settings: a run left
    # unfinished, or one whose stamp records other settings, is not taken for the planned one
    stamp_path = runs / "tokens_1x" / "cocomix_s2" / "train.stamp.json"
    stamp_path.write_text(json.dumps({**json.loads(stamp_path.read_text()), "finished": False}))
    stamp_path = runs / "tokens_2x" / "kd_s1" / "train.stamp.json"
    other = json.loads(stamp_path.read_text())
    other["args"] = [a.replace("--learning_rate=3e-3", "--learning_rate=1e-2") for a in other["args"]]
    stamp_path.write_text(json.dumps(other))
    report = run_script(*args, "--report_only=True").stdout
    assert "python train.py" not in report and "report only: 15 of the 17 planned runs have finished" in report
    assert last(runs / "tokens_1x" / "cocomix_s2", "iter") == 10  # left as it was, not resumed
    table = (runs / "payoff.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| tokens_1x |"))
    assert f"{diffs[0]:+.4f} (1)" in row
    row = next(line for line in table.splitlines() if line.startswith("| tokens_2x |"))
    assert row.count("—") == 2  # kd: its only run has other settings; pause: not an arm here
    # budgets' seeds are the tokens axis's: the depth axis alone plans n_seeds (1) at its 1x reference, not 2
    depth = run_script(*args, "--axes=depth", "--report_only=True").stdout
    assert "report only: 6 of the 6 planned runs have finished" in depth
    # with no teacher under out_root there is nothing to report: refused before anything is written
    empty = tmp_path / "empty"
    refused = run_script(*args, f"--out_root={empty}", "--report_only=True", check=False)
    assert refused.returncode != 0 and "nothing to report" in refused.stdout.splitlines()[-1]
    assert not empty.exists()
