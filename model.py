"""
The CoCoMix transformer: a GPT-2 (learned positions, pre-LN blocks, GELU MLP, tied embeddings) that can
predict concepts from its hidden state, compress them into one continuous vector, and mix that vector back
into the sequence (Tack et al., 2025, Section 2). With n_concepts=0 it is exactly GPT-2.

Read top to bottom: the GPT-2 parts first, then ConceptHead (Eq. 2-3), then GPT.forward where the
concepts are interleaved with the token hidden states (h1, c1, h2, c2, ...). The paper's controls fill the same
slot with something else: one learned pause embedding (pause tokens, Goyal et al., 2024) or a regression of the
teacher's hidden state (RegressionHead, Fig. 6b); knowledge distillation is a loss, kd_loss, at the end.
"""
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import short, train_record


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # SDPA picks flash / memory-efficient kernels on GPU; is_causal works unchanged over 2T interleaved slots
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"; needed for from_pretrained to match
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    # What is mixed into the sequence at insert_layer: at most one of the three. None: a plain GPT-2.
    n_concepts: int = 0          # CoCoMix: C, the size of the teacher SAE's dictionary
    k_concepts: int = 32         # K_concept: predicted concepts kept by TopK before compression (Eq. 3)
    n_regress: int = 0           # Fig. 6b: the width of the teacher's hidden state, regressed instead of concepts
    regress_loss: str = "l2"     # its loss: "l2" (mean squared error) or "cosine" (1 - cosine similarity)
    pause: bool = False          # pause tokens: one learned embedding, the same in every slot
    insert_layer: int = 3        # the slot is computed from, and mixed into, the input of this block
    mixing: str = "interleave"   # "interleave" (h1,c1,h2,c2,...), "add" (h_t + c_t), or "none" (prediction only)

    @property
    def slot(self):
        """What fills the mixed-in slot: "concept", "regress", "pause", or None (plain GPT-2)."""
        return "concept" if self.n_concepts else "regress" if self.n_regress else "pause" if self.pause else None


def layer_norm(h, eps=1e-5):
    """Parameter-free LayerNorm of h (..., d) over its last dim, as OpenAI's SAEs and the official CoCoMix code:
    ((h - mu) / (std + eps), mu, std), each of the statistics (..., 1), std unbiased. Map back with x * std + mu
    (the plain std, as both do), so that the SAE's reconstruction and the continuous concept land in h's space."""
    mu = h.mean(-1, keepdim=True)
    std = (h - mu).std(-1, keepdim=True)
    return (h - mu) / (std + eps), mu, std


def steered_topk(z, k, steer=None, force=False):
    """(z * steer, its TopK values, their indices). steer (..., C) scales each concept's logit, 1 leaving it
    alone (Section 3.5 of the paper steers with scales in [-10, 10]); force=True keeps every steered concept
    (steer != 1) among the K, whatever its scaled logit."""
    if steer is None:
        return z, *z.topk(k, dim=-1)
    z = z * steer
    if not force:
        return z, *z.topk(k, dim=-1)
    idx = z.masked_fill(steer != 1, float("inf")).topk(k, dim=-1).indices
    return z, z.gather(-1, idx), idx


class ConceptHead(nn.Module):
    """Predict concept logits z_t from h_t (Eq. 2) and compress TopK(z_t) into a continuous concept (Eq. 3).

    Both work on the layer-normed hidden state minus a learned pre_bias, mirroring the SAE's input
    normalisation, and the concept is mapped back with the token's own mean and std (as the official code).
    """

    def __init__(self, config):
        super().__init__()
        self.k = config.k_concepts
        self.pre_bias = nn.Parameter(torch.zeros(config.n_embd))
        self.predictor = nn.Linear(config.n_embd, config.n_concepts)      # M: R^d -> R^C
        self.compressor = nn.Linear(config.n_concepts, config.n_embd)     # W in R^{d x C}, b in R^d

    def forward(self, h, steer=None, force=False):
        x, mu, std = layer_norm(h)
        z = self.predictor(x - self.pre_bias)                              # concept logits, Eq. 2
        z, top_vals, top_idx = steered_topk(z, self.k, steer, force)       # TopK(z_t), raw signed logits
        c = self.compress(top_vals, top_idx) + self.compressor.bias        # W TopK(z_t) + b, Eq. 3
        return z, (c + self.pre_bias) * std + mu

    def compress(self, top_vals, top_idx):
        """W @ TopK(z) reading only the K kept columns of W: K*d work per token instead of C*d."""
        # (C, d), one row per concept, copied contiguous: given the strided transpose while autograd records,
        # embedding_bag takes a generic path about 40x slower than this copy plus its fast kernel (bench.py)
        W = self.compressor.weight.t().contiguous()
        c = F.embedding_bag(top_idx.reshape(-1, self.k), W, mode="sum",
                            per_sample_weights=top_vals.reshape(-1, self.k).to(W.dtype))
        return c.view(*top_vals.shape[:-1], -1)


