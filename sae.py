"""
A TopK sparse autoencoder (Gao et al., 2024) on a frozen teacher's hidden state, its training, and the concept
labels that CoCoMix trains its student on (Tack et al., 2025, Section 2.1).

Train one on the embedded default teacher (after python train.py config/concepts_teacher.py; ~1-2 CPU minutes):
    python sae.py
Use OpenAI's released GPT-2 small SAE instead (the paper's: resid_post_mlp v5_32k, layer 5), fetched over HTTPS
into ~/.cache/cocomix once and checked against GPT-2's activations (FVU, loss recovered) on the prepared data:
    python prepare.py --dataset=openwebtext && python sae.py --init_from=openai:resid_post_mlp_v5_32k/5 \
        --out_dir=out/sae_gpt2
or from a file downloaded by hand (the file name is the layer):
    python sae.py --init_from=openai:path/to/5.pt --out_dir=out/sae_gpt2
Continue a run with more tokens, or re-evaluate a trained SAE (a max_tokens already reached trains nothing):
    python sae.py --init_from=resume --max_tokens=3000000
A resume keeps the run's settings and continues its data stream, so it ends bit-identical (on CPU) to a run that
was never interrupted; it refuses a teacher or dataset that changed since. A new run refuses to replace an
existing sae.pt unless given --overwrite.

The SAE reads the output of teacher block `layer` (0-based: OpenAI's "resid_post_mlp" layer 5 is the output of
GPT-2's 6th block). <out_dir>/sae.pt records the teacher and the layer with the weights, so
load_concept_extractor(path) is all that train.py --mode=cocomix needs. What each latent means, and how well
the latents recover the concept world's planted concepts, is concepts.py's job.
"""
import hashlib
import os
import re
import shutil
import time
import urllib.request
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import (check_new_run, claim_out_dir, finite, load_record, remove_stale, replacing, sae_record, save,
                        short)
from configurator import check, configure, resolve_device, resume_settings
from model import layer_norm
from prepare import check_splits, fingerprint, load_meta, prepare_command
from teacher import (changed_inputs, check_teacher, check_vocab, load_teacher, next_token_loss,
                     teacher_flops_per_token, teacher_identity, teacher_pass, tokenizer_of)

# -----------------------------------------------------------------------------
# Defaults: a 1024-latent SAE on the middle of the embedded default teacher, sized for 2 CPU cores.
out_dir = "out/sae"
init_from = "scratch"       # "scratch", "resume" (from out_dir/sae.pt), "openai:NAME/LAYER" or "openai:FILE.pt"
openai_sha256 = ""          # the SHA-256 a fetched OpenAI SAE must have ("": print it, check nothing)
overwrite = False           # a new run may replace the sae.pt already in out_dir
log_interval = 50           # steps between progress lines
ckpt_interval = 250         # steps between checkpoints
# teacher and data
teacher_path = "out/teacher"  # a train.py out_dir (its ckpt.pt) or a GPT-2 name like "gpt2"
layer = 1                   # the SAE reads the output of this teacher block (0-based)
dataset = ""                # "": the dataset the teacher was trained on
data_root = ""              # "": the teacher's data_root
block_size = 0              # tokens per teacher window; 0: the teacher's block_size
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
eval_tokens = 65536         # val tokens for FVU, L0, dead fraction and the spliced loss
# system
device = "auto"             # "auto" (cuda if available), "cpu", "cuda", ...
seed = 1337
# -----------------------------------------------------------------------------
RUN = ("teacher_path", "layer", "dataset", "data_root", "block_size")  # what the SAE reads, resolved
# A resume keeps the run's settings. A flag may change how long it trains, how much it evaluates, how often it
# logs and saves, where the data lies (its fingerprint is checked) and the machine; not the SAE, its teacher,
# batches or optimizer.
RESUME_MAY_CHANGE = ("max_tokens", "eval_tokens", "log_interval", "ckpt_interval", "data_root", "device")


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


