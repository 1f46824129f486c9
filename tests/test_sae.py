import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_script
from model import GPT, GPTConfig
from model import concept_accuracy, concept_loss, layer_norm
from prepare import fingerprint, load_meta
from sae import (SAE, ActivationStream, ConceptExtractor, auxk_loss, densify, fvu, load_concept_extractor, load_sae,
                 sae_from_openai, save_checkpoint, topk_relu, train)
from teacher import changed_inputs, check_vocab, load_teacher, teacher_identity, teacher_pass

TEACHER = dict(block_size=16, vocab_size=24, n_layer=3, n_head=2, n_embd=32)


def tiny_teacher(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**TEACHER)).eval().requires_grad_(False)


def tiny_sae(n_inputs=32, n_latents=64, k=8, seed=1):
    torch.manual_seed(seed)
    sae = SAE(n_inputs, n_latents, k)
    with torch.no_grad():  # away from the symmetric init, so that every term of the equations matters
        for p in (sae.pre_bias, sae.latent_bias):
            p.normal_(0, 0.3)
    return sae


def test_fvu_is_squared_error_over_squared_deviation_from_the_mean():
    torch.manual_seed(0)
    x = torch.randn(200, 8) * 3 + 5
    x_hat = x + 0.5 * torch.randn_like(x)
    assert fvu(x, x).item() == 0
    assert fvu(x, x.mean(0).expand_as(x)).item() == pytest.approx(1.0, rel=1e-5)
    expected = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu(x, x_hat).item() == pytest.approx(expected.item(), rel=1e-5)


def test_sparse_decode_over_the_k_active_latents_equals_the_dense_decode():
    sae = tiny_sae()
    pre = sae.encode_pre_act(torch.randn(3, 5, 32))
    vals, idx = topk_relu(pre, sae.k)
    torch.testing.assert_close(sae.decode(vals, idx), sae.decode_dense(densify(vals, idx, sae.n_latents)))


def test_init_has_unit_norm_decoder_directions_and_the_encoder_as_their_transpose():
    sae = SAE(32, 64, 8)
    torch.testing.assert_close(sae.decoder.weight.norm(dim=0), torch.ones(64))
    torch.testing.assert_close(sae.encoder.weight, sae.decoder.weight.t())
    sae.decoder.weight.grad = torch.randn(32, 64)
    sae.remove_parallel_grads_()
    torch.testing.assert_close((sae.decoder.weight.grad * sae.decoder.weight).sum(0), torch.zeros(64),
                               atol=1e-5, rtol=0)


def test_reconstruction_is_in_the_input_space_whatever_its_scale_and_offset():
    sae = tiny_sae()
    h = torch.randn(10, 32)
    with torch.no_grad():
        recon, z = sae(h)
        recon2, z2 = sae(7 * h + 3)
    torch.testing.assert_close(z2.idx, z.idx)
    torch.testing.assert_close(recon2, 7 * recon + 3, atol=1e-4, rtol=1e-4)


