"""
A TopK sparse autoencoder (Gao et al., 2024) on a frozen teacher's hidden state, and the concept labels that
CoCoMix trains its student on (Tack et al., 2025, Section 2.1).

Train one on the embedded default teacher (after python train.py config/concepts_teacher.py; ~1-2 CPU minutes):
    python sae.py
Use OpenAI's released GPT-2 small SAE instead (resid_post_mlp v5_32k; the file name is the layer, 5 in the paper):
    python sae.py --init_from=openai:path/to/5.pt --out_dir=out/sae_gpt2
Continue a run with more tokens, or re-evaluate a trained SAE (a max_tokens already reached trains nothing):
    python sae.py --init_from=resume --max_tokens=3000000

The SAE reads the output of teacher block `layer` (0-based: OpenAI's "resid_post_mlp" layer 5 is the output of
GPT-2's 6th block). <out_dir>/sae.pt records the teacher and the layer with the weights, so
load_concept_extractor(path) is all that train.py --mode=cocomix needs.
"""
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from configurator import configure
from model import GPT, GPTConfig
from prepare import load_concept_labels, load_meta

# -----------------------------------------------------------------------------
# Defaults: a 1024-latent SAE on the middle of the embedded default teacher, sized for 2 CPU cores.
out_dir = "out/sae"
init_from = "scratch"       # "scratch", "resume" (from out_dir/sae.pt) or "openai:PATH" (a released GPT-2 SAE)
log_interval = 50           # steps between progress lines
ckpt_interval = 250         # steps between checkpoints
# teacher and data
teacher = "out/teacher"     # a train.py out_dir (its ckpt.pt) or a GPT-2 name like "gpt2"
layer = 1                   # the SAE reads the output of this teacher block (0-based)
dataset = None              # None: the dataset the teacher was trained on
data_root = None            # None: the teacher's data_root
block_size = None           # tokens per teacher window; None: the teacher's block_size
# SAE
n_latents = 1024            # C, the dictionary size
k = 16                      # K_SAE: latents kept by TopK
normalize = True            # parameter-free LayerNorm on the input, undone on the output (as OpenAI's SAEs)
# training
max_tokens = 1_500_000      # activations to train on (position 0 and end-of-text positions are never used)
batch_size = 4096           # activations per step
buffer_tokens = 65536       # shuffle buffer, so that a batch mixes many windows
learning_rate = 1e-3
k_aux = 128                 # AuxK: dead latents that model the residual
aux_coef = 1 / 32
dead_tokens = 65536         # a latent that fired on none of the last dead_tokens activations is dead
# evaluation
eval_tokens = 65536         # val tokens for FVU, L0, dead fraction, spliced loss and concept recovery
# system
device = "auto"             # "auto" (cuda if available), "cpu", "cuda", ...
seed = 1337
# -----------------------------------------------------------------------------


def layer_norm(h, eps=1e-5):
    """Parameter-free LayerNorm as OpenAI's SAEs: (h - mu) / (std + eps) with the unbiased std. Returns mu and
    std too: the reconstruction is mapped back with std itself."""
    mu = h.mean(-1, keepdim=True)
    std = (h - mu).std(-1, keepdim=True)
    return (h - mu) / (std + eps), mu, std


def topk_relu(pre, k):
    """TopK, then ReLU on the kept values: (values, latent indices), each (..., k)."""
    vals, idx = pre.topk(k, dim=-1)
    return F.relu(vals), idx


def densify(vals, idx, n):
    """Sparse (..., k) latents as dense (..., n) activations."""
    return torch.zeros(*vals.shape[:-1], n, dtype=vals.dtype, device=vals.device).scatter_(-1, idx, vals)


def fvu(x, x_hat):
    """Fraction of variance unexplained: summed squared error over summed squared deviation from the mean x."""
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