class Latents(NamedTuple):
    """SAE.encode of inputs h (..., n_inputs)."""
    vals: torch.Tensor  # (..., k) the TopK pre-activations after ReLU: the latents' activations
    idx: torch.Tensor   # (..., k) their latent ids
    pre: torch.Tensor   # (..., C) all pre-activations, W_enc (x - b_pre) + b_lat
    x: torch.Tensor     # (..., n_inputs) the normalized input
    mu: torch.Tensor    # (..., 1) h's mean and std (0 and 1 without normalize): a reconstruction is x_hat * std + mu
    std: torch.Tensor


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
        """(x, mu, std): x = LayerNorm(h) with normalize, else h itself with mu 0 and std 1."""
        return layer_norm(h) if self.normalize else (h, 0.0, 1.0)

    def encode_pre_act(self, x):
        return F.linear(x - self.pre_bias, self.encoder.weight, self.latent_bias)

    def encode(self, h):
        """Latents of inputs h (..., n_inputs): everything between the input and the decoder."""
        x, mu, std = self.preprocess(h)
        pre = self.encode_pre_act(x)
        return Latents(*topk_relu(pre, self.k), pre, x, mu, std)

    def decode(self, vals, idx):
        """W_dec c + b_pre reading only the k active columns of W_dec (an embedding bag)."""
        k = vals.size(-1)
        out = F.embedding_bag(idx.reshape(-1, k), self.decoder.weight.t(), per_sample_weights=vals.reshape(-1, k),
                              mode="sum")
        return out.view(*vals.shape[:-1], -1) + self.pre_bias

    def decode_dense(self, c):
        return self.decoder(c) + self.pre_bias

    def forward(self, h):
        """h (..., n_inputs) -> (reconstruction of h, its Latents)."""
        z = self.encode(h)
        return self.decode(z.vals, z.idx) * z.std + z.mu, z

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
    Their statistics buffers are left out. Raises ValueError for another activation."""
    if sd.get("activation") != "TopK" or sd.get("activation_state_dict", {}).get("postact_fn", "ReLU") != "ReLU":
        raise ValueError(f"only TopK+ReLU SAEs load, this one has activation {sd.get('activation')!r}")
    n_latents, n_inputs = sd["encoder.weight"].shape
    sae = SAE(n_inputs, n_latents, int(sd["activation_state_dict"]["k"]), normalize=True)
    sae.load_state_dict({key: sd[key] for key in ("pre_bias", "latent_bias", "encoder.weight", "decoder.weight")})
    return sae


def fetch_openai_sae(name, sha256="", cache=None,
                     base_url="https://openaipublic.blob.core.windows.net/sparse-autoencoder/gpt2-small"):  # az://...
    """The local path of OpenAI's released GPT-2 SAE `name` ("resid_post_mlp_v5_32k/5": location_version/layer),
    downloaded over HTTPS into cache (default ~/.cache/cocomix/openai_sae, or $XDG_CACHE_HOME) on first use, whole
    or not at all. sha256, if given, must match the file (checked on every use); the file's hash is printed.
    Raises ValueError for a name of another form, a failed download, or a mismatch."""
    if not re.fullmatch(r"\w+_v\d\w*/\d+", name):
        raise ValueError(f"openai:{name} is neither a file nor a released SAE's name like resid_post_mlp_v5_32k/5")
    cache = cache or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cocomix",
                                  "openai_sae")
    location, layer = name.split("/")
    path = os.path.join(cache, location, f"{layer}.pt")
    if not os.path.exists(path):
        url = f"{base_url}/{location}/autoencoders/{layer}.pt"
        print(f"downloading {url} -> {path}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=60) as r, replacing(path) as tmp, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
            raise ValueError(f"could not download {url} ({short(e)}): connect once, or download it by hand and "
                             "give --init_from=openai:PATH/TO/LAYER.pt") from None
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if sha256 and digest != sha256:
        raise ValueError(f"{path} has SHA-256 {digest}, not the {sha256} asked for: delete it and download it again")
    print(f"{path}: SHA-256 {digest}")
    return path


def load_openai_sae(path):
    """(SAE, the GPT-2 layer it reads) from a file of OpenAI's released SAEs, which are named by their layer."""
    if not os.path.exists(path):
        raise ValueError(f"{path} not found: download a released SAE, e.g. az://openaipublic/sparse-autoencoder/"
                         "gpt2-small/resid_post_mlp_v5_32k/autoencoders/5.pt")
    record = load_record(path, "an OpenAI SAE", "download it again")
    try:
        sae = sae_from_openai(record)
    except (KeyError, TypeError, AttributeError, RuntimeError) as e:
        raise ValueError(f"{path} is damaged or not an OpenAI SAE ({type(e).__name__}): download it again") from None
    stem = os.path.splitext(os.path.basename(path))[0]
    return sae, int(stem) if stem.isdigit() else 5


