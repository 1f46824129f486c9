"""bench.py's peak memory and memory table, and gpu_check.sh as far as a machine without a GPU can check it."""
import os
import re
import runpy
import subprocess

import torch

import bench
from conftest import ROOT, run_script
from model import GPT, GPTConfig


def test_the_memory_table_has_every_owt_preset_with_cocomix_above_its_ntp_baseline():
    rows = bench.memory_rows()
    assert [r["preset"] for r in rows] == [f"config/owt_{mode}_{size}.py" for size in ("69m", "386m", "1b")
                                           for mode in ("ntp", "cocomix")]
    for ntp, cocomix in zip(rows[0::2], rows[1::2]):
        assert cocomix["params"] > ntp["params"] and cocomix["total"] > ntp["total"]
        assert cocomix["frozen"] > 0 and cocomix["labelling"] > 0 and ntp["frozen"] == ntp["labelling"] == 0
    for r in rows:
        assert r["total"] == r["states"] + r["frozen"] + max(r["activations"], r["labelling"])
        assert r["states"] == 16 * r["params"]
    # the NTP presets' names are their parameter counts (the paper's 69M, 386M, 1.38B), with GPT-2's padded vocabulary
    for r, paper in zip(rows[0::2], (69e6, 386e6, 1.38e9)):
        assert abs(r["params"] / paper - 1) < 0.01, r["preset"]


def test_the_memory_table_counts_the_parameters_the_model_has():
    for row in bench.memory_rows():
        cfg = runpy.run_path(os.path.join(ROOT, row["preset"]))
        concepts = (dict(n_concepts=32768, k_concepts=cfg["k_concepts"], insert_layer=cfg["insert_layer"])
                    if cfg.get("mode") == "cocomix" else {})
        with torch.device("meta"):
            model = GPT(GPTConfig(vocab_size=50304, n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                                  block_size=cfg["block_size"], **concepts))
        assert row["params"] == model.get_num_params(), row["preset"]
        assert row["micro_batch"] == (cfg["batch_size"], cfg["block_size"])


def test_memory_table_mode_prints_a_markdown_table_and_times_nothing():
    out = run_script("bench.py", "--memory_table=True").stdout
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 6 and all(line.endswith("|") for line in table)
    assert len({line.count("|") for line in table}) == 1  # every row has every column
    assert "ms/step" not in out


def test_bench_prints_its_peak_memory_on_cpu_as_the_process_peak_rss():
    out = run_script("bench.py", "--steps=1", "--warmup=1", "--batch_size=2").stdout
    assert "labels from the cache" in out and "concept labelling" in out  # online against cached, one run
    line = next(line for line in out.splitlines() if line.startswith("peak memory"))
    assert "CPU" in line and "ru_maxrss" in line
    assert int(re.search(r"([\d,]+) MiB", line).group(1).replace(",", "")) > 0


def test_gpu_check_sh_parses_and_refuses_in_one_line_without_a_gpu(tmp_path):
    script = os.path.join(ROOT, "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    out = tmp_path / "out"  # hide any GPU, so that this test never starts the check itself
    p = subprocess.run(["bash", script], env={**os.environ, "OUT": str(out), "CUDA_VISIBLE_DEVICES": ""},
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.returncode != 0
    assert len(p.stdout.strip().splitlines()) == 1 and p.stdout.startswith("error:") and "CUDA" in p.stdout
    assert not out.exists()  # refused before writing anything


def test_parts_are_timed_in_turn_within_each_round_and_ratios_are_taken_per_round(monkeypatch):
    monkeypatch.setattr(bench, "warmup", 1)
    monkeypatch.setattr(bench, "steps", 2)
    monkeypatch.setattr(bench, "rounds", 3)
    calls = []
    seconds, peaks = bench.timed_in_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                           lambda: None)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3  # warmup, then every round has both parts
    assert [len(s) for s in seconds.values()] == [3, 3] and peaks == {"a": None, "b": None}
    # per-round ratios 2, 4, 3: the median is 3, where the ratio of the medians (4 / 1) would be 4
    assert bench.ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == (3.0, 2.0, 4.0)


def test_bench_refuses_a_run_with_no_timed_steps_in_one_line():
    p = run_script("bench.py", "--rounds=0", check=False)
    assert p.returncode != 0 and p.stdout.strip().splitlines() == ["error: rounds=0 must be at least 1"]