class SAE(nn.Module):
    """c_pre = W_enc (x - b_pre) + b_lat;  c = ReLU(TopK(c_pre));  x_hat = W_dec c + b_pre;  x = LayerNorm(h).
    Parameter names and shapes are those of OpenAI's sparse_autoencoder, so their state dicts load as they are."""

    def __init__(self, n_inputs, n_latents, k, normalize=True):
        super().__init__()
        self.n_inputs, self.n_latents, self.k, self.normalize = n_inputs, n_latents, k, normalize
        self.pre_bias = nn.Parameter(torch.zeros(n_inputs))
        self.encoder = nn.Linear(n_inputs, n_latents, bias=False)
        self.latent_bias = nn.Parameter(torch.zeros(n_latents))
        self.decoder = nn.Linear(n_latents, n_inputs, bias=False)
        with torch.no_grad():  # random unit-norm directions, the encoder starting as their transpose (Gao et al.)
            self.decoder.weight.normal_()
            self.normalize_decoder_()
            self.encoder.weight.copy_(self.decoder.weight.t())

    def preprocess(self, h):
        return layer_norm(h) if self.normalize else (h, 0.0, 1.0)

    def encode_pre_act(self, x):
        return F.linear(x - self.pre_bias, self.encoder.weight, self.latent_bias)

    def decode(self, vals, idx):
        """W_dec c + b_pre reading only the k active columns of W_dec (an embedding bag)."""
        k = vals.size(-1)
        out = F.embedding_bag(idx.reshape(-1, k), self.decoder.weight.t(), per_sample_weights=vals.reshape(-1, k),
                              mode="sum")
        return out.view(*vals.shape[:-1], -1) + self.pre_bias

    def decode_dense(self, c):
        return self.decoder(c) + self.pre_bias

    def forward(self, h):
        """h (..., n_inputs) -> (reconstruction of h, pre-activations, TopK values, their latent indices)."""
        x, mu, std = self.preprocess(h)
        pre = self.encode_pre_act(x)
        vals, idx = topk_relu(pre, self.k)
        return self.decode(vals, idx) * std + mu, pre, vals, idx

    @torch.no_grad()
    def normalize_decoder_(self):
        self.decoder.weight.div_(self.decoder.weight.norm(dim=0, keepdim=True))

    @torch.no_grad()
    def remove_parallel_grads_(self):
        """Drop the gradient along each unit-norm decoder column, which could only change its norm."""
        w, g = self.decoder.weight, self.decoder.weight.grad
        g.sub_((g * w).sum(0, keepdim=True) * w)


def auxk_loss(sae, pre, residual, dead, k_aux):
    """AuxK (Gao et al., 2024): reconstruct the main reconstruction's error with the k_aux most active dead
    latents, so that they get gradient again. The residual is a fixed target and b_pre is already in the main
    reconstruction, so the auxiliary one goes without it."""
    dead = dead.nonzero()[:, 0]
    if len(dead) == 0:
        return pre.new_zeros(())
    vals, idx = topk_relu(pre[:, dead], min(k_aux, len(dead)))
    recon = densify(vals, idx, len(dead)) @ sae.decoder.weight[:, dead].t()  # dense: k_aux is large
    return fvu(residual.detach(), recon)


def sae_from_openai(sd):
    """Our SAE from a state dict in OpenAI's sparse_autoencoder format (their released GPT-2 SAEs): the same
    parameter names, k from "activation_state_dict", inputs layer-normed iff the activation is TopK (their rule).
    Their statistics buffers are left out."""
    if sd.get("activation") != "TopK" or sd.get("activation_state_dict", {}).get("postact_fn", "ReLU") != "ReLU":
        raise ValueError(f"only TopK+ReLU SAEs load, this one has activation {sd.get('activation')!r}")
    n_latents, n_inputs = sd["encoder.weight"].shape
    sae = SAE(n_inputs, n_latents, int(sd["activation_state_dict"]["k"]), normalize=True)
    sae.load_state_dict({key: sd[key] for key in ("pre_bias", "latent_bias", "encoder.weight", "decoder.weight")})
    return sae


