import json
import os

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
    table = training_table(summarize(groups))
    assert "| cocomix | 1 | 0.20M | 1.8000 | 0.10M (50.0% fewer) |" in table  # no spread from one seed
    assert "| ntp | 2 | 0.20M | 2.1000 ± 0.1000 | — |" in table  # the baseline is not compared with itself


def test_flops_to_reach_the_baseline_are_against_what_the_baseline_spent():
    row = lambda it, loss, f: {"iter": it, "tokens": 10_000 * it, "flops": f * it, "val_loss": loss}  # noqa: E731
    groups = {"ntp": [[row(0, 5, 1e9), row(10, 3, 1e9), row(20, 2, 1e9)]],
              "cocomix": [[row(0, 5, 3e9), row(10, 2, 3e9), row(20, 1.8, 3e9)]]}
    rows = {r["method"]: r for r in summarize(groups)}
    assert rows["cocomix"]["flops_to_baseline"] == pytest.approx(3e10)  # reached at iteration 10
    table = training_table(list(rows.values()))
    assert "| cocomix | 1 | 0.20M | 1.8000 | 0.10M (50.0% fewer) | 0.06T | 0.03T (50.0% more) |" in table


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


# -----------------------------------------------------------------------------
# when a stage runs again: pipeline.stage on a stand-in script that records how it was called

FAKE_STAGE = """
import json, os, sys
out = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--out_dir="))
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "calls.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
die = os.environ.get("FAKE_DIE", "")
if die == "before_ckpt":
    sys.exit(1)
with open(os.path.join(out, "ckpt.pt"), "a") as f:  # a checkpoint grows with every save
    f.write("step\\n")
if die == "after_ckpt":
    sys.exit(1)
open(os.path.join(out, "plot.png"), "w").write("png")
"""


def calls(home):
    return [json.loads(line) for line in open(home / "calls.jsonl")]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """(a function that runs the stand-in as pipeline.stage, its output directory, the input file it reads)."""
    import pipeline
    script, home, config = tmp_path / "fake.py", tmp_path / "out", tmp_path / "config.py"
    script.write_text(FAKE_STAGE)
    config.write_text("x = 1\n")

    def run(*args, die="", **kw):
        monkeypatch.setenv("FAKE_DIE", die)
        return pipeline.stage("fake", [str(script), f"--out_dir={home}", *args], str(home), ["ckpt.pt", "plot.png"],
                              [str(config)], **kw)
    return run, home, config


def test_a_stage_is_skipped_only_when_finished_with_the_same_args_and_inputs_and_all_its_outputs(fake):
    run, home, config = fake
    assert run("--x=1") is True
    assert run("--x=1") is False  # it says it skipped, which arms.py's pace counts on
    assert len(calls(home)) == 1  # finished: skipped
    (home / "plot.png").unlink()
    run("--x=1")
    assert len(calls(home)) == 2  # an output is missing: runs again
    config.write_text("x = 2\n")
    run("--x=1")
    assert len(calls(home)) == 3  # an input changed
    run("--x=2")
    assert len(calls(home)) == 4  # its settings changed
    with pytest.raises(SystemExit, match="stage 'fake' failed"):
        run("--x=2", "--y=1", die="after_ckpt")  # killed after one output, before the other: the old plot stays
    assert (home / "plot.png").exists()
    run("--x=2", "--y=1")
    assert len(calls(home)) == 6  # so the plot is made again


def test_a_training_stage_resumes_its_own_run_and_starts_over_when_its_settings_changed(fake):
    run, home, _ = fake
    train = dict(checkpoint="ckpt.pt", fresh=["--overwrite"])
    with pytest.raises(SystemExit):
        run("--max_iters=10", die="after_ckpt", **train)
    run("--max_iters=10", **train)
    run("--max_iters=10", **train)
    assert [c[1:] for c in calls(home)] == [["--max_iters=10"], ["--max_iters=10", "--init_from=resume"]]
    with pytest.raises(SystemExit):  # new settings: starts over; killed before it replaced the old checkpoint
        run("--max_iters=20", die="before_ckpt", **train)
    run("--max_iters=20", **train)  # the checkpoint there is still the old run's: start over, not resume it
    assert [c[1:] for c in calls(home)][2:] == [["--max_iters=20", "--overwrite"]] * 2
    (home / "fake.stamp.json").unlink()  # a checkpoint nobody recorded the settings of: never replaced
    with pytest.raises(SystemExit, match="holds a run the pipeline did not record"):
        run("--max_iters=20", **train)


def test_new_student_settings_retrain_the_students_and_what_reads_them_but_nothing_upstream(tiny_run):
    """Runs last in this file: it changes the shared toy run."""
    root, args, _ = tiny_run
    compare_md = (root / "out" / "compare" / "compare.md").read_text()
    out = run_script(*[a for a in args if not a.startswith("--max_iters")], "--max_iters=30").stdout
    for name in ("prepare", "teacher", "sae", "concepts"):
        assert f"== {name}: " in out and any(line.startswith(f"== {name}: ") and "skipping" in line
                                             for line in out.splitlines())
    for name in ("ntp seed 1", "cocomix seed 1"):
        assert f"== {name}: its settings or inputs changed" in out
        assert any(line.startswith(f"== {name}: python train.py") and line.endswith("--overwrite")
                   for line in out.splitlines())
    assert "== steering: its settings or inputs changed" in out  # it reads the retrained CoCoMix student
    for method in ("ntp", "cocomix"):
        log = [json.loads(r) for r in open(root / "out" / "compare" / f"{method}_s1" / "metrics.jsonl")]
        assert log[-1]["iter"] == 30 and [r["iter"] for r in log] == sorted({r["iter"] for r in log})
    assert (root / "out" / "compare" / "compare.md").read_text() != compare_md