def test_openai_state_dict_loads_and_computes_their_equations():
    torch.manual_seed(0)
    d, n, k = 16, 48, 4
    sd = {"pre_bias": torch.randn(d), "latent_bias": torch.randn(n), "encoder.weight": torch.randn(n, d),
          "decoder.weight": torch.randn(d, n), "activation": "TopK",
          "activation_state_dict": {"k": k, "postact_fn": "ReLU"},
          "stats_last_nonzero": torch.zeros(n, dtype=torch.long), "latents_activation_frequency": torch.ones(n),
          "latents_mean_square": torch.zeros(n)}
    sae = sae_from_openai(dict(sd))
    assert (sae.n_inputs, sae.n_latents, sae.k, sae.normalize) == (d, n, k, True)
    h = torch.randn(5, d) * 4 + 1
    mu, std = h.mean(-1, keepdim=True), h.std(-1, keepdim=True)  # by hand: LN, encode, TopK, ReLU, decode, un-LN
    pre = ((h - mu) / (std + 1e-5) - sd["pre_bias"]) @ sd["encoder.weight"].t() + sd["latent_bias"]
    top = pre.topk(k, dim=-1)
    c = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    expected = (c @ sd["decoder.weight"].t() + sd["pre_bias"]) * std + mu
    with torch.no_grad():
        recon, z = sae(h)
    torch.testing.assert_close(z.pre, pre, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(densify(z.vals, z.idx, n), c, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(recon, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="TopK"):
        sae_from_openai(dict(sd, activation="ReLU"))


def spliced_latent_gradient(teacher, sae, idx, layer):
    """Independent check: the hidden state rebuilt from leaf latents, h = (W_dec c + b_pre) * std + mu + err with
    err = h - reconstruction fixed, so that dL/dc is the gradient of the teacher's loss w.r.t. each latent."""
    with torch.no_grad():
        h = teacher.hidden(idx, layer)
        x, mu, std = layer_norm(h)
        pre = sae.encode_pre_act(x)
        c = densify(*topk_relu(pre, sae.k), sae.n_latents)
        err = h - (sae.decode_dense(c) * std + mu)
    c = c.clone().requires_grad_()
    h_spliced = (sae.decode_dense(c) * std + mu) + err
    logits = teacher.logits_from(h_spliced, layer)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
    return torch.autograd.grad(loss, c)[0], c.detach(), pre, std


@pytest.mark.parametrize("method", ["attribution", "attribution_pre", "activation"])
def test_concept_scores_are_gradient_times_latent_through_the_spliced_reconstruction(method):
    teacher, sae, layer = tiny_teacher(), tiny_sae(), 1
    idx = torch.randint(0, 24, (3, 12))
    dl_dc, c, pre, std = spliced_latent_gradient(teacher, sae, idx, layer)
    extractor = ConceptExtractor(teacher, sae, layer, k_attr=3, method=method)
    h, grad = (t.flatten(0, 1) for t in teacher_pass(teacher, idx, layer, grad=method != "activation"))
    scores, latents = extractor.scores(h, grad)
    scores = torch.zeros(36, sae.n_latents).scatter_(-1, latents, scores).view(3, 12, -1)  # the candidates, dense
    expected = {"attribution": dl_dc * c, "attribution_pre": dl_dc * pre, "activation": c}[method]
    if method != "activation":  # the official code leaves out the positive per-token std
        scores = scores * std
        assert expected[:, :-1].abs().sum() > 0 and (expected[:, -1] == 0).all()  # the last position has no loss
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=1e-4)
    labels = extractor(idx)
    assert labels.shape == (3, 12, 3) and labels.dtype == torch.long
    top = expected.topk(3, dim=-1).values
    torch.testing.assert_close(expected.gather(-1, labels.clamp(min=0)) * (labels >= 0), top * (top > 0))
    assert ((labels >= 0) == (top > 0)).all()  # a label exactly where a latent scores above 0


def test_slots_without_a_positive_score_get_no_label_and_no_loss_or_accuracy():
    """The official code labels the window's last token (no loss there, all scores 0) with whatever latents topk
    returns first; we give those slots -1, and the concept loss skips them."""
    teacher, sae = tiny_teacher(), tiny_sae()
    idx = torch.randint(0, 24, (4, 16))
    labels = ConceptExtractor(teacher, sae, 1, k_attr=4)(idx)
    assert (labels[:, -1] == -1).all() and (labels[:, :-1] >= 0).float().mean() > 0.5  # random teacher
    logits = torch.randn(4, 16, sae.n_latents)
    given = labels >= 0
    by_hand = -torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0))[given].mean()
    torch.testing.assert_close(concept_loss(logits, labels), by_hand)
    torch.testing.assert_close(concept_loss(logits, torch.full_like(labels, -1)), torch.tensor(0.0))
    hits = (labels.unsqueeze(-1) == logits.topk(4, dim=-1).indices.unsqueeze(-2)).any(-1)
    assert concept_accuracy(logits, labels) == pytest.approx(hits[given].float().mean().item())
    perfect = logits.scatter(-1, labels.clamp(min=0), 100.0)  # every given label on top; the -1 slots miss
    assert concept_accuracy(perfect, labels) == 1.0
    assert ConceptExtractor(teacher, sae, 1, k_attr=4, method="activation")(idx).min() >= 0  # every token has k > 0


def test_lean_attribution_equals_the_dense_product_over_all_latents():
    teacher, sae = tiny_teacher(), tiny_sae()
    idx = torch.randint(0, 24, (4, 16))
    extractor = ConceptExtractor(teacher, sae, 1, k_attr=4)
    h, grad = (t.flatten(0, 1) for t in teacher_pass(teacher, idx, 1))
    z = sae.encode(h)
    dense = (grad @ sae.decoder.weight) * densify(z.vals, z.idx, sae.n_latents)
    top = dense.topk(4, dim=-1)
    assert torch.equal(extractor.labels(h, grad), top.indices.masked_fill(top.values <= 0, -1))