# -----------------------------------------------------------------------------
# the frozen teacher, run in two halves around the SAE's layer

def load_teacher(spec, device):
    """A frozen GPT from a train.py out_dir (or its ckpt.pt), or a GPT-2 name like "gpt2". Its train_config
    names the dataset it was trained on."""
    if spec.startswith("gpt2"):
        try:
            model = GPT.from_pretrained(spec)
        except ImportError:
            raise ValueError(f"teacher {spec} needs Hugging Face transformers: pip install transformers") from None
        except OSError as e:  # offline, or no such model
            raise ValueError(f"could not load teacher {spec} from Hugging Face ({str(e).splitlines()[0]})") from None
        model.train_config = {"dataset": "openwebtext", "data_root": "data"}
    else:
        path = spec if spec.endswith(".pt") else os.path.join(spec, "ckpt.pt")
        if not os.path.exists(path):
            raise ValueError(f"teacher checkpoint {path} not found: train one with "
                             "`python train.py config/concepts_teacher.py`, or use --teacher=gpt2")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model = GPT(GPTConfig(**ckpt["model_args"]))
        if model.config.n_concepts:
            raise ValueError(f"teacher {path} is a CoCoMix model: use a next-token-prediction checkpoint")
        model.load_state_dict(ckpt["model"])
        model.train_config = ckpt["config"]
    return model.to(device).eval().requires_grad_(False)


def check_teacher(teacher, layer, sae):
    """The SAE's layer must exist in the teacher, and the SAE must read that layer's width."""
    if not 0 <= layer < teacher.config.n_layer:
        raise ValueError(f"layer={layer} is out of range: the teacher has blocks 0..{teacher.config.n_layer - 1}")
    if sae.n_inputs != teacher.config.n_embd:
        raise ValueError(f"the SAE reads {sae.n_inputs}-wide activations but the teacher is {teacher.config.n_embd} "
                         "wide: use the teacher the SAE was trained on")


def teacher_hidden(teacher, idx, layer):
    """The output of teacher block `layer`, as GPT.forward computes it."""
    tr = teacher.transformer
    h = tr.drop(tr.wte(idx) + tr.wpe(torch.arange(idx.size(1), device=idx.device)))
    for block in tr.h[:layer + 1]:
        h = block(h)
    return h


def teacher_logits(teacher, h, layer):
    """The teacher's next-token logits from the output of block `layer`."""
    for block in teacher.transformer.h[layer + 1:]:
        h = block(h)
    return teacher.lm_head(teacher.transformer.ln_f(h))


