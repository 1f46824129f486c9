import json

import numpy as np
import pytest
import torch

from concepts import (auroc, best_latents, concept_aurocs, concept_recovery, load_descriptions, show_context,
                      top_activations)
from conftest import run_script
from sae import SAE
from steer import expresses, parse_scales, parse_steer, steer_vector, steered_sae_hidden, steering_success


def test_top_activations_lists_each_latents_strongest_positions_first():
    # 3 positions, k=2: latent 0 fires at positions 10 (0.5) and 12 (0.9); latent 2 at 11; latent 1 never
    vals = torch.tensor([[0.5, 0.1], [0.3, 0.0], [0.9, 0.2]])
    idx = torch.tensor([[0, 3], [2, 1], [0, 3]])
    top = top_activations(vals, idx, np.array([10, 11, 12]), n_latents=4, n=5)
    assert [p.tolist() for p, _ in top] == [[12, 10], [], [11], [12, 10]]
    assert top[0][1].tolist() == pytest.approx([0.9, 0.5])
    assert top_activations(vals, idx, np.array([10, 11, 12]), 4, n=1)[3][0].tolist() == [12]


def test_a_context_stops_at_its_documents_start_and_brackets_the_token():
    itos = ["a", "b", "c", "<eot>"]
    decode = lambda ids: " ".join(itos[i] for i in ids)  # noqa: E731
    tokens = np.array([0, 1, 3, 2, 0, 1])
    assert show_context(tokens, 5, decode, eot=3, width=8) == "c a [b]"
    assert show_context(tokens, 1, decode, eot=3, width=8) == "a [b]"
    assert show_context(tokens, 5, decode, eot=3, width=2) == "a [b]"


def test_auroc_rank_formula_equals_counting_pairs_with_ties_as_halves():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.integers(0, 4, (60, 3)).astype(np.float32))  # many ties
    labels = torch.from_numpy(rng.random((60, 2)) < 0.4)
    got = auroc(scores, labels)
    for m in range(2):
        for j in range(3):
            pos, neg = scores[labels[:, m], j], scores[~labels[:, m], j]
            pairs = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
            assert got[m, j].item() == pytest.approx(pairs.mean().item(), abs=1e-9)


def test_concept_recovery_finds_the_latent_planted_for_a_concept():
    rng = np.random.default_rng(0)
    n, n_latents = 400, 20
    concepts = np.stack([rng.integers(0, 2, n), rng.integers(0, 3, n)], 1).astype(np.uint8)
    drivers = rng.choice([0, 1, 255], n).astype(np.uint8)
    idx = torch.from_numpy(rng.integers(0, 16, (n, 2)))
    idx[:, 1] = idx[:, 0] + 1
    vals = torch.from_numpy(rng.random((n, 2)).astype(np.float32))
    vals[:, 1] = torch.from_numpy(rng.random(n).astype(np.float32) * 0.1)
    idx[concepts[:, 1] == 2, 1] = 18  # latent 18 fires exactly on the documents with b=z
    vals[concepts[:, 1] == 2, 1] = 1.0
    factors = [{"name": "a", "values": ["x", "y"]}, {"name": "b", "values": ["x", "y", "z"]}]
    rec = concept_recovery(concept_aurocs((vals, idx), n_latents, concepts, drivers, factors, chunk=8), factors)
    bz = rec["concepts"][4]
    assert (bz["name"], bz["latent"], bz["auroc"], bz["driver_latent"], bz["driver_auroc"]) == ("b=z", 18, 1.0, 18, 1.0)
    aurocs = [c["auroc"] for c in rec["concepts"]]  # every concept occurs here: the summary covers all five
    assert rec["auroc_mean"] == pytest.approx(np.mean(aurocs)) and rec["auroc_min"] == pytest.approx(min(aurocs))


def test_best_latent_skips_undefined_aurocs_and_every_concept_gets_one():
    a = torch.tensor([[0.6, float("nan"), 0.9], [float("nan")] * 3, [0.7, 0.8, float("nan")]])
    best, latent = best_latents(a)
    assert latent.tolist()[0::2] == [2, 1] and best[0::2].tolist() == pytest.approx([0.9, 0.8])
    assert best[1].isnan() and latent.shape == (3,)  # a concept that never occurs still gets a latent


