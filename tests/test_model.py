import runpy

import pytest
import torch

from model import GPT, GPTConfig

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
    out = model.generate(torch.zeros(1, 30, dtype=torch.long), max_new_tokens=10, top_k=5)
    assert out.shape == (1, 40) and out.max() < 96


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