def test_labels_need_no_teacher_weight_gradients_and_hold_under_bf16_autocast():
    teacher, sae = tiny_teacher(), tiny_sae()
    extractor = ConceptExtractor(teacher, sae, 1, k_attr=4)
    idx = torch.randint(0, 24, (4, 16))
    labels = extractor(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        labels_bf16 = extractor(idx)
    with torch.no_grad():  # train.py's evaluation runs under no_grad
        assert torch.equal(extractor(idx), labels)
    assert labels_bf16.dtype == torch.long and labels_bf16.shape == labels.shape
    same = (labels_bf16.sort(-1).values == labels.sort(-1).values).all(-1)[:, :-1].float().mean()
    assert same > 0.8  # bf16 teacher activations may swap near-ties, nothing more
    assert all(p.grad is None for p in [*teacher.parameters(), *sae.parameters()])


def test_auxk_models_the_detached_residual_with_dead_latents_only():
    sae = tiny_sae()
    x = torch.randn(50, 32)
    pre = sae.encode_pre_act(x)
    vals, idx = topk_relu(pre, sae.k)
    residual = x - sae.decode(vals, idx)
    dead = torch.arange(64) % 2 == 0
    loss = auxk_loss(sae, pre, residual, dead, k_aux=5)
    loss.backward()
    assert (sae.decoder.weight.grad[:, ~dead] == 0).all() and (sae.encoder.weight.grad[~dead] == 0).all()
    assert sae.decoder.weight.grad[:, dead].abs().sum() > 0
    aux_vals, aux_idx = topk_relu(pre.detach().masked_fill(~dead, float("-inf")), 5)
    aux_recon = densify(aux_vals, aux_idx, 64) @ sae.decoder.weight.detach().t()  # no b_pre: it is in residual
    assert loss.item() == pytest.approx(fvu(residual.detach(), aux_recon).item(), rel=1e-5)
    assert auxk_loss(sae, pre, residual, torch.zeros(64, dtype=torch.bool), 5).item() == 0


# -----------------------------------------------------------------------------
# the script, end to end, on a tiny teacher and a tiny concept world written here

def train_briefly(model, tokens, steps=150):
    """A few Adam steps of next-token prediction, so that the teacher's hidden state matters to its loss."""
    model.train().requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matmuls this small only contend across threads (10x slower on a busy machine)
    for _ in range(steps):
        ix = torch.randint(len(tokens) - 17, (16,), generator=gen).tolist()
        x = torch.from_numpy(np.stack([tokens[i:i + 17] for i in ix]).astype(np.int64))
        loss = model(x[:, :-1], x[:, 1:])[2]["ntp"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return model.eval().requires_grad_(False)


def inputs_changed(ckpt):
    """Why the teacher and the dataset at the paths a sae.pt (ckpt) records are not those it was trained on, or None."""
    teacher_id = teacher_identity(ckpt["teacher_path"], *load_teacher(ckpt["teacher_path"], "cpu"))
    return changed_inputs(ckpt, teacher_id, fingerprint(load_meta(os.path.join(ckpt["data_root"], ckpt["dataset"]))))


@pytest.fixture
def teacher_and_data(tmp_path):
    return make_teacher_and_data(tmp_path)


def make_teacher_and_data(tmp_path):
    """A toy concept world (two document factors choose the words) in prepare.py's format, and a tiny teacher
    checkpoint in train.py's format: (its path, the data_root)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    d = root / "toyworld"
    d.mkdir(parents=True)
    eot = 20
    for split, n_docs in (("train", 300), ("val", 40)):
        tokens, concepts, drivers = [], [], []
        for _ in range(n_docs):
            a, b = rng.integers(0, 2), rng.integers(0, 3)
            kind = rng.choice([0, 1, 255], 24)
            words = np.where(kind == 0, 2 * a + rng.integers(0, 2, 24),
                             np.where(kind == 1, 4 + 3 * b + rng.integers(0, 3, 24), 13 + rng.integers(0, 7, 24)))
            tokens += [*words, eot]
            concepts += [[a, b]] * 25
            drivers += [*kind, 255]
        np.array(tokens, np.uint16).tofile(d / f"{split}.bin")
        np.array(concepts, np.uint8).tofile(d / f"{split}_concepts.bin")
        np.array(drivers, np.uint8).tofile(d / f"{split}_drivers.bin")
    meta = {"dataset": "toyworld", "tokenizer": "words", "vocab_size": 21, "eot_token": eot,
            "itos": [f"w{i}" for i in range(20)] + ["<|endoftext|>"],
            "concept_factors": [{"name": "a", "values": ["x", "y"]}, {"name": "b", "values": ["x", "y", "z"]}]}
    (d / "meta.json").write_text(json.dumps(meta))
    teacher = train_briefly(tiny_teacher(), np.fromfile(d / "train.bin", dtype=np.uint16))
    ckpt = {"model": teacher.state_dict(), "model_args": TEACHER, "meta": meta,
            "config": {"dataset": "toyworld", "data_root": str(root)}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    return str(tmp_path / "ckpt.pt"), str(root)


SMALL = ["--n_latents=32", "--k=4", "--batch_size=256", "--buffer_tokens=1024", "--eval_tokens=2048",
         "--log_interval=5", "--dead_tokens=2000", "--k_aux=16", "--learning_rate=3e-3", "--device=cpu"]


def test_trains_saves_a_usable_checkpoint_and_resumes(teacher_and_data, tmp_path):
    teacher_path, root = teacher_and_data
    out = tmp_path / "sae"
    p = run_script("sae.py", f"--teacher_path={teacher_path}", f"--out_dir={out}", "--max_tokens=20000", *SMALL)
    assert "fvu" in p.stdout and "tokens/s" in p.stdout
    ckpt = torch.load(out / "sae.pt", weights_only=False)
    assert not os.path.exists(out / "sae.pt.tmp")
    assert (ckpt["teacher_path"], ckpt["layer"], ckpt["k"], ckpt["n_latents"], ckpt["n_inputs"], ckpt["normalize"]) == \
        (teacher_path, 1, 4, 32, 32, True)
    meta = json.loads(open(os.path.join(root, "toyworld", "meta.json")).read())
    assert ckpt["data_fingerprint"] == fingerprint(meta) and ckpt["teacher_id"]["data"] == fingerprint(meta)
    assert inputs_changed(ckpt) is None
    m = ckpt["metrics"]
    assert m["fvu"] < 0.2 and m["l0"] > 3 and m["dead_frac"] < 0.5
    assert m["loss_clean"] <= m["loss_spliced"] < m["loss_zero"] and m["loss_recovered"] > 0.5
    # the metrics are those of the saved SAE on every val window (not position 0 nor end-of-text), by hand
    sae, _ = load_sae(str(out / "sae.pt"))
    teacher = GPT.from_checkpoint(teacher_path)[0].eval()
    val = np.fromfile(os.path.join(root, "toyworld", "val.bin"), dtype=np.uint16).astype(np.int64)
    n = (len(val) - 1) // 16
    idx = torch.from_numpy(val[:n * 16].reshape(n, 16))
    keep = (idx != 20) & (torch.arange(16) > 0)
    with torch.no_grad():
        h = teacher.hidden(idx, 1)
        recon, z = sae(h)
    h, recon = h[keep], recon[keep]
    assert m["fvu"] == pytest.approx((((h - recon) ** 2).sum() / ((h - h.mean(0)) ** 2).sum()).item(), rel=1e-4)
    assert m["l0"] == pytest.approx((z.vals[keep] > 0).sum(-1).float().mean().item(), rel=1e-6)
    torch.testing.assert_close(ckpt["sae"]["decoder.weight"].norm(dim=0), torch.ones(32))

    extractor = load_concept_extractor(str(out / "sae.pt"), "cpu", k_attr=2)
    assert (extractor.n_concepts, extractor.k_attr) == (32, 2)
    assert extractor(torch.randint(0, 21, (2, 16))).shape == (2, 16, 2)

    tokens = ckpt["tokens"]
    run_script("sae.py", "--init_from=resume", f"--out_dir={out}", "--max_tokens=30000", *SMALL)
    resumed = torch.load(out / "sae.pt", weights_only=False)
    assert resumed["tokens"] >= 30000 > tokens and resumed["step"] > ckpt["step"]


def test_bad_teacher_layer_or_vocabulary_stops_with_a_one_line_error(teacher_and_data, tmp_path):
    teacher_path, root = teacher_and_data
    bad = ["sae.py", f"--teacher_path={teacher_path}", f"--out_dir={tmp_path / 'x'}", *SMALL]
    p = run_script(*bad, "--layer=3", check=False)
    assert p.returncode != 0 and p.stdout.strip().splitlines() == [
        "error: layer=3 is out of range: the teacher has blocks 0..2"]
    meta = json.loads(open(os.path.join(root, "toyworld", "meta.json")).read())
    big = dict(meta, vocab_size=50)
    (tmp_path / "data" / "big").mkdir()
    for f in ("train.bin", "val.bin"):
        os.link(os.path.join(root, "toyworld", f), tmp_path / "data" / "big" / f)
    (tmp_path / "data" / "big" / "meta.json").write_text(json.dumps(big))
    p = run_script(*bad, "--dataset=big", check=False)
    assert p.returncode != 0 and p.stdout.strip().splitlines() == [
        "error: dataset big has 50 tokens but the teacher only 24: use a teacher trained on big"]
    assert not os.path.exists(tmp_path / "x")  # nothing written
    teacher = tiny_teacher()
    with pytest.raises(ValueError, match="toyworld is tokenized with 'words' but the teacher with 'gpt2'"):
        check_vocab(teacher, {"tokenizer": "gpt2", "itos": None}, meta, "toyworld")  # e.g. a gpt2 teacher
    with pytest.raises(ValueError, match="tokenized with another 'words' vocabulary"):
        check_vocab(teacher, {"tokenizer": "words", "itos": meta["itos"][::-1]}, meta, "toyworld")
    check_vocab(teacher, {"tokenizer": "words", "itos": meta["itos"]}, meta, "toyworld")


def test_an_sae_of_another_width_or_layer_is_refused_by_the_extractor(tmp_path):
    teacher = tiny_teacher()
    with pytest.raises(ValueError, match="48-wide activations but the teacher is 32 wide"):
        ConceptExtractor(teacher, tiny_sae(n_inputs=48), 1)
    with pytest.raises(ValueError, match="out of range"):
        ConceptExtractor(teacher, tiny_sae(), -1)
    with pytest.raises(ValueError, match="unknown concept method"):
        ConceptExtractor(teacher, tiny_sae(), 1, method="gradient")
    with pytest.raises(ValueError, match="k_attr=9 exceeds the SAE's k=8 active latents"):
        ConceptExtractor(teacher, tiny_sae(), 1, k_attr=9)  # only active latents can score above 0
    ConceptExtractor(teacher, tiny_sae(), 1, k_attr=9, method="attribution_pre")  # every latent can
    with pytest.raises(ValueError, match="not found"):
        load_sae(str(tmp_path / "missing.pt"))


def test_openai_file_becomes_a_gpt2_sae_checkpoint_named_by_its_layer(teacher_and_data, tmp_path):
    teacher_path, root = teacher_and_data
    d = os.path.join(root, "toygpt2")  # the same tokens, presented as GPT-2 BPE for the stand-in GPT-2 below
    os.mkdir(d)
    for f in ("train.bin", "val.bin"):
        os.link(os.path.join(root, "toyworld", f), os.path.join(d, f))
    meta = json.loads(open(os.path.join(root, "toyworld", "meta.json")).read())
    meta = {key: v for key, v in meta.items() if key not in ("itos", "concept_factors")}
    open(os.path.join(d, "meta.json"), "w").write(json.dumps(dict(meta, tokenizer="gpt2")))
    sd = {"pre_bias": torch.randn(32), "latent_bias": torch.randn(48), "encoder.weight": torch.randn(48, 32),
          "decoder.weight": torch.randn(32, 48), "activation": "TopK",
          "activation_state_dict": {"k": 4, "postact_fn": "ReLU"}}
    torch.save(sd, tmp_path / "1.pt")
    out = tmp_path / "sae_gpt2"
    stand_in = (f"import sys, torch, sae; from model import GPT, GPTConfig; ck = torch.load({teacher_path!r}, "
                "weights_only=False); m = GPT(GPTConfig(**ck['model_args'])); m.load_state_dict(ck['model']); "
                "GPT.from_pretrained = classmethod(lambda cls, name: m); sys.argv = sys.argv[:1] + "
                f"['--init_from=openai:{tmp_path / '1.pt'}', '--data_root={root}', '--dataset=toygpt2', "
                f"'--out_dir={out}', '--eval_tokens=512']; sae.main()")
    p = run_script("-c", stand_in)
    assert "of the loss recovered" in p.stdout and "step " not in p.stdout  # evaluated, not trained
    ckpt = torch.load(out / "sae.pt", weights_only=False)
    assert (ckpt["teacher_path"], ckpt["layer"], ckpt["k"], ckpt["n_latents"]) == ("gpt2", 1, 4, 48)
    for key in ("pre_bias", "latent_bias", "encoder.weight", "decoder.weight"):
        assert torch.equal(ckpt["sae"][key], sd[key])
    m = ckpt["metrics"]  # the random weights above reconstruct badly, and splicing them in hurts the teacher
    assert m["fvu"] > 0.5 and m["loss_spliced"] > m["loss_clean"] and ckpt["tokenizer"]["tokenizer"] == "gpt2"


# -----------------------------------------------------------------------------
# what a resume, a kill and a diverging run must not lose or corrupt

def test_the_activation_stream_continues_exactly_from_its_state_dict(tmp_path):
    path = tmp_path / "train.bin"
    np.random.default_rng(0).integers(0, 24, 5000).astype(np.uint16).tofile(path)
    make = lambda: ActivationStream(tiny_teacher(), 1, str(path), None, 16, 64, 256, seed=3, device="cpu")  # noqa: E731
    a = make()
    for _ in range(7):
        next(a)
    state = a.state_dict()
    assert 0 < state["n_out"] < len(state["buf"])  # mid-way through a shuffled buffer
    b = make()
    b.load_state_dict(state)
    for _ in range(10):  # across refills
        assert torch.equal(next(a), next(b))


def test_a_non_finite_loss_stops_training_and_a_non_finite_sae_is_never_saved(tmp_path):
    sae = tiny_sae()
    batches = (torch.randn(64, 32) for _ in range(100))
    state = {"step": 0, "tokens": 0, "since_fired": torch.zeros(64, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"loss is nan at step \d+: learning_rate=1e\+20 is likely too high"):
        train(sae, batches, state, None, 6400, 1e20, 8, 1 / 32, 1000, 1000, 1000)
    assert all(torch.isfinite(p).all() for p in sae.parameters())  # stopped before the step that would spread it
    path, sae = str(tmp_path / "sae.pt"), tiny_sae()
    save_checkpoint(path, sae, {"step": 1}, None, {})
    before = open(path, "rb").read()
    with torch.no_grad():
        sae.encoder.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="weights are not finite at step 2: .*sae.pt was left as it was"):
        save_checkpoint(path, sae, {"step": 2}, None, {})
    assert open(path, "rb").read() == before and not os.path.exists(path + ".tmp")


RESUME = ["--n_latents=32", "--k=4", "--batch_size=256", "--buffer_tokens=2048", "--eval_tokens=2048",
          "--dead_tokens=1000", "--k_aux=16", "--learning_rate=3e-3", "--ckpt_interval=5", "--device=cpu"]
KILL_AFTER_SAVE = """
import os, sae
save = sae.save_checkpoint
def save_then_die(path, model, state, *args):
    save(path, model, state, *args)
    if state["step"] == 15:
        os._exit(9)  # kill -9 right after a checkpoint: what comes later is lost anyway
sae.save_checkpoint = save_then_die
sae.main()
"""


def test_a_resumed_sae_is_bit_identical_to_an_uninterrupted_one_after_a_stop_or_a_kill(teacher_and_data, tmp_path):
    teacher_path, _ = teacher_and_data
    sae_py = lambda out, *args: run_script("sae.py", f"--teacher_path={teacher_path}", f"--out_dir={out}",  # noqa: E731
                                           *RESUME, *args)
    sae_py(tmp_path / "whole", "--max_tokens=8192")  # 32 steps
    sae_py(tmp_path / "stopped", "--max_tokens=4096")
    sae_py(tmp_path / "stopped", "--max_tokens=8192", "--init_from=resume")
    p = run_script("-c", KILL_AFTER_SAVE, f"--teacher_path={teacher_path}", f"--out_dir={tmp_path / 'killed'}",
                   *RESUME, "--max_tokens=8192", check=False)
    assert p.returncode == 9 and torch.load(tmp_path / "killed/sae.pt", weights_only=False)["step"] == 15
    (tmp_path / "killed/sae.pt.tmp").write_bytes(b"half a checkpoint")  # as a kill during a save leaves
    sae_py(tmp_path / "killed", "--max_tokens=8192", "--init_from=resume")
    assert not (tmp_path / "killed/sae.pt.tmp").exists()
    whole = torch.load(tmp_path / "whole/sae.pt", weights_only=False)
    for run in ("stopped", "killed"):
        resumed = torch.load(tmp_path / run / "sae.pt", weights_only=False)
        assert resumed["step"] == whole["step"] == 32
        for key, w in whole["sae"].items():
            assert torch.equal(resumed["sae"][key], w), (run, key)
        assert torch.equal(resumed["since_fired"], whole["since_fired"])


def test_an_sae_whose_teacher_or_data_changed_is_refused_for_resume_and_for_labels(teacher_and_data, tmp_path):
    teacher_path, root = teacher_and_data
    out = tmp_path / "sae"
    run_script("sae.py", f"--teacher_path={teacher_path}", f"--out_dir={out}", "--max_tokens=1024", *SMALL)
    ckpt = torch.load(out / "sae.pt", weights_only=False)
    good = torch.load(teacher_path, weights_only=False)
    retrained = dict(good, iter_num=40)
    retrained["model"] = {key: w + 0.01 for key, w in good["model"].items()}
    torch.save(retrained, teacher_path)
    assert inputs_changed(ckpt).startswith(f"the teacher at {teacher_path} was retrained since this SAE started "
                                               "(iter_num None -> 40, weights ")
    with pytest.raises(ValueError, match="cannot be used: the teacher at .* was retrained since this SAE started"):
        load_concept_extractor(str(out / "sae.pt"), "cpu")
    p = run_script("sae.py", "--init_from=resume", f"--out_dir={out}", "--max_tokens=2048", check=False)
    assert p.returncode != 0 and p.stdout.strip().splitlines()[-1].startswith(
        f"error: cannot resume {out / 'sae.pt'}: the teacher at {teacher_path} was retrained since this SAE started")
    assert torch.load(out / "sae.pt", weights_only=False)["step"] == ckpt["step"]  # untouched
    torch.save(good, teacher_path)
    meta_path = os.path.join(root, "toyworld", "meta.json")
    meta = json.loads(open(meta_path).read())
    open(meta_path, "w").write(json.dumps(dict(meta, source="another text")))
    assert inputs_changed(ckpt) == "dataset toyworld was prepared again since this SAE started (its meta.json " \
                                       "changed)"
    open(meta_path, "w").write(json.dumps(meta))
    assert inputs_changed(ckpt) is None


def test_a_released_openai_sae_is_fetched_once_into_the_cache_and_checked_by_its_hash(tmp_path, capsys):
    """Offline: the 'server' is a file:// tree in OpenAI's layout."""
    from sae import fetch_openai_sae
    src = tmp_path / "server" / "resid_post_mlp_v5_32k" / "autoencoders"
    src.mkdir(parents=True)
    torch.save({"pre_bias": torch.zeros(4)}, src / "5.pt")
    base, cache = f"file://{tmp_path / 'server'}", str(tmp_path / "cache")
    path = fetch_openai_sae("resid_post_mlp_v5_32k/5", base_url=base, cache=cache)
    assert open(path, "rb").read() == (src / "5.pt").read_bytes() and "downloading" in capsys.readouterr().out
    import hashlib
    digest = hashlib.sha256((src / "5.pt").read_bytes()).hexdigest()
    assert fetch_openai_sae("resid_post_mlp_v5_32k/5", digest, base_url=base, cache=cache) == path
    assert "downloading" not in capsys.readouterr().out  # the cache serves it
    with pytest.raises(ValueError, match="not the 00 asked for: delete it and download it again"):
        fetch_openai_sae("resid_post_mlp_v5_32k/5", "00", base_url=base, cache=cache)
    with pytest.raises(ValueError, match="could not download .*/resid_post_mlp_v5_32k/autoencoders/7.pt"):
        fetch_openai_sae("resid_post_mlp_v5_32k/7", base_url=base, cache=cache)
    assert os.listdir(os.path.join(cache, "resid_post_mlp_v5_32k")) == ["5.pt"]  # no 7.pt, whole or half
    with pytest.raises(ValueError, match="neither a file nor a released SAE's name"):
        fetch_openai_sae("gpt2/../x", base_url=base, cache=cache)
