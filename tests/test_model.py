import runpy

import pytest
import torch

from model import GPT, GPTConfig, generate, kd_loss, layer_norm, steered_topk

TINY = dict(block_size=32, vocab_size=96, n_layer=3, n_head=2, n_embd=32)


def test_from_pretrained_reproduces_huggingface_gpt2_logits():
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(n_positions=32, n_embd=48, n_layer=2, n_head=3, vocab_size=101)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    for p in hf.parameters():  # HF zero-inits biases and LN; randomise so a wrong mapping shows
        p.data.normal_(0, 0.2)
    ours = GPT.from_pretrained(hf_model=hf).eval()
    idx = torch.randint(0, 101, (2, 17))
    with torch.no_grad():
        expected = hf(idx).logits
        got = ours(idx)[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_changing_future_tokens_leaves_past_logits_unchanged():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    a = torch.randint(0, 96, (1, 20))
    b = a.clone()
    b[0, 12:] = torch.randint(0, 96, (8,))
    with torch.no_grad():
        la, lb = model(a)[0], model(b)[0]
    torch.testing.assert_close(la[:, :12], lb[:, :12])
    assert not torch.allclose(la[:, 12:], lb[:, 12:])


def test_loss_is_next_token_cross_entropy_and_ignores_minus_one():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    x = torch.randint(0, 96, (2, 10))
    y = torch.randint(0, 96, (2, 10))
    y[:, -3:] = -1
    logits, _, losses = model(x, y)
    manual = torch.nn.functional.cross_entropy(logits[:, :-3].reshape(-1, 96), y[:, :-3].reshape(-1))
    torch.testing.assert_close(losses["ntp"], manual)


def test_flops_per_token_counts_every_matmul_weight_plus_attention():
    model = GPT(GPTConfig(**TINY))
    T = 32
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.flops_per_token(T) == 6 * weights + 12 * TINY["n_layer"] * TINY["n_embd"] * T


def test_generate_appends_tokens_and_crops_context_to_block_size():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    prompt = torch.randint(0, 96, (1, 30))
    out = model.generate(prompt, max_new_tokens=10, top_k=1)  # top_k=1: greedy, so each token can be checked
    assert out.shape == (1, 40) and torch.equal(out[:, :30], prompt)
    with torch.no_grad():  # past 32 tokens (block_size) the model sees only the last 32
        expected = [model(out[:, max(0, t - 32):t])[0][0, -1].argmax().item() for t in range(30, 40)]
    assert out[0, 30:].tolist() == expected


def test_the_two_halves_around_any_block_reproduce_the_forward():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    idx = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        for layer in range(-1, 3):
            torch.testing.assert_close(model.logits_from(model.hidden(idx, layer), layer), model(idx)[0],
                                       rtol=0, atol=0)


def test_a_checkpoint_loads_with_its_weights_settings_and_dataset_meta(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    meta = {"dataset": "toy", "tokenizer": "chars", "vocab_size": 96}
    torch.save({"model": model.state_dict(), "model_args": TINY, "config": {"dataset": "toy"}, "meta": meta,
                "iter_num": 7}, tmp_path / "ckpt.pt")
    loaded, record = GPT.from_checkpoint(str(tmp_path))
    assert record["meta"] == meta and record["iter_num"] == 7 and "model" not in record
    x = torch.randint(0, 96, (1, 8))
    torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="not found: train a model first"):
        GPT.from_checkpoint(str(tmp_path / "nowhere"))
    torch.save({"model": model.state_dict(), "model_args": TINY}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="records no dataset meta"):
        GPT.from_checkpoint(str(tmp_path / "old.pt"))


def test_a_damaged_or_foreign_checkpoint_is_named_in_a_one_line_error(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    torch.save({"model": model.state_dict(), "model_args": TINY, "meta": {"dataset": "toy"}}, tmp_path / "ckpt.pt")
    good = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(good[:len(good) // 2])  # a save cut short by a full disk or a kill
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("hello")
    torch.save({"sae": {}, "teacher_path": "out/teacher"}, tmp_path / "sae.pt")
    torch.save({"model": model.state_dict(), "model_args": {**TINY, "n_embd": 64}, "meta": {}}, tmp_path / "other.pt")
    (tmp_path / "dir.pt").mkdir()
    for name, reason in (("half.pt", "cut short or corrupt: "), ("empty.pt", "the file is empty"),
                         ("notes.pt", "not a torch.save file"), ("other.pt", "its weights do not fit its model_args")):
        with pytest.raises(ValueError, match=rf"{name} is damaged or not a train.py checkpoint \(({reason})"):
            GPT.from_checkpoint(str(tmp_path / name))
    with pytest.raises(ValueError, match=r"sae.pt is an SAE \(sae.py\), not a train.py checkpoint"):
        GPT.from_checkpoint(str(tmp_path / "sae.pt"))
    with pytest.raises(ValueError, match=r"dir.pt is a directory, not a train.py checkpoint"):
        GPT.from_checkpoint(str(tmp_path / "dir.pt"))


def test_temperature_zero_decodes_greedily_and_top_k_zero_keeps_every_token():
    torch.manual_seed(0)
    table = torch.randn(12, 12)
    logits_fn = lambda idx: table[idx]  # noqa: E731  the next token depends on the last one only
    start = torch.zeros(3, 1, dtype=torch.long)
    greedy = generate(logits_fn, start, 8, 4, temperature=0)
    expected = [0]
    for _ in range(8):
        expected.append(table[expected[-1]].argmax().item())
    assert greedy.tolist() == [expected] * 3
    assert (generate(logits_fn, start, 8, 4, temperature=0, vocab_size=5) < 5).all()
    torch.manual_seed(1)
    everything = generate(logits_fn, start, 8, 4, top_k=0)
    torch.manual_seed(1)
    assert torch.equal(everything, generate(logits_fn, start, 8, 4, top_k=None))


def test_generation_never_samples_the_ids_that_pad_the_vocabulary():
    logits_fn = lambda idx: torch.tensor([0.0, 0.0, 0.0, 9.0]).expand(*idx.shape, 4)  # noqa: E731  favours id 3
    torch.manual_seed(0)
    assert (generate(logits_fn, torch.zeros(8, 1, dtype=torch.long), 5, 4)[:, 1:] == 3).float().mean() > 0.9
    assert (generate(logits_fn, torch.zeros(8, 1, dtype=torch.long), 5, 4, vocab_size=3) < 3).all()


def test_weight_decay_only_on_matrices_and_embeddings():
    model = GPT(GPTConfig(**TINY))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_estimate_mfu_uses_the_gpu_peak_table():
    model = GPT(GPTConfig(**TINY))
    fpt = model.flops_per_token(32)
    assert model.estimate_mfu(1e9, 32, "NVIDIA H100 80GB HBM3") == pytest.approx(fpt * 1e9 / 989e12)
    assert model.estimate_mfu(1e9, 32, "NVIDIA A100-SXM4-40GB") == pytest.approx(fpt * 1e9 / 312e12)
    assert model.estimate_mfu(1e9, 32, "cpu") is None


@pytest.mark.parametrize("preset, expected_millions", [
    ("config/owt_ntp_69m.py", 69.4), ("config/owt_ntp_386m.py", 386.3), ("config/owt_ntp_1b.py", 1373.4)])
def test_paper_ntp_presets_have_the_papers_parameter_counts(preset, expected_millions):
    cfg = runpy.run_path(preset)
    with torch.device("meta"):  # count without allocating 1.4B parameters
        model = GPT(GPTConfig(n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                              block_size=cfg["block_size"], vocab_size=50257))
    assert round(model.get_num_params() / 1e6, 1) == expected_millions


# --- CoCoMix: concept prediction, compression and mixing ------------------------------------------------

def cocomix(mixing="interleave", **kw):
    return GPT(GPTConfig(**TINY, n_concepts=64, k_concepts=8, insert_layer=1, mixing=mixing, **kw))


def test_flops_per_token_counts_twice_the_slots_after_an_interleaved_insertion():
    model = cocomix()  # 3 blocks of width 32, concepts inserted before block 1, so 2 blocks run over 2T slots
    d, T, C, K, V = 32, 16, 64, 8, 96
    block = 6 * 12 * d * d  # attention (4 d^2) and MLP (8 d^2) weights, 6 FLOPs per multiply-add
    attention = 12 * d * T  # causal attention scores and values over T slots
    interleaved = 2 * (block + 12 * d * 2 * T)  # per token: 2 slots, each attending over 2T slots
    by_hand = 6 * d * V + (block + attention) + 2 * interleaved + 6 * d * (C + K)  # lm_head, 1 + 2 blocks, head
    assert model.flops_per_token(T) == by_hand
    assert cocomix("add").flops_per_token(T) == 6 * d * V + 3 * (block + attention) + 6 * d * (C + K)


def test_the_continuous_concept_is_mapped_back_with_the_tokens_own_mean_and_plain_std():
    torch.manual_seed(0)
    head = cocomix().concept_head.double()  # float64: eps (1e-5) in the de-normalisation would show at 1e-6
    for p in head.parameters():
        p.data.normal_(0, 0.5)
    h = torch.randn(2, 5, 32, dtype=torch.float64) * 3 + 1
    mu, std = h.mean(-1, keepdim=True), h.std(-1, keepdim=True)  # the official code: unbiased std, eps only in x
    z = head.predictor((h - mu) / (std + 1e-5) - head.pre_bias)
    top = z.topk(8, dim=-1)
    kept = torch.zeros_like(z).scatter(-1, top.indices, top.values)
    expected = (head.compressor(kept) + head.pre_bias) * std + mu
    z_ours, c = head(h)
    torch.testing.assert_close(z_ours, z)
    torch.testing.assert_close(c, expected, rtol=1e-12, atol=1e-12)
    x, mu_ours, std_ours = layer_norm(h)  # the SAE's input normalisation is the same function
    torch.testing.assert_close(x * std_ours + mu_ours, h, rtol=1e-4, atol=1e-4)


def test_compressing_the_k_kept_columns_equals_the_dense_masked_product():
    torch.manual_seed(0)
    head = cocomix().concept_head
    z = torch.randn(2, 5, 64)
    top, idx = z.topk(8, dim=-1)
    masked = torch.zeros_like(z).scatter(-1, idx, top)  # TopK(z): kept logits, zeros elsewhere
    torch.testing.assert_close(head.compress(top, idx), masked @ head.compressor.weight.t())


def test_the_compressor_hands_embedding_bag_a_contiguous_weight_so_it_takes_the_fast_kernel():
    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.embedding_bag:
                weights.append(args[1])
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    head, weights = cocomix().concept_head, []
    top, idx = torch.randn(2, 5, 64).topk(8, dim=-1)
    with Spy():
        head.compress(top, idx).sum().backward()
    assert len(weights) == 1 and weights[0].is_contiguous()  # a strided (C, d) view took a ~40x slower path
    assert head.compressor.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mixing", ["interleave", "add", "none"])
def test_future_tokens_change_neither_past_next_token_nor_concept_logits(mixing):
    torch.manual_seed(0)
    model = cocomix(mixing).eval()
    a = torch.randint(0, 96, (2, 20))
    b = a.clone()
    b[:, 9:] = torch.randint(0, 96, (2, 11))
    with torch.no_grad():
        la, za, _ = model(a)
        lb, zb, _ = model(b)
    torch.testing.assert_close(la[:, :9], lb[:, :9])
    torch.testing.assert_close(za[:, :9], zb[:, :9])
    assert not torch.allclose(la[:, 9:], lb[:, 9:]) and not torch.allclose(za[:, 9:], zb[:, 9:])


def test_without_a_concept_head_the_model_is_the_plain_gpt():
    torch.manual_seed(0)
    plain = GPT(GPTConfig(**TINY))
    torch.manual_seed(0)
    off = GPT(GPTConfig(**TINY, n_concepts=0, insert_layer=1, mixing="add"))
    assert list(off.state_dict()) == list(plain.state_dict())
    x = torch.randint(0, 96, (2, 12))
    torch.testing.assert_close(off(x)[0], plain(x)[0])


def test_prediction_only_leaves_next_token_logits_those_of_the_trunk():
    torch.manual_seed(0)
    model, plain = cocomix("none").eval(), GPT(GPTConfig(**TINY)).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("concept_head.") for k in unexpected)
    x = torch.randint(0, 96, (2, 12))
    logits, concept_logits, _ = model(x)
    torch.testing.assert_close(logits, plain(x)[0])
    assert concept_logits.shape == (2, 12, 64)


def test_interleaving_runs_later_blocks_over_2t_slots_and_reads_tokens_from_concept_slots():
    torch.manual_seed(0)
    model = cocomix().eval()
    seen = []
    model.transformer.h[2].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    logits, _, _ = model(torch.randint(0, 96, (2, 12)))
    assert seen == [(2, 24, 32)] and logits.shape == (2, 12, 96)


def test_next_token_loss_trains_the_concept_predictor_through_the_kept_logits():
    torch.manual_seed(0)
    model = cocomix()
    x, y = torch.randint(0, 96, (2, 12)), torch.randint(0, 96, (2, 12))
    model(x, y)[2]["ntp"].backward()
    assert model.concept_head.predictor.weight.grad.abs().sum() > 0
    assert model.concept_head.compressor.weight.grad.abs().sum() > 0


def test_concept_loss_is_the_mean_of_k_attr_single_label_cross_entropies():
    torch.manual_seed(0)
    model = cocomix()
    x, y = torch.randint(0, 96, (2, 6)), torch.randint(0, 96, (2, 6))
    labels = torch.randint(0, 64, (2, 6, 4))
    _, z, losses = model(x, y, labels)
    manual = sum(torch.nn.functional.cross_entropy(z.reshape(-1, 64), labels[..., k].reshape(-1))
                 for k in range(4)) / 4
    torch.testing.assert_close(losses["concept"], manual)


def test_steering_scales_the_chosen_concept_logit_before_topk():
    torch.manual_seed(0)
    model = cocomix().eval()
    x = torch.randint(0, 96, (1, 8))
    steer = torch.ones(64)
    steer[5] = 10.0
    z, z_steered = model(x)[1], model(x, steer=steer)[1]
    torch.testing.assert_close(z_steered[..., 5], 10 * z[..., 5])
    torch.testing.assert_close(z_steered[..., :5], z[..., :5])


def test_forcing_keeps_a_steered_concept_in_the_topk_with_its_scaled_logit():
    torch.manual_seed(0)
    z = torch.randn(3, 5, 64)
    low = z.argmin(-1)[0, 0].item()  # the smallest logit at one position: never in an unforced TopK
    steer = torch.ones(64)
    steer[low] = 2.0
    _, top, idx = steered_topk(z, 8, steer)
    assert not (idx[0, 0] == low).any()
    zs, top, idx = steered_topk(z, 8, steer, force=True)
    assert (idx == low).any(-1).all()  # at every position
    torch.testing.assert_close(top[idx == low], 2.0 * z[..., low].flatten())
    others = idx != low  # the rest are the 7 largest of the other logits
    torch.testing.assert_close(top[others].view(3, 5, 7), z.masked_fill(steer != 1, -1e9).topk(7, -1).values)
    _, top1, idx1 = steered_topk(z, 8, torch.ones(64), force=True)  # all-ones steering changes nothing
    torch.testing.assert_close((top1, idx1), tuple(z.topk(8, -1)))


@pytest.mark.parametrize("cocomix_preset, ntp_preset, cocomix_m, ntp_m", [
    ("config/owt_cocomix_69m.py", "config/owt_ntp_69m.py", 68.3, 69.4),
    ("config/owt_cocomix_386m.py", "config/owt_ntp_386m.py", 388.4, 386.3),
    ("config/owt_cocomix_1b.py", "config/owt_ntp_1b.py", 1380.8, 1373.4)])
def test_cocomix_presets_match_ntp_in_activated_parameters_as_the_paper(cocomix_preset, ntp_preset, cocomix_m,
                                                                        ntp_m):
    def build(path, **kw):
        cfg = runpy.run_path(path)
        with torch.device("meta"):
            return GPT(GPTConfig(n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                                 block_size=cfg["block_size"], vocab_size=50257, **kw))
    c = runpy.run_path(cocomix_preset)
    model = build(cocomix_preset, n_concepts=32768, k_concepts=c["k_concepts"], insert_layer=c["insert_layer"])
    assert round(model.get_num_params(activated=True) / 1e6, 1) == cocomix_m
    assert round(build(ntp_preset).get_num_params() / 1e6, 1) == ntp_m


# -----------------------------------------------------------------------------
# the paper's controls: pause tokens, hidden-state regression, knowledge distillation

def test_kd_loss_is_zero_for_the_teacher_itself_and_its_gradient_matches_finite_differences():
    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 10, dtype=torch.float64)
    padded = torch.cat((teacher, torch.full((2, 3, 6), 50.0, dtype=torch.float64)), -1)  # padding ids: ignored
    assert kd_loss(padded, teacher, vocab_size=10).abs() < 1e-12
    student = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    p, logp_s = teacher.softmax(-1), student.log_softmax(-1)
    by_hand = (p * (p.log() - logp_s)).sum(-1).mean()  # KL(teacher || student) per token, averaged
    torch.testing.assert_close(kd_loss(student, teacher, 10), by_hand)
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, teacher, 10), (student,))