class RegressionHead(nn.Module):
    """Fig. 6b's control: a 2-layer MLP g regresses the teacher's layer-normed hidden state (n_regress wide) from
    h_t, and g(h_t) is compressed and mixed in as the continuous concept is (Eq. 3 with g(h_t) for TopK(z_t))."""

    def __init__(self, config):
        super().__init__()
        self.pre_bias = nn.Parameter(torch.zeros(config.n_embd))
        self.g = nn.Sequential(nn.Linear(config.n_embd, config.n_regress), nn.GELU(approximate="tanh"),
                               nn.Linear(config.n_regress, config.n_regress))
        self.compressor = nn.Linear(config.n_regress, config.n_embd)

    def forward(self, h):
        x, mu, std = layer_norm(h)
        prediction = self.g(x - self.pre_bias)
        return prediction, (self.compressor(prediction) + self.pre_bias) * std + mu


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.mixing in ("interleave", "add", "none"), f"unknown mixing {config.mixing!r}"
        assert sum(map(bool, (config.n_concepts, config.n_regress, config.pause))) <= 1, "one kind of slot at most"
        assert config.slot is None or 0 < config.insert_layer < config.n_layer, "insert_layer must be inside"
        assert not config.pause or config.mixing == "interleave", "pause tokens are interleaved"
        assert config.regress_loss in ("l2", "cosine"), f"unknown regress_loss {config.regress_loss!r}"
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        if config.n_concepts:
            self.concept_head = ConceptHead(config)
        elif config.n_regress:
            self.regression_head = RegressionHead(config)
        elif config.pause:
            self.pause_embedding = nn.Parameter(torch.empty(config.n_embd))
        self.apply(self._init_weights)
        if config.pause:
            torch.nn.init.normal_(self.pause_embedding, mean=0.0, std=0.02)  # as a token embedding
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, activated=False):
        """All parameters (tied embeddings once). activated=True counts only the K columns of the
        compressor that a token uses, as the paper does when it matches CoCoMix against NTP."""
        n = sum(p.numel() for p in self.parameters())
        if activated and self.config.n_concepts:
            c = self.config
            n -= (c.n_concepts - c.k_concepts) * c.n_embd
        return n

    def forward(self, idx, targets=None, concept_labels=None, steer=None, force=False):
        """Returns (logits, concept_logits, losses).

        concept_logits is the slot head's prediction: concept logits (B, T, C), the regressed teacher state
        (B, T, n_regress), or None (no head). losses is None without targets, else a dict with "ntp" (next-token
        CE) and, given concept_labels, "concept": the concept CE (Eq. 2) for labels (B, T, K_attr), or the
        regression loss for the teacher's layer-normed hidden state (B, T, n_regress).
        steer and force steer the predicted concepts (see steered_topk).
        """
        cfg = self.config
        concept_logits = None
        if cfg.slot is None:  # plain GPT-2: every block, then the head
            logits = self.logits_from(self.hidden(idx, cfg.n_layer - 1), cfg.n_layer - 1)
        else:  # the slot from the input of block insert_layer, mixed in before it and the blocks after (Sec. 2.3)
            concept_logits, h = self.mix_concepts(self.hidden(idx, cfg.insert_layer - 1), steer, force)
            for block in self.transformer.h[cfg.insert_layer:]:
                h = block(h)
            if cfg.mixing == "interleave":
                h = h[:, 1::2]  # predict x_{t+1} from the concept slot c_t, which has seen h_<=t and c_<=t (Eq. 4)
            logits = self.lm_head(self.transformer.ln_f(h))
        if targets is None:
            return logits, concept_logits, None
        losses = {"ntp": F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)}
        if concept_labels is not None and cfg.n_regress:
            losses["concept"] = regression_loss(concept_logits, concept_labels, cfg.regress_loss)
        elif concept_labels is not None:
            losses["concept"] = concept_loss(concept_logits, concept_labels)
        return logits, concept_logits, losses

    def hidden(self, idx, layer):
        """The output (B, T, d) of block `layer` (0-based; -1: the embeddings) for tokens idx (B, T)."""
        T = idx.size(1)
        assert T <= self.config.block_size, f"sequence of {T} tokens exceeds block_size {self.config.block_size}"
        h = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T, device=idx.device)))
        for block in self.transformer.h[:layer + 1]:
            h = block(h)
        return h

    def logits_from(self, h, layer):
        """Next-token logits (B, T, vocab_size) of a plain GPT from h (B, T, d), the output of block `layer`:
        logits_from(hidden(idx, L), L) is forward(idx) for every L. The teacher runs in these two halves."""
        for block in self.transformer.h[layer + 1:]:
            h = block(h)
        return self.lm_head(self.transformer.ln_f(h))

    def mix_concepts(self, h, steer=None, force=False):
        """Predict concepts from h, compress them to c, and mix c into the sequence (Section 2.3); or, for the
        controls, mix in the compressed regression of the teacher's state, or the pause embedding."""
        if self.config.n_concepts:
            concept_logits, c = self.concept_head(h, steer, force)
        elif self.config.n_regress:
            concept_logits, c = self.regression_head(h)
        else:
            concept_logits, c = None, self.pause_embedding.expand_as(h)
        if self.config.mixing == "interleave":
            h = torch.stack((h, c), dim=2).flatten(1, 2)  # (B, 2T, d): h1, c1, h2, c2, ...
        elif self.config.mixing == "add":
            h = h + c
        return concept_logits, h

    def compile_blocks(self):
        """torch.compile each block in place (inductor) and return self: for a frozen teacher, whose passes
        (hidden, logits_from, teacher.teacher_pass) call its blocks one at a time, so compiling the module
        itself would leave them eager."""
        for block in self.transformer.h:
            block.compile()
        return self

    def flops_per_token(self, T):
        """Training FLOPs per token: 6 per weight multiply-add plus causal attention (PaLM appendix B),
        with each block after insert_layer seeing 2 slots per token when concepts are interleaved."""
        c = self.config
        d, flops = c.n_embd, 6 * c.n_embd * c.vocab_size                   # lm_head
        for i in range(c.n_layer):
            flops += self.block_flops(T, 2 if c.slot and c.mixing == "interleave" and i >= c.insert_layer else 1)
        if c.n_concepts:
            flops += 6 * d * (c.n_concepts + c.k_concepts)                 # predictor + K kept compressor columns
        if c.n_regress:
            flops += 6 * c.n_regress * (2 * d + c.n_regress)               # the MLP g and the compressor
        return flops

    def block_flops(self, T, slots=1):
        """Training FLOPs per token of one block, when each token takes `slots` positions of the sequence: its
        12 d^2 weights and causal attention over slots * T positions."""
        d = self.config.n_embd
        return slots * (6 * 12 * d * d + 12 * d * slots * T)

    def estimate_mfu(self, tokens_per_sec, T, device_name):
        """Model FLOPs utilisation: achieved FLOP/s over the GPU's peak dense bf16 FLOP/s (None if unknown)."""
        peak = next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)
        return None if peak is None else self.flops_per_token(T) * tokens_per_sec / peak

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # decay matrices and embeddings; not biases, LayerNorm gains or pre_bias (vectors)
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=1e-8, **({"fused": True} if fused else {}))

    @classmethod
    def from_pretrained(cls, model_type="gpt2", hf_model=None, dropout=0.0):
        """GPT-2 weights from Hugging Face (needs `pip install transformers`). Pass hf_model to convert a
        GPT2LMHeadModel already in memory instead of downloading model_type."""
        if hf_model is None:
            from transformers import GPT2LMHeadModel
            hf_model = GPT2LMHeadModel.from_pretrained(model_type)
        hf = hf_model.config
        config = GPTConfig(block_size=hf.n_positions, vocab_size=hf.vocab_size, n_layer=hf.n_layer,
                           n_head=hf.n_head, n_embd=hf.n_embd, dropout=dropout, bias=True)
        model = cls(config)
        sd, sd_hf = model.state_dict(), hf_model.state_dict()
        keys = [k for k in sd_hf if not k.endswith((".attn.bias", ".attn.masked_bias"))]  # causal-mask buffers
        assert len(keys) == len(sd), f"mismatched keys: {len(keys)} != {len(sd)}"
        # HF GPT-2 stores these as Conv1D, i.e. transposed relative to nn.Linear
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        with torch.no_grad():
            for k in keys:
                src = sd_hf[k].t() if k.endswith(transposed) else sd_hf[k]
                assert src.shape == sd[k].shape, f"shape mismatch for {k}: {src.shape} vs {sd[k].shape}"
                sd[k].copy_(src)
        return model

    @classmethod
    def from_checkpoint(cls, path, device="cpu"):
        """(model, record) from a train.py checkpoint, path being its out_dir or its ckpt.pt. record is what the
        checkpoint holds besides the weights: "config" (the run's train.py settings), "meta" (the meta.json of
        the dataset it learned, so its tokenizer), "model_args", "iter_num", ... Raises ValueError if the file
        is missing, damaged, of another kind (an SAE), or records no meta."""
        path, record = train_record(path)
        try:
            model = cls(GPTConfig(**record["model_args"]))
            model.load_state_dict(record.pop("model"))
        except (TypeError, AssertionError, RuntimeError) as e:  # settings or weights of another model
            reason = "its weights do not fit its model_args" if isinstance(e, RuntimeError) else short(e)
            raise ValueError(f"{path} is damaged or not a train.py checkpoint ({reason}): retrain it") from None
        return model.to(device), record

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, steer=None, force=False, vocab_size=None):
        """Sample max_new_tokens tokens after idx (B, T), feeding each prediction back in."""
        logits_fn = lambda x: self(x, steer=steer, force=force)[0]  # noqa: E731
        return generate(logits_fn, idx, max_new_tokens, self.config.block_size, temperature, top_k, vocab_size)