def test_arms_pick_each_arms_rate_by_seed_1_and_compare_all_seeds_with_flops(tiny_run):
    """arms.py on the tiny pipeline's teacher and SAE (skipped as done): the grid, the chosen rates, the seed-1
    link into the grid, and a comparison of every arm with its FLOPs."""
    root, _, _ = tiny_run
    out_root, arms = root / "out", "ntp,kd,pause,kd_pause,regress,cocomix"
    p = run_script("arms.py", f"--data_root={root / 'data'}", f"--out_root={out_root}", f"--arms={arms}",
                   "--lrs=1e-3,3e-3", "--max_extend=0", "--n_seeds=2", "--max_iters=10", "--insert_layer=1",
                   *(f"--{name}_config={root / name}.py" for name in ("teacher", "sae", "ntp", "cocomix")))
    assert "== teacher: finished" in p.stdout and "== sae: finished" in p.stdout
    grid = (out_root / "arms" / "grid.md").read_text()
    for arm in arms.split(","):
        losses = {lr: json.loads((out_root / "arms" / "grid" / f"{arm}_lr{lr}_s1" / "metrics.jsonl")
                                 .read_text().splitlines()[-1])["val_loss"] for lr in ("1e-3", "3e-3")}
        best = min(losses, key=losses.get)
        assert f"| {arm} |" in grid and grid.split(f"| {arm} |")[1].split("\n")[0].strip().endswith(f"| {best} |")
        assert os.readlink(out_root / "arms" / f"{arm}_s1") == f"grid/{arm}_lr{best}_s1"
        assert (out_root / "arms" / f"{arm}_s2" / "ckpt.pt").exists()
    loss = {(arm, s): json.loads((out_root / "arms" / f"{arm}_s{s}" / "metrics.jsonl").read_text().splitlines()[-1])
            ["val_loss"] for arm in ("ntp", "kd") for s in (1, 2)}
    gaps = [loss["kd", s] - loss["ntp", s] for s in (1, 2)]
    paired = (out_root / "arms" / "paired.md").read_text()
    assert f"| kd | {loss['kd', 1]:.4f} | {loss['kd', 2]:.4f} | {np.mean(gaps):+.4f} ± {np.std(gaps):.4f} |" in paired
    table = (out_root / "arms" / "compare.md").read_text()
    assert "| ntp | 2 |" in table and "| cocomix | 2 |" in table and "FLOPs to reach ntp" in table
    assert table.split("| ntp | 2 |")[1].split("\n")[0].count("—") == 2  # the baseline against itself
    rerun = run_script("arms.py", f"--data_root={root / 'data'}", f"--out_root={out_root}", f"--arms={arms}",
                       "--lrs=1e-3,3e-3", "--max_extend=0", "--n_seeds=2", "--max_iters=10", "--insert_layer=1",
                       *(f"--{name}_config={root / name}.py" for name in ("teacher", "sae", "ntp", "cocomix")))
    assert rerun.stdout.count("finished with these settings and inputs") == 2 + 6 * 3  # nothing retrained


def test_an_arm_best_at_its_grids_edge_gets_the_next_rate_past_that_edge(tiny_run):
    """The grid grows by a factor 2 past the edge the best rate is at, max_extend times, and the chosen rate is the
    best of the grown grid."""
    root, _, _ = tiny_run
    out_root = root / "out_extend"
    p = run_script("arms.py", f"--data_root={root / 'data'}", f"--out_root={out_root}", "--arms=ntp",
                   "--lrs=1e-3,3e-3", "--max_extend=1", "--n_seeds=1", "--max_iters=10",
                   *(f"--{name}_config={root / name}.py" for name in ("teacher", "sae", "ntp", "cocomix")))
    runs = sorted(d.name for d in (out_root / "arms" / "grid").iterdir())
    loss = {r.split("_lr")[1][:-3]: json.loads((out_root / "arms" / "grid" / r / "metrics.jsonl").read_text()
                                               .splitlines()[-1])["val_loss"] for r in runs}
    first = min(("1e-3", "3e-3"), key=loss.get)
    assert set(loss) == {"1e-3", "3e-3", "5e-4" if first == "1e-3" else "6e-3"}  # one step past the best's edge
    assert os.readlink(out_root / "arms" / "ntp_s1") == f"grid/ntp_lr{min(loss, key=loss.get)}_s1"
    assert ("Still at the grid's edge" in p.stdout) == (min(loss, key=loss.get) != first)


def test_rates_past_the_edge_and_their_names():
    from arms import past_edge, rate_name
    assert past_edge({"1e-3": 2.0, "2e-3": 1.5, "4e-3": 1.6}) is None  # best inside the grid
    assert past_edge({"1e-3": 2.0, "2e-3": 1.5, "4e-3": 1.4}) == "8e-3"
    assert past_edge({"5e-4": 1.0, "1e-3": 2.0, "2e-3": 3.0}) == "2.5e-4"
    assert past_edge({"1e-3": 1.0}) is None
    assert [rate_name(x) for x in (0.008, 0.00025, 0.016, 1e-3)] == ["8e-3", "2.5e-4", "1.6e-2", "1e-3"]