def next_token_loss(logits, idx):
    """Mean next-token cross-entropy over all B*(T-1) positions."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), idx[:, 1:].flatten())


# -----------------------------------------------------------------------------
# concept labels for CoCoMix

class ConceptExtractor:
    """idx (B, T) -> (B, T, k_attr) concept labels, the top-k_attr SAE latents at each position by
      "attribution":     (dL/dh @ W_dec) * c      what the official code computes: gradient x post-TopK latent
      "attribution_pre": (dL/dh @ W_dec) * c_pre  the paper's Eq. 1: gradient x pre-activation
      "activation":      c                        the paper's ablation (Fig. 6a)
    where L is the teacher's mean next-token loss over the window and h its hidden state at the SAE's layer.
    With h = (W_dec c + b_pre) * std + mu, dL/dc = std * (dL/dh @ W_dec): the official code drops the positive
    per-token std, which leaves each position's ranking unchanged, and so do we."""

    methods = ("attribution", "attribution_pre", "activation")

    def __init__(self, teacher, sae, layer, k_attr=4, method="attribution", tokenizer=None, chunk_tokens=4096):
        if method not in self.methods:
            raise ValueError(f"unknown concept method {method!r}: use one of {', '.join(self.methods)}")
        if not 1 <= k_attr <= sae.n_latents:
            raise ValueError(f"k_attr={k_attr} must be between 1 and the SAE's {sae.n_latents} latents")
        check_teacher(teacher, layer, sae)
        self.teacher, self.sae, self.layer, self.k_attr, self.method = teacher, sae, layer, k_attr, method
        self.n_concepts, self.tokenizer = sae.n_latents, tokenizer  # the teacher's, for check_data
        self.chunk_tokens = chunk_tokens  # bounds the (tokens, C) scores held at once

    def __call__(self, idx):
        h, grad = (t.flatten(0, 1).split(self.chunk_tokens) for t in self.teacher_pass(idx))
        labels = [self.scores(h_i, g_i).topk(self.k_attr, dim=-1).indices for h_i, g_i in zip(h, grad)]
        return torch.cat(labels).view(*idx.shape, self.k_attr)

    def check_data(self, meta, name):
        """Raise ValueError unless dataset `name` (its meta.json) is tokenized as the teacher's."""
        check_vocab(self.teacher, self.tokenizer, meta, name)

    def teacher_pass(self, idx):
        """h at the SAE's layer and dL/dh (zeros for "activation"): no weight gradients, no graph below h."""
        if idx.size(1) > self.teacher.config.block_size:
            raise ValueError(f"windows of {idx.size(1)} tokens exceed the teacher's block_size "
                             f"{self.teacher.config.block_size}")
        with torch.no_grad():
            h = teacher_hidden(self.teacher, idx, self.layer)
        if self.method == "activation":
            return h, torch.zeros_like(h)
        h.requires_grad_()
        with torch.enable_grad():
            grad, = torch.autograd.grad(next_token_loss(teacher_logits(self.teacher, h, self.layer), idx), h)
        return h.detach(), grad

    @torch.no_grad()
    def scores(self, h, grad):
        """Per-latent scores (..., C) whose top k_attr are the labels, in float32 whatever the autocast."""
        with torch.autocast(h.device.type, enabled=False):
            pre = self.sae.encode_pre_act(self.sae.preprocess(h.float())[0])
            c = densify(*topk_relu(pre, self.sae.k), self.sae.n_latents)
            if self.method == "activation":
                return c
            dl_dc = grad.float() @ self.sae.decoder.weight  # one value per latent
            return dl_dc * (c if self.method == "attribution" else pre)


def load_sae(path, device="cpu"):
    """(SAE, checkpoint dict) from a sae.pt."""
    if not os.path.exists(path):
        raise ValueError(f"SAE checkpoint {path} not found: train one with `python sae.py`")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sae = SAE(ckpt["n_inputs"], ckpt["n_latents"], ckpt["k"], ckpt["normalize"])
    sae.load_state_dict(ckpt["sae"])
    return sae.to(device).eval().requires_grad_(False), ckpt


def load_concept_extractor(path, device, k_attr=4, method="attribution"):
    """The ConceptExtractor of a sae.pt, on the teacher and layer it records."""
    sae, ckpt = load_sae(path, device)
    return ConceptExtractor(load_teacher(ckpt["teacher"], device), sae, ckpt["layer"], k_attr, method,
                            ckpt["tokenizer"])


# -----------------------------------------------------------------------------
# data: teacher activations streamed from the token memmaps

def tokenizer_of(meta):
    return {"tokenizer": meta["tokenizer"], "itos": meta.get("itos")}


def teacher_tokenizer(spec, teacher):
    """The tokenizer of the teacher's training data; None if that data is not here to tell."""
    if spec.startswith("gpt2"):
        return {"tokenizer": "gpt2", "itos": None}
    path = os.path.join(teacher.train_config.get("data_root", "data"), teacher.train_config["dataset"], "meta.json")
    return tokenizer_of(json.load(open(path))) if os.path.exists(path) else None