@torch.no_grad()
def generate(logits_fn, idx, max_new_tokens, block_size, temperature=1.0, top_k=None, vocab_size=None):
    """Autoregressive sampling from any model that maps idx (B, T <= block_size) to logits (B, T, V).
    temperature=0 decodes greedily; top_k=None or 0 keeps every token.
    vocab_size: the tokenizer's, to never sample the ids that pad the model's vocabulary."""
    for _ in range(max_new_tokens):
        logits = logits_fn(idx[:, -block_size:])[:, -1, :vocab_size]
        if temperature == 0:
            next_id = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            next_id = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
        idx = torch.cat((idx, next_id), dim=1)
    return idx


def regression_loss(prediction, target, kind="l2"):
    """Fig. 6b: the regression of the teacher's layer-normed hidden state target (..., n): the mean squared error
    per dimension ("l2"), or 1 - cosine similarity ("cosine"), averaged over tokens."""
    if kind == "cosine":
        return 1 - F.cosine_similarity(prediction.float(), target.float(), dim=-1).mean()
    return F.mse_loss(prediction.float(), target.float())


def kd_loss(logits, teacher_logits, vocab_size):
    """Knowledge distillation (Section 3.1's baseline): KL(teacher || student) between next-token distributions,
    summed over the tokenizer's vocab_size ids (not the padding) and averaged over tokens. logits (B, T, V),
    teacher_logits (B, T, V') with V, V' >= vocab_size."""
    at_least_fp32 = lambda x: x.to(torch.promote_types(x.dtype, torch.float32))  # noqa: E731  (bf16 -> fp32)
    logp = F.log_softmax(at_least_fp32(logits[..., :vocab_size]), dim=-1)
    logq = F.log_softmax(at_least_fp32(teacher_logits[..., :vocab_size]), dim=-1)
    return F.kl_div(logp.flatten(0, -2), logq.flatten(0, -2), log_target=True, reduction="batchmean")


def concept_loss(concept_logits, labels):
    """Eq. 2: the mean of single-label cross-entropies over all C concepts, over every label that is not -1
    (a slot with no positive attribution, see sae.ConceptExtractor.labels; the official code trains on the
    arbitrary latents ranked there). One log-softmax serves all K_attr labels (no (B, T, K, C) copy)."""
    logp = F.log_softmax(concept_logits.float(), dim=-1)
    given = labels >= 0
    nll = -logp.gather(-1, labels.clamp(min=0))
    return (nll * given).sum() / given.sum().clamp(min=1)


def concept_accuracy(concept_logits, labels):
    """Fraction of the given concept labels (not -1) found among the model's K_attr highest concept logits."""
    top = concept_logits.topk(labels.size(-1), dim=-1).indices
    return (labels.unsqueeze(-1) == top.unsqueeze(-2)).any(-1)[labels >= 0].float().mean().item()


# Peak dense bf16 tensor-core FLOP/s, matched against torch.cuda.get_device_name()
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12, "L4": 121e12,
              "4090": 165e12, "3090": 71e12, "V100": 125e12}