def test_steering_specs_parse_or_fail_with_a_message_that_says_how_to_fix_them():
    assert parse_steer("5:10, 7:-2.5", 8) == {5: 10.0, 7: -2.5}
    assert parse_steer("", 8) == {}
    assert steer_vector({5: 10.0}, 8).tolist() == [1, 1, 1, 1, 1, 10, 1, 1]
    for bad in ("5", "5:ten", "x:1", "5:1:2"):
        with pytest.raises(ValueError, match="write ID:SCALE"):
            parse_steer(bad, 8)
    with pytest.raises(ValueError, match=r"concept 8 does not exist: the model has concepts 0\.\.7"):
        parse_steer("8:2", 8)
    planted = {"topic=sea": 6, "hero=ella": 2}  # concepts.json's best latent per planted concept
    assert parse_steer("topic=sea:-10, 3:2", 8, planted) == {6: -10.0, 3: 2.0}
    with pytest.raises(ValueError, match="no planted concept 'topic=moon'.*known: hero=ella, topic=sea"):
        parse_steer("topic=moon:2", 8, planted)
    with pytest.raises(ValueError, match="no planted concept 'topic=sea'.*names no planted concepts"):
        parse_steer("topic=sea:2", 8, {})
    assert parse_scales("-10, 2,5e0,") == [-10.0, 2.0, 5.0] and parse_scales("") == []
    for bad in ("2,ten", "inf", "1,nan"):
        with pytest.raises(ValueError, match="write numbers separated by commas"):
            parse_scales(bad)


def test_steering_a_teacher_latent_adds_its_scaled_decoder_direction_and_keeps_the_error():
    torch.manual_seed(0)
    sae = SAE(16, 32, k=4)
    h = torch.randn(5, 16) * 3 + 1
    assert torch.equal(steered_sae_hidden(sae, h), h)
    assert torch.allclose(steered_sae_hidden(sae, h, torch.ones(32)), h)
    x, mu, std = sae.preprocess(h)
    vals, idx = sae.encode_pre_act(x).topk(4, dim=-1)
    j, v = idx[0, 0].item(), vals[0, 0].item()  # the strongest latent of row 0, active
    assert v > 0
    steer = steer_vector({j: 3.0}, 32)
    expected = h[0] + 2.0 * v * sae.decoder.weight[:, j] * std[0]
    torch.testing.assert_close(steered_sae_hidden(sae, h, steer)[0], expected, rtol=1e-4, atol=1e-4)


def test_a_story_expresses_a_concept_when_most_of_its_factors_words_are_the_concepts():
    stories = torch.tensor([[1, 2, 9, 9], [1, 3, 4, 9], [9, 9, 9, 9], [1, 3, 9, 9]])
    concept, factor = torch.tensor([1, 2]), torch.tensor([1, 2, 3, 4])
    assert expresses(stories, concept, factor).tolist() == [True, False, False, False]


def test_steering_success_steers_each_concept_in_its_own_rows():
    """A fake model that writes concept i's word (token i) when latent 10 + i is steered up, else token 5."""
    meta = {"itos": ["w0", "w1", "w2", "w3", "w4", "the", "<eot>"], "eot_token": 6,
            "concepts": [{"name": f"f={i}", "factor": "f", "words": [f"w{i}"]} for i in range(4)]}
    planted = [{"name": f"f={i}", "latent": 10 + i} for i in range(4)]

    def make_logits_fn(steer, force):
        def logits_fn(idx):
            logits = torch.zeros(idx.size(0), idx.size(1), 7)
            up = steer[:, 0, 10:14] > 1
            logits[..., 5] = 50.0
            logits[up.any(-1), :, :4] = torch.where(up[up.any(-1)], 100.0, -100.0)[:, None, :]
            return logits
        return logits_fn

    res = steering_success({"fake": make_logits_fn}, planted, meta, [-2.0, 4.0], n_samples=3, max_new_tokens=5,
                           block_size=8, n_concepts=16, temperature=1.0, force=True, seed=0, device="cpu")
    assert res["fake"][4.0] == [1.0] * 4 and res["fake"][1.0] == [0.0] * 4 and res["fake"][-2.0] == [0.0] * 4