def test_a_pause_model_interleaves_one_learned_embedding_and_reads_tokens_from_the_pause_slots():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, pause=True, insert_layer=1)).eval()
    assert model.get_num_params() == GPT(GPTConfig(**TINY)).get_num_params() + 32  # one pause embedding
    seen = []
    model.transformer.h[1].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.randint(0, 96, (2, 12))
    logits, head, _ = model(x)
    assert head is None and logits.shape == (2, 12, 96) and seen[0].shape == (2, 24, 32)
    assert torch.equal(seen[0][:, 1::2], model.pause_embedding.expand(2, 12, 32))  # the same slot everywhere
    b = x.clone()
    b[:, 6:] = (b[:, 6:] + 1) % 96
    torch.testing.assert_close(model(b)[0][:, :6], logits[:, :6])  # causal over the interleaved sequence


@pytest.mark.parametrize("kind", ["l2", "cosine"])
def test_regression_predicts_the_teachers_state_compresses_it_into_the_slot_and_trains_by_its_loss(kind):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, n_regress=48, regress_loss=kind, insert_layer=1))
    x, y, target = torch.randint(0, 96, (2, 12)), torch.randint(0, 96, (2, 12)), torch.randn(2, 12, 48)
    logits, prediction, losses = model(x, y, target)
    assert prediction.shape == (2, 12, 48) and logits.shape == (2, 12, 96)
    expected = {"l2": ((prediction - target) ** 2).mean(),
                "cosine": 1 - torch.nn.functional.cosine_similarity(prediction, target, dim=-1).mean()}[kind]
    torch.testing.assert_close(losses["concept"], expected)
    losses["concept"].backward()
    assert model.regression_head.g[0].weight.grad.abs().sum() > 0
    assert model.regression_head.compressor.weight.grad is None  # the loss is on g(h), before compression
    model.zero_grad()
    losses = model(x, y, target)[2]
    losses["ntp"].backward()
    assert model.regression_head.compressor.weight.grad.abs().sum() > 0  # the token loss trains the slot


def test_flops_count_the_controls_slots_and_heads():
    pause = GPT(GPTConfig(**TINY, pause=True, insert_layer=1))
    interleaved = GPT(GPTConfig(**TINY, n_concepts=64, k_concepts=8, insert_layer=1))
    plain = GPT(GPTConfig(**TINY))
    head = 6 * 32 * (64 + 8)
    assert pause.flops_per_token(16) == interleaved.flops_per_token(16) - head > plain.flops_per_token(16)
    regress = GPT(GPTConfig(**TINY, n_regress=48, insert_layer=1))
    assert regress.flops_per_token(16) == pause.flops_per_token(16) + 6 * (32 * 48 + 48 * 48 + 48 * 32)