def check_vocab(teacher, teacher_tokenizer, meta, name):
    """Dataset `name` (its meta.json) must be tokenized as the teacher's data, into no more tokens than it has."""
    if meta["vocab_size"] > teacher.config.vocab_size:
        raise ValueError(f"dataset {name} has {meta['vocab_size']} tokens but the teacher only "
                         f"{teacher.config.vocab_size}: use a teacher trained on {name}")
    if teacher_tokenizer is None or teacher_tokenizer == tokenizer_of(meta):
        return
    ours, theirs = meta["tokenizer"], teacher_tokenizer["tokenizer"]
    how = f"with {ours!r} but the teacher with {theirs!r}" if ours != theirs else f"with another {ours!r} vocabulary"
    raise ValueError(f"dataset {name} is tokenized {how}: use a teacher trained on {name}, "
                     "or a dataset prepared with the teacher's tokenizer")


def read_windows(path, starts, block_size, device):
    """Token windows (len(starts), block_size) of a uint16 memmap, re-opened per read so that it cannot leak."""
    data = np.memmap(path, dtype=np.uint16, mode="r")
    return torch.from_numpy(np.stack([data[i:i + block_size] for i in starts]).astype(np.int64)).to(device)


def keep_mask(idx, eot):
    """The positions the SAE trains and is measured on: not position 0 and not end-of-text, whose norms are
    outliers."""
    keep = torch.ones_like(idx, dtype=torch.bool)
    keep[:, 0] = False
    return keep & (idx != eot) if eot is not None else keep