# -----------------------------------------------------------------------------
# concept labels for CoCoMix

class ConceptExtractor:
    """idx (B, T) -> (B, T, k_attr) concept labels (-1: none, see labels), the top-k_attr SAE latents at each
    position by
      "attribution":     (dL/dh @ W_dec) * c      what the official code computes: gradient x post-TopK latent
      "attribution_pre": (dL/dh @ W_dec) * c_pre  the paper's Eq. 1: gradient x pre-activation
      "activation":      c                        the paper's ablation (Fig. 6a)
    where L is the teacher's mean next-token loss over the window and h its hidden state at the SAE's layer.
    With h = (W_dec c + b_pre) * std + mu, dL/dc = std * (dL/dh @ W_dec): the official code drops the positive
    per-token std, which leaves each position's ranking unchanged, and so do we.
    tokenizer (tokenizer_of the teacher's data) is what check_data compares a student's dataset with."""

    methods = ("attribution", "attribution_pre", "activation")

    def __init__(self, teacher, sae, layer, k_attr=4, method="attribution", tokenizer=None, chunk_tokens=4096):
        if method not in self.methods:
            raise ValueError(f"unknown concept method {method!r}: use one of {', '.join(self.methods)}")
        if not 1 <= k_attr <= sae.n_latents:
            raise ValueError(f"k_attr={k_attr} must be between 1 and the SAE's {sae.n_latents} latents")
        if method != "attribution_pre" and k_attr > sae.k:
            raise ValueError(f"k_attr={k_attr} exceeds the SAE's k={sae.k} active latents, the only ones that can "
                             f"score above 0 with concept_method={method}: use k_attr<={sae.k}")
        check_teacher(teacher, layer, sae)
        self.teacher, self.sae, self.layer, self.k_attr, self.method = teacher, sae, layer, k_attr, method
        self.n_concepts, self.tokenizer = sae.n_latents, tokenizer
        self.chunk_tokens = chunk_tokens  # bounds the (tokens, C) scores held at once

    def __call__(self, idx):
        h_and_grad = teacher_pass(self.teacher, idx, self.layer, grad=self.method != "activation")
        h, grad = (t.flatten(0, 1).split(self.chunk_tokens) for t in h_and_grad)
        return torch.cat([self.labels(h_i, g_i) for h_i, g_i in zip(h, grad)]).view(*idx.shape, self.k_attr)

    def flops_per_token(self, T):
        """FLOPs per token of labelling windows of T tokens: the teacher (teacher_flops_per_token: up to the SAE's
        layer, and back from its loss for attribution), the SAE's encoder and the scores."""
        d, C = self.sae.n_inputs, self.n_concepts
        teacher = teacher_flops_per_token(self.teacher, T, self.layer, grad=self.method != "activation")
        scores = {"attribution": 2 * self.sae.k * d, "attribution_pre": 2 * d * C, "activation": 0}[self.method]
        return teacher + 2 * d * C + scores

    def check_data(self, meta, name):
        """Raise ValueError unless dataset `name` (its meta.json) is tokenized as the teacher's."""
        check_vocab(self.teacher, self.tokenizer, meta, name)

    def labels(self, h, grad):
        """(N, k_attr) labels of N tokens: the latents of the k_attr highest scores, best first, and -1 (no label)
        where fewer than k_attr latents score above 0. That happens at the window's last token, whose next-token
        loss lies outside the window (the gradient there is 0), and where a token has fewer active latents."""
        scores, latents = self.scores(h, grad)
        top = scores.topk(self.k_attr, dim=-1)
        return latents.gather(-1, top.indices).masked_fill(top.values <= 0, -1)

    @torch.no_grad()
    def scores(self, h, grad):
        """(scores (N, m), latents (N, m)): the score of m candidate latents per token, in float32 whatever the
        autocast. Only the k active latents have c != 0, so "attribution" and "activation" score just those
        (m = k: k*d work per token instead of C*d); "attribution_pre" scores all m = C latents."""
        with torch.autocast(h.device.type, enabled=False):
            z = self.sae.encode(h.float())
            if self.method == "activation":
                return z.vals, z.idx
            if self.method == "attribution":
                w_dec = F.embedding(z.idx, self.sae.decoder.weight.t())      # (N, k, d): the active latents' rows
                return torch.einsum("nkd,nd->nk", w_dec, grad.float()) * z.vals, z.idx
            dl_dc = grad.float() @ self.sae.decoder.weight                    # (N, C): one value per latent
            return dl_dc * z.pre, torch.arange(self.n_concepts, device=h.device).expand_as(z.pre)


