"""torch.compile of every student variant train.py builds: the forward compiles as one graph (fullgraph=True: a
graph break fails), and forward and backward agree with eager. Dynamo with the aot_eager backend checks every
variant quickly; inductor, which train.py's --compile uses, compiles CoCoMix itself and the teacher's blocks for the
concept labels."""
import pytest
import torch
from torch._dynamo.utils import counters

from model import GPT, GPTConfig
from sae import ConceptExtractor
from test_sae import tiny_sae, tiny_teacher

TINY = dict(block_size=16, vocab_size=64, n_layer=3, n_head=2, n_embd=32)
VARIANTS = {
    "ntp": {},
    "cocomix": dict(n_concepts=48, k_concepts=8, insert_layer=1),
    "cocomix_add": dict(n_concepts=48, k_concepts=8, insert_layer=1, mixing="add"),
    "cocomix_none": dict(n_concepts=48, k_concepts=8, insert_layer=1, mixing="none"),
    "pause": dict(pause=True, insert_layer=1),
    "regress": dict(n_regress=24, insert_layer=1),
    "regress_cosine": dict(n_regress=24, insert_layer=1, regress_loss="cosine"),
}


def batch(cfg):
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, 64, (2, 16), generator=g) for _ in range(2))
    if cfg.get("n_concepts"):
        targets = torch.randint(0, 48, (2, 16, 4), generator=g)
        targets[:, -1] = -1  # the window's last token has no label
    elif cfg.get("n_regress"):
        targets = torch.randn(2, 16, 24, generator=g)
    else:
        targets = None
    return x, y, targets


def losses_and_grads(model, forward, x, y, targets):
    """The losses of forward (model or its compiled self) and the gradients of their sum on model's parameters."""
    losses = forward(x, y, targets)[2]
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in losses.items()}, grads


def check_compiled_matches_eager(cfg, backend, atol):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, **cfg))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    inputs = batch(cfg)
    eager_losses, eager_grads = losses_and_grads(model, model, *inputs)
    losses, grads = losses_and_grads(model, compiled, *inputs)
    assert losses.keys() == eager_losses.keys() and grads.keys() == eager_grads.keys()
    for k in losses:
        torch.testing.assert_close(losses[k], eager_losses[k], atol=atol, rtol=atol)
    for n in grads:
        torch.testing.assert_close(grads[n], eager_grads[n], atol=atol, rtol=atol, msg=n)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_student_compiles_as_one_graph_and_matches_eager(name, one_thread):
    check_compiled_matches_eager(VARIANTS[name], "aot_eager", 1e-6)


def test_inductor_compiles_cocomix_to_eager_precision(one_thread):
    check_compiled_matches_eager(VARIANTS["cocomix"], "inductor", 1e-4)


def test_a_teacher_with_compiled_blocks_gives_the_eager_concept_labels(one_thread):
    torch._dynamo.reset()
    idx = torch.randint(0, 24, (4, 16), generator=torch.Generator().manual_seed(0))
    eager = ConceptExtractor(tiny_teacher(), tiny_sae(), 1, k_attr=4)
    compiled = ConceptExtractor(tiny_teacher().compile_blocks(), tiny_sae(), 1, k_attr=4)
    labels = eager(idx)
    counters.clear()
    assert (labels >= 0).any() and torch.equal(compiled(idx), labels)
    assert counters["frames"]["ok"] >= 2  # the blocks ran compiled: under no_grad (hidden) and with grad
    with torch.no_grad():  # evaluation's grad mode: the compiled blocks recompile for it
        assert torch.equal(compiled(idx), labels)