def activation_batches(teacher, layer, path, eot, block_size, gen, device):
    """Endless (batch_size, d) batches of teacher activations on random train windows, through a shuffle buffer:
    each fill is shuffled and half of it given out, the other half mixed into the next fill."""
    n_tokens, buf = os.path.getsize(path) // 2, torch.empty(0, teacher.config.n_embd, device=device)
    while True:
        while len(buf) < buffer_tokens:
            starts = torch.randint(n_tokens - block_size, (max(1, batch_size // block_size),), generator=gen)
            idx = read_windows(path, starts.tolist(), block_size, device)
            with torch.no_grad():
                buf = torch.cat((buf, teacher_hidden(teacher, idx, layer)[keep_mask(idx, eot)]))
        buf = buf[torch.randperm(len(buf), generator=gen).to(device)]
        n_out = len(buf) // 2 // batch_size * batch_size
        yield from buf[:n_out].split(batch_size)
        buf = buf[n_out:]


# -----------------------------------------------------------------------------
# training and evaluation

def train(sae, batches, state, save):
    """Adam on FVU + aux_coef * AuxK until max_tokens, with unit-norm decoder columns. state holds what a
    resume needs: the step, the tokens seen, the tokens since each latent last fired and the optimizer."""
    opt = torch.optim.Adam(sae.parameters(), lr=learning_rate, eps=6.25e-10)
    if "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
    since_fired, t0, tokens0 = state["since_fired"], time.time(), state["tokens"]
    while state["tokens"] < max_tokens:
        h = next(batches)
        x, mu, std = sae.preprocess(h)
        if state["step"] == 0:  # b_pre starts at the data's mean (Gao et al. use the geometric median)
            sae.pre_bias.data.copy_(x.mean(0))
        pre = sae.encode_pre_act(x)
        vals, idx = topk_relu(pre, sae.k)
        x_hat = sae.decode_dense(densify(vals, idx, sae.n_latents))  # on CPU its backward beats the sparse one's
        dead = since_fired >= dead_tokens
        aux = auxk_loss(sae, pre, x - x_hat, dead, k_aux)
        loss = fvu(x, x_hat) + aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grads_()
        opt.step()
        sae.normalize_decoder_()
        since_fired += len(h)
        since_fired[idx[vals > 0]] = 0
        state["step"], state["tokens"] = state["step"] + 1, state["tokens"] + len(h)
        if state["step"] % log_interval == 0:
            fvu_h = fvu(h, x_hat.detach() * std + mu).item()
            print(f"step {state['step']}: {state['tokens']:,} tokens, fvu {fvu_h:.3f}, aux {aux.item():.3f}, "
                  f"L0 {(vals > 0).sum(-1).float().mean().item():.1f}, "
                  f"dead {100 * dead.float().mean().item():.1f}%, "
                  f"{(state['tokens'] - tokens0) / (time.time() - t0):,.0f} tokens/s")
            t0, tokens0 = time.time(), state["tokens"]
        if state["step"] % ckpt_interval == 0:
            state["optimizer"] = opt.state_dict()
            save()
    state["optimizer"] = opt.state_dict()


@torch.no_grad()
def evaluate(sae, teacher, layer, path, eot, block_size, n_tokens, device, batch_windows=32):
    """FVU, L0 and dead fraction on val activations, and the teacher's val loss clean, with the SAE's
    reconstruction spliced in at its layer, and with that hidden state zeroed (at the positions the SAE
    models). Returns (metrics, the sparse latents there, their token indices in the val split)."""
    n_windows = min(n_tokens, os.path.getsize(path) // 2 - 1) // block_size  # - 1: each position has a next token
    hs, recons, latents, where, losses = [], [], [], [], np.zeros(3)
    for w in torch.arange(n_windows).split(batch_windows):
        idx = read_windows(path, (w * block_size).tolist(), block_size, device)
        keep = keep_mask(idx, eot)
        h = teacher_hidden(teacher, idx, layer)
        recon, _, vals, top = sae(h.float())
        mask = keep[..., None]
        for j, h_j in enumerate((h, torch.where(mask, recon.to(h.dtype), h), h.masked_fill(mask, 0))):
            losses[j] += next_token_loss(teacher_logits(teacher, h_j, layer), idx).item() * len(w) / n_windows
        hs.append(h[keep].float().cpu()), recons.append(recon[keep].cpu())
        latents.append((vals[keep].cpu(), top[keep].cpu()))
        where.append((w[:, None] * block_size + torch.arange(block_size))[keep.cpu()])
    vals, top = (torch.cat(t) for t in zip(*latents))
    fired = torch.zeros(sae.n_latents, dtype=torch.bool)
    fired[top[vals > 0]] = True
    clean, spliced, zero = losses.tolist()
    metrics = {"fvu": fvu(torch.cat(hs), torch.cat(recons)).item(), "l0": (vals > 0).sum(-1).float().mean().item(),
               "dead_frac": 1 - fired.float().mean().item(), "eval_tokens": len(vals), "loss_clean": clean,
               "loss_spliced": spliced, "loss_zero": zero, "loss_recovered": (zero - spliced) / (zero - clean)}
    return metrics, (vals, top), torch.cat(where).numpy()


def tied_ranks(x):
    """1-based ranks down each column of x; tied values share the mean of their ranks."""
    s, order = x.sort(0)
    i = torch.arange(len(x), dtype=torch.float64)[:, None].expand(s.shape)
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[1:] = s[1:] != s[:-1]
    ends = torch.ones_like(starts)
    ends[:-1] = starts[1:]
    first = torch.where(starts, i, 0.0).cummax(0).values
    last = torch.where(ends, i, float(len(x))).flip(0).cummin(0).values.flip(0)
    return torch.empty_like(first).scatter_(0, order, (first + last) / 2 + 1)


def auroc(scores, labels):
    """AUROC of each score column (N, L) at telling each boolean label column (N, M) -> (M, L), by the
    rank-sum (Mann-Whitney) formula."""
    pos = labels.double()
    n_pos = pos.sum(0)[:, None]
    return (pos.t() @ tied_ranks(scores) - n_pos * (n_pos + 1) / 2) / (n_pos * (len(pos) - n_pos))


def dense_columns(vals, idx, lo, hi):
    """Dense (N, hi - lo) activations of latents lo..hi-1 from sparse (N, k) latents."""
    inside = (idx >= lo) & (idx < hi)
    return torch.zeros(len(vals), hi - lo).index_put_((inside.nonzero()[:, 0], idx[inside] - lo), vals[inside])


def concept_aurocs(latents, n_latents, concepts, next_drivers, factors, chunk=128):
    """AUROC of every latent at telling each planted concept (factor=value) from the factor's other values,
    as two (n_concepts, n_latents) matrices:
    "auroc" over all positions: does the position's document have this value?
    "driver_auroc" over the positions whose next word the factor chooses: h_t is what predicts x_t+1, so this
    asks for the value where the teacher needs it, and a latent for the current word cannot pass for it.
    nan where the value never occurs."""
    vals, idx = latents
    values, drivers = torch.from_numpy(concepts.astype(np.int64)), torch.from_numpy(next_drivers.astype(np.int64))
    onehots = [F.one_hot(values[:, f], len(factor["values"])) for f, factor in enumerate(factors)]
    doc, drv = [], []
    for j in range(0, n_latents, chunk):
        scores = dense_columns(vals, idx, j, min(j + chunk, n_latents))
        doc.append(auroc(scores, torch.cat(onehots, 1)))
        drv.append(torch.cat([auroc(scores[drivers == f], y[drivers == f]) for f, y in enumerate(onehots)]))
    return {"auroc": torch.cat(doc, 1), "driver_auroc": torch.cat(drv, 1)}


def concept_recovery(aurocs, factors):
    """For each planted concept, the single latent that best detects it, by both AUROCs of concept_aurocs."""
    out = {"concepts": [{"name": f"{factor['name']}={v}"} for factor in factors for v in factor["values"]]}
    for key, a in aurocs.items():
        best, latent = a.nan_to_num(-1.0).max(1)  # nan: the value never occurs there
        for c, b, j in zip(out["concepts"], best.tolist(), latent.tolist()):
            c[key], c[key.replace("auroc", "latent")] = (b, j) if b >= 0 else (None, None)
        out[f"{key}_mean"], out[f"{key}_min"] = best[best >= 0].mean().item(), best[best >= 0].min().item()
    return out


# -----------------------------------------------------------------------------
# the script

def save_checkpoint(path, sae, state, metrics, info):
    """Atomically (write, then rename) save the SAE with all that using it and resuming it need."""
    ckpt = {"sae": sae.state_dict(), "n_inputs": sae.n_inputs, "n_latents": sae.n_latents, "k": sae.k,
            "normalize": sae.normalize, "metrics": metrics, **info,
            **{key: v.cpu() if torch.is_tensor(v) else v for key, v in state.items()}}
    torch.save(ckpt, path + ".tmp")
    os.replace(path + ".tmp", path)


def main():
    global teacher, layer, dataset, data_root, block_size, device  # None and "auto" defaults get resolved here
    config = configure(globals())
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    ckpt_path = os.path.join(out_dir, "sae.pt")
    sae, state, from_openai = None, {"step": 0, "tokens": 0}, init_from.startswith("openai:")
    if from_openai:
        path = init_from[len("openai:"):]
        if not os.path.exists(path):
            raise ValueError(f"{path} not found: download a released SAE, e.g. az://openaipublic/sparse-autoencoder/"
                             "gpt2-small/resid_post_mlp_v5_32k/autoencoders/5.pt")
        sae = sae_from_openai(torch.load(path, map_location="cpu"))
        stem = os.path.splitext(os.path.basename(path))[0]
        teacher, layer = "gpt2", int(stem) if stem.isdigit() else 5  # the released files are named by layer
    elif init_from == "resume":
        sae, ckpt = load_sae(ckpt_path)
        sae.requires_grad_(True)
        teacher, layer, dataset, data_root, block_size = (ckpt[key] for key in
                                                          ("teacher", "layer", "dataset", "data_root", "block_size"))
        state = {key: ckpt[key] for key in ("step", "tokens", "since_fired", "optimizer") if key in ckpt}
    elif init_from != "scratch":
        raise ValueError(f"unknown init_from={init_from!r}: use 'scratch', 'resume' or 'openai:PATH'")
    model = load_teacher(teacher, device)
    sae = (sae or SAE(model.config.n_embd, n_latents, k, normalize)).to(device)
    check_teacher(model, layer, sae)
    dataset = dataset or model.train_config["dataset"]
    data_root = data_root or model.train_config.get("data_root", "data")
    block_size = block_size or model.config.block_size
    if block_size > model.config.block_size:
        raise ValueError(f"block_size={block_size} exceeds the teacher's {model.config.block_size}")
    data_dir = os.path.join(data_root, dataset)
    meta = None
    if from_openai and not os.path.exists(os.path.join(data_dir, "val.bin")):
        print(f"{data_dir}/val.bin not found: saving the SAE unevaluated (`python prepare.py --dataset {dataset}`)")
    else:
        meta = load_meta(data_dir)
        check_vocab(model, teacher_tokenizer(teacher, model), meta, dataset)
    train_path = os.path.join(data_dir, "train.bin")
    if not from_openai and not os.path.exists(train_path):
        raise ValueError(f"{train_path} not found: run `python prepare.py --dataset {dataset}` first")
    os.makedirs(out_dir, exist_ok=True)  # only now: a run stopped by bad input leaves nothing behind
    info = {"teacher": teacher, "layer": layer, "dataset": dataset, "data_root": data_root, "block_size": block_size,
            "tokenizer": tokenizer_of(meta) if meta else teacher_tokenizer(teacher, model), "config": config}
    print(f"SAE: {sae.n_latents} latents, k={sae.k}, on the output of block {layer} of teacher {teacher}, "
          f"data {data_dir}, device {device}")
    t0 = time.time()
    if not from_openai:
        state["since_fired"] = state.get("since_fired", torch.zeros(sae.n_latents, dtype=torch.long)).to(device)
        batches = activation_batches(model, layer, train_path, meta["eot_token"], block_size,
                                     torch.Generator().manual_seed(seed + state["step"]), device)
        train(sae, batches, state, lambda: save_checkpoint(ckpt_path, sae, state, None, info))
    train_seconds, metrics = time.time() - t0, None
    if meta is not None:
        print(f"evaluating on up to {eval_tokens:,} val tokens ...")
        metrics, latents, where = evaluate(sae, model, layer, os.path.join(data_dir, "val.bin"), meta["eot_token"],
                                           block_size, eval_tokens, device)
        metrics.update(train_seconds=train_seconds, train_tokens=state["tokens"])
        print(f"FVU {metrics['fvu']:.4f}, L0 {metrics['l0']:.1f}, dead {100 * metrics['dead_frac']:.1f}% "
              f"(no activation on {metrics['eval_tokens']:,} val positions), trained {train_seconds:.0f}s")
        print(f"teacher val loss: clean {metrics['loss_clean']:.4f}, SAE spliced in {metrics['loss_spliced']:.4f}, "
              f"zero-ablated {metrics['loss_zero']:.4f}: {100 * metrics['loss_recovered']:.2f}% of the loss recovered")
        if "concept_factors" in meta:
            concepts, drivers = load_concept_labels(data_dir, "val")
            aurocs = concept_aurocs(latents, sae.n_latents, concepts[where], drivers[where + 1],
                                    meta["concept_factors"])
            rec = concept_recovery(aurocs, meta["concept_factors"])
            metrics["concept_recovery"] = rec
            print(f"concept recovery, AUROC of the best single latent for each of {len(rec['concepts'])} planted "
                  f"concepts: mean {rec['auroc_mean']:.3f}, min {rec['auroc_min']:.3f} over all positions; "
                  f"mean {rec['driver_auroc_mean']:.3f}, min {rec['driver_auroc_min']:.3f} where the factor "
                  "chooses the next word")
    save_checkpoint(ckpt_path, sae, state, metrics, info)
    print(f"saved {ckpt_path}")


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        raise SystemExit(f"error: {e}")