def load_sae(path, device="cpu"):
    """(SAE, checkpoint dict) from a sae.pt or its out_dir. Raises ValueError if it is missing or damaged."""
    _, ckpt = sae_record(path)
    sae = SAE(ckpt["n_inputs"], ckpt["n_latents"], ckpt["k"], ckpt["normalize"])
    sae.load_state_dict(ckpt["sae"])
    return sae.to(device).eval().requires_grad_(False), ckpt


def load_sae_and_teacher(path, device):
    """(SAE, its checkpoint dict, the frozen teacher it reads, the teacher's record) from a sae.pt. Raises
    ValueError if the teacher at the path it records is not the one it was trained on."""
    sae, ckpt = load_sae(path, device)
    teacher, record = load_teacher(ckpt["teacher_path"], device)
    changed = changed_inputs(ckpt, teacher_identity(ckpt["teacher_path"], teacher, record))
    if changed:
        out = path if os.path.isdir(path) else os.path.dirname(path) or "."
        raise ValueError(f"{path} cannot be used: {changed}: train the SAE again (python sae.py --overwrite "
                         f"--out_dir={out})")
    return sae, ckpt, teacher, record


def load_concept_extractor(path, device, k_attr=4, method="attribution"):
    """The ConceptExtractor of a sae.pt, on the teacher and layer it records."""
    sae, ckpt, teacher, _ = load_sae_and_teacher(path, device)
    return ConceptExtractor(teacher, sae, ckpt["layer"], k_attr, method, ckpt["tokenizer"])


# -----------------------------------------------------------------------------
# data: teacher activations streamed from the token memmaps

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