# -----------------------------------------------------------------------------
# the scripts, on the toy-size run of the whole pipeline

def test_concepts_file_describes_every_latent_and_matches_the_planted_concepts(tiny_run):
    root, _, _ = tiny_run
    described = json.load(open(root / "out" / "sae" / "concepts.json"))
    latents = described["latents"]
    assert [lat["id"] for lat in latents] == list(range(64))
    live = [lat for lat in latents if lat["contexts"]]
    assert live and all("[" in c["text"] and c["activation"] > 0 for lat in live for c in lat["contexts"])
    assert all(a["activation"] >= b["activation"] for lat in live for a, b in zip(lat["contexts"], lat["contexts"][1:]))
    assert len(described["planted"]) == 31
    shown, a = described["alignment"]["latents"], np.array(described["alignment"]["auroc"])
    for row, c in zip(a, described["planted"]):  # each concept's latent is the best of those shown for it
        if c["auroc"] is not None:
            assert row[shown.index(c["latent"])] == pytest.approx(c["auroc"]) == pytest.approx(row.max())
    # one best latent per planted concept: the recovery summary and the steering targets agree
    for c, r in zip(described["planted"], described["recovery"]["concepts"]):
        assert c["name"] == r["name"] and (r["driver_latent"] is None or r["driver_latent"] == c["latent"])
        assert c["auroc"] == r["driver_auroc"]
    assert np.array(described["alignment"]["auroc"]).shape == (31, len(described["alignment"]["latents"]))
    assert load_descriptions(root / "out" / "sae" / "concepts.json")[0] == latents[0]["description"]


def test_steering_metric_writes_success_rates_per_model_and_scale(tiny_run):
    root, _, _ = tiny_run
    run = root / "out" / "compare" / "cocomix_s1"
    res = json.load(open(run / "steering.json"))["results"]
    assert set(res) == {"CoCoMix", "teacher + SAE"} and set(res["CoCoMix"]) == {"1.0", "-10.0", "2.0", "5.0", "10.0"}
    assert all(len(r) == 31 for m in res.values() for r in m.values())
    # a rate is a fraction of the 2 stories (--steer_samples=2) sampled per concept
    assert {x for m in res.values() for r in m.values() for x in r} <= {0.0, 0.5, 1.0}
    assert (run / "steering.png").read_bytes()[:4] == b"\x89PNG"


def test_sample_shows_and_steers_concepts_and_compares_the_teacher(tiny_run):
    root, _, _ = tiny_run
    run = f"--out_dir={root / 'out' / 'compare' / 'cocomix_s1'}"
    common = [run, "--num_samples=1", "--max_new_tokens=4", "--device=cpu"]
    out = run_script("sample.py", *common, "--show_concepts", "--steer=3:5", "--force", "--compare_teacher").stdout
    assert "=== model, steered 3:5" in out and "=== teacher + SAE, steered 3:5" in out
    lines = [line for line in out.splitlines() if " -> " in line]  # the prompt's token and the 4 sampled ones
    assert len(lines) == 5 and all(line.count("(") >= 3 for line in lines)
    for bad, message in (("--steer=3", "write ID:SCALE"), ("--steer=64:2", "concept 64 does not exist")):
        p = run_script("sample.py", *common, bad, check=False)
        assert p.returncode != 0 and message in p.stdout and "Traceback" not in p.stdout
    p = run_script("sample.py", f"--out_dir={root / 'out' / 'compare' / 'ntp_s1'}", "--show_concepts", check=False)
    assert p.returncode != 0 and "need a CoCoMix model" in p.stdout


def test_sample_steers_a_planted_concept_by_its_name_through_concepts_json(tiny_run):
    root, _, _ = tiny_run
    planted = json.loads((root / "out" / "sae" / "concepts.json").read_text())["planted"]
    name = planted[0]["name"]
    p = run_script("sample.py", f"--out_dir={root / 'out' / 'compare' / 'cocomix_s1'}", f"--steer={name}:-10",
                   "--force", "--num_samples=1", "--max_new_tokens=5", "--show_concepts")
    assert f"=== model, steered {name}:-10 (latent {planted[0]['latent']} x -10)" in p.stdout