class ActivationStream:
    """Endless (batch_size, d) batches of teacher activations on random train windows, through a shuffle buffer of
    buffer_tokens: each fill is shuffled and half of it given out, the other half mixed into the next fill. Its
    state_dict (the generator, the buffer, how many of its rows go out before the next fill) is saved with each
    checkpoint, so that a resumed run trains on the very batches an uninterrupted one would."""

    def __init__(self, teacher, layer, path, eot, block_size, batch_size, buffer_tokens, seed, device):
        self.teacher, self.layer, self.path, self.eot, self.block_size = teacher, layer, path, eot, block_size
        self.batch_size, self.buffer_tokens, self.device = batch_size, buffer_tokens, device
        self.gen = torch.Generator().manual_seed(seed)
        self.buf, self.n_out = torch.empty(0, teacher.config.n_embd, device=device), 0  # first n_out rows go out

    def __next__(self):
        if self.n_out == 0:
            self.fill()
        batch, self.buf = self.buf[:self.batch_size], self.buf[self.batch_size:]
        self.n_out -= self.batch_size
        return batch

    def fill(self):
        n_tokens = os.path.getsize(self.path) // 2
        while len(self.buf) < self.buffer_tokens:
            starts = torch.randint(n_tokens - self.block_size, (max(1, self.batch_size // self.block_size),),
                                   generator=self.gen)
            idx = read_windows(self.path, starts.tolist(), self.block_size, self.device)
            with torch.no_grad():
                self.buf = torch.cat((self.buf, self.teacher.hidden(idx, self.layer)[keep_mask(idx, self.eot)]))
        self.buf = self.buf[torch.randperm(len(self.buf), generator=self.gen).to(self.device)]
        self.n_out = len(self.buf) // 2 // self.batch_size * self.batch_size

    def state_dict(self):
        return {"gen": self.gen.get_state(), "buf": self.buf.cpu().clone(), "n_out": self.n_out}

    def load_state_dict(self, state):
        self.gen.set_state(state["gen"])
        self.buf, self.n_out = state["buf"].to(self.device), state["n_out"]


# -----------------------------------------------------------------------------
# training and evaluation

def train(sae, batches, state, save, max_tokens, learning_rate, k_aux, aux_coef, dead_tokens, log_interval,
          ckpt_interval):
    """Adam on FVU + aux_coef * AuxK until max_tokens activations, with unit-norm decoder columns; save() every
    ckpt_interval steps. state holds what a resume needs: the step, the tokens seen, the tokens since each latent
    last fired, the optimizer and the data stream. Raises ValueError at a non-finite loss, before it can reach the
    weights."""
    opt = torch.optim.Adam(sae.parameters(), lr=learning_rate, eps=6.25e-10)
    if "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
    since_fired, t0, tokens0 = state["since_fired"], time.time(), state["tokens"]
    while state["tokens"] < max_tokens:
        h = next(batches)
        if state["step"] == 0:  # b_pre starts at the data's mean (Gao et al. use the geometric median)
            sae.pre_bias.data.copy_(sae.preprocess(h)[0].mean(0))
        z = sae.encode(h)
        x_hat = sae.decode_dense(densify(z.vals, z.idx, sae.n_latents))  # on CPU its backward beats the sparse one's
        dead = since_fired >= dead_tokens
        aux = auxk_loss(sae, z.pre, z.x - x_hat, dead, k_aux)
        loss = fvu(z.x, x_hat) + aux_coef * aux
        if not torch.isfinite(loss):
            cause = ("the teacher's activations are not finite: check its checkpoint" if not torch.isfinite(h).all()
                     else f"learning_rate={learning_rate:g} is likely too high: train again with --overwrite and a "
                     "smaller --learning_rate")
            raise ValueError(f"the SAE's loss is {loss.item()} at step {state['step'] + 1}: {cause} (no "
                             "non-finite weights were saved)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grads_()
        opt.step()
        sae.normalize_decoder_()
        since_fired += len(h)
        since_fired[z.idx[z.vals > 0]] = 0
        state["step"], state["tokens"] = state["step"] + 1, state["tokens"] + len(h)
        if state["step"] % log_interval == 0:
            fvu_h = fvu(h, x_hat.detach() * z.std + z.mu).item()
            print(f"step {state['step']}: {state['tokens']:,} tokens, fvu {fvu_h:.3f}, aux {aux.item():.3f}, "
                  f"L0 {(z.vals > 0).sum(-1).float().mean().item():.1f}, "
                  f"dead {100 * dead.float().mean().item():.1f}%, "
                  f"{(state['tokens'] - tokens0) / (time.time() - t0):,.0f} tokens/s")
            t0, tokens0 = time.time(), state["tokens"]
        if state["step"] % ckpt_interval == 0:
            state["optimizer"], state["stream"] = opt.state_dict(), batches.state_dict()
            save()
    state["optimizer"], state["stream"] = opt.state_dict(), batches.state_dict()


@torch.no_grad()
def evaluate_sae(sae, teacher, layer, path, eot, block_size, n_tokens, device, batch_windows=32):
    """FVU, L0 and dead fraction on up to n_tokens val activations (the windows of the memmap at path), and the
    teacher's val loss clean, with the SAE's reconstruction spliced in at its layer, and with that hidden state
    zeroed (at the positions the SAE models). Returns (metrics, the sparse latents (vals, idx), each (N, k), at
    the N kept positions, those positions' token indices in the val split (N,))."""
    n_windows = min(n_tokens, os.path.getsize(path) // 2 - 1) // block_size  # - 1: each position has a next token
    hs, recons, latents, where, losses = [], [], [], [], np.zeros(3)
    for w in torch.arange(n_windows).split(batch_windows):
        idx = read_windows(path, (w * block_size).tolist(), block_size, device)
        keep = keep_mask(idx, eot)
        h = teacher.hidden(idx, layer)
        recon, z = sae(h.float())
        mask = keep[..., None]
        for j, h_j in enumerate((h, torch.where(mask, recon.to(h.dtype), h), h.masked_fill(mask, 0))):
            losses[j] += next_token_loss(teacher.logits_from(h_j, layer), idx).item() * len(w) / n_windows
        hs.append(h[keep].float().cpu()), recons.append(recon[keep].cpu())
        latents.append((z.vals[keep].cpu(), z.idx[keep].cpu()))
        where.append((w[:, None] * block_size + torch.arange(block_size))[keep.cpu()])
    vals, idx = (torch.cat(t) for t in zip(*latents))
    fired = torch.zeros(sae.n_latents, dtype=torch.bool)
    fired[idx[vals > 0]] = True
    clean, spliced, zero = losses.tolist()
    metrics = {"fvu": fvu(torch.cat(hs), torch.cat(recons)).item(), "l0": (vals > 0).sum(-1).float().mean().item(),
               "dead_frac": 1 - fired.float().mean().item(), "eval_tokens": len(vals), "loss_clean": clean,
               "loss_spliced": spliced, "loss_zero": zero, "loss_recovered": (zero - spliced) / (zero - clean)}
    return metrics, (vals, idx), torch.cat(where).numpy()


# -----------------------------------------------------------------------------
# the script

def save_checkpoint(path, sae, state, metrics, info):
    """Save the SAE with all that using it and resuming it need, whole or not at all (checkpoint.save). A
    non-finite SAE is never saved."""
    if not finite(sae):
        raise ValueError(f"the SAE's weights are not finite at step {state['step']}: {path} was left as it was; "
                         "train again with --overwrite and a smaller --learning_rate")
    ckpt = {"sae": sae.state_dict(), "n_inputs": sae.n_inputs, "n_latents": sae.n_latents, "k": sae.k,
            "normalize": sae.normalize, "metrics": metrics, **info,
            **{key: v.cpu() if torch.is_tensor(v) else v for key, v in state.items()}}
    save(ckpt, path, f"{path} is kept as it was" if os.path.exists(path) else "no checkpoint was written")


def check_settings(config):
    """Refuse, before anything is loaded or written, settings that no SAE trains with."""
    check(config, at_least=dict(n_latents=1, k=1, batch_size=1, max_tokens=0, eval_tokens=1, k_aux=1, dead_tokens=1,
                                log_interval=1, ckpt_interval=1, block_size=0),
          between={"learning_rate": "(0, 1]",  # Adam moves each weight by about the learning rate per step
                   "aux_coef": "[0, inf)"})
    if k > n_latents:
        raise ValueError(f"k={k} is more than n_latents={n_latents}: TopK keeps k of the latents")
    if block_size == 1:
        raise ValueError("block_size=1 leaves no position to train on (position 0 is never used): use 2 or more, "
                         "or 0 for the teacher's")
    if batch_size > buffer_tokens // 2:
        raise ValueError(f"batch_size={batch_size} is more than half of buffer_tokens={buffer_tokens}, so no batch "
                         f"ever leaves the shuffle buffer: use --buffer_tokens={2 * batch_size} or more")


def main():
    config = configure(globals())
    ckpt_path, sae, ckpt, from_openai = os.path.join(out_dir, "sae.pt"), None, None, init_from.startswith("openai:")
    if init_from == "resume":
        sae, ckpt = load_sae(ckpt_path)  # on the CPU: moved once the device is known good
        saved = {**ckpt["config"], **{key: ckpt[key] for key in RUN}}  # RUN resolved, as the SAE read it
        resume_settings(config, saved, RESUME_MAY_CHANGE, "train a new SAE with --overwrite")
        globals().update(config)
        if ckpt["step"] > 0 and "stream" not in ckpt:
            raise ValueError(f"{ckpt_path} cannot be resumed exactly (an older sae.py wrote it): train it again "
                             "with --overwrite")
    elif init_from != "scratch" and not from_openai:
        raise ValueError(f"unknown init_from={init_from!r}: use 'scratch', 'resume' or 'openai:PATH'")
    elif not overwrite:
        check_new_run(out_dir, ["sae.pt"])
    dev = resolve_device(device)
    check_settings(config)
    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    run, state = {key: config[key] for key in RUN}, {"step": 0, "tokens": 0}  # what the SAE reads, how far it got
    if ckpt is not None:
        sae.requires_grad_(True)
        state = {key: ckpt[key] for key in ("step", "tokens", "since_fired", "optimizer", "stream") if key in ckpt}
    elif from_openai:
        source = init_from[len("openai:"):]
        sae, gpt2_layer = load_openai_sae(source if source.endswith(".pt") else fetch_openai_sae(source, openai_sha256))
        run.update(teacher_path="gpt2", layer=gpt2_layer)
    teacher, teacher_record = load_teacher(run["teacher_path"], dev)
    teacher_meta = teacher_record["meta"]
    sae = (sae or SAE(teacher.config.n_embd, n_latents, k, normalize)).to(dev)
    check_teacher(teacher, run["layer"], sae)
    run["dataset"] = run["dataset"] or teacher_record["config"]["dataset"]
    run["data_root"] = run["data_root"] or teacher_record["config"]["data_root"]
    run["block_size"] = run["block_size"] or teacher.config.block_size
    if run["block_size"] > teacher.config.block_size:
        raise ValueError(f"block_size={run['block_size']} exceeds the teacher's {teacher.config.block_size}")
    data_dir = os.path.join(run["data_root"], run["dataset"])
    train_path, val_path, meta = os.path.join(data_dir, "train.bin"), os.path.join(data_dir, "val.bin"), None
    if from_openai and not os.path.exists(val_path):
        print(f"{val_path} not found: saving the SAE unevaluated (`{prepare_command(data_dir)}`)")
    else:
        meta = load_meta(data_dir)
        check_vocab(teacher, tokenizer_of(teacher_meta), meta, run["dataset"])
        check_splits(data_dir, run["block_size"], ["val"] if from_openai else ["train", "val"])
        if eval_tokens < run["block_size"]:
            raise ValueError(f"eval_tokens={eval_tokens} is less than one window of block_size={run['block_size']} "
                             f"tokens: use --eval_tokens={run['block_size']} or more")
    teacher_id = teacher_identity(run["teacher_path"], teacher, teacher_record)
    info = {**run, "tokenizer": tokenizer_of(meta or teacher_meta), "config": config, "teacher_id": teacher_id,
            "data_fingerprint": fingerprint(meta) if meta else None}
    changed = changed_inputs(ckpt, teacher_id, info["data_fingerprint"]) if ckpt else None
    if changed:
        raise ValueError(f"cannot resume {ckpt_path}: {changed}: train a new SAE with --overwrite")
    lock = claim_out_dir(out_dir)  # held until the run ends
    remove_stale(ckpt_path)
    print(f"SAE: {sae.n_latents} latents, k={sae.k}, on the output of block {run['layer']} of teacher "
          f"{run['teacher_path']}, data {data_dir}, device {dev}")
    t0 = time.time()
    if not from_openai:
        state["since_fired"] = state.get("since_fired", torch.zeros(sae.n_latents, dtype=torch.long)).to(dev)
        batches = ActivationStream(teacher, run["layer"], train_path, meta["eot_token"], run["block_size"],
                                   batch_size, buffer_tokens, seed, dev)
        if "stream" in state:
            batches.load_state_dict(state["stream"])
        train(sae, batches, state, lambda: save_checkpoint(ckpt_path, sae, state, None, info), max_tokens,
              learning_rate, k_aux, aux_coef, dead_tokens, log_interval, ckpt_interval)
    train_seconds, metrics = time.time() - t0, None
    if meta is not None:
        print(f"evaluating on up to {eval_tokens:,} val tokens ...")
        metrics = evaluate_sae(sae, teacher, run["layer"], val_path, meta["eot_token"], run["block_size"],
                               eval_tokens, dev)[0]
        metrics.update(train_seconds=train_seconds, train_tokens=state["tokens"])
        print(f"FVU {metrics['fvu']:.4f}, L0 {metrics['l0']:.1f}, dead {100 * metrics['dead_frac']:.1f}% "
              f"(no activation on {metrics['eval_tokens']:,} val positions), trained {train_seconds:.0f}s")
        print(f"teacher val loss: clean {metrics['loss_clean']:.4f}, SAE spliced in {metrics['loss_spliced']:.4f}, "
              f"zero-ablated {metrics['loss_zero']:.4f}: {100 * metrics['loss_recovered']:.2f}% of the loss recovered")
    save_checkpoint(ckpt_path, sae, state, metrics, info)
    lock.close()
    print(f"saved {ckpt_path}")


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        raise SystemExit(f"error: {e}")
