"""
A TopK sparse autoencoder (Gao et al., 2024) on a frozen teacher's hidden state, its training, and the concept
labels that CoCoMix trains its student on (Tack et al., 2025, Section 2.1).

Train one on the embedded default teacher (after python train.py config/concepts_teacher.py; ~1-2 CPU minutes):
    python sae.py
Use OpenAI's released GPT-2 small SAE instead (resid_post_mlp v5_32k; the file name is the layer, 5 in the paper):
    python sae.py --init_from=openai:path/to/5.pt --out_dir=out/sae_gpt2
Continue a run with more tokens, or re-evaluate a trained SAE (a max_tokens already reached trains nothing):
    python sae.py --init_from=resume --max_tokens=3000000

The SAE reads the output of teacher block `layer` (0-based: OpenAI's "resid_post_mlp" layer 5 is the output of
GPT-2's 6th block). <out_dir>/sae.pt records the teacher and the layer with the weights, so
load_concept_extractor(path) is all that train.py --mode=cocomix needs. What each latent means, and how well
the latents recover the concept world's planted concepts, is concepts.py's job.
"""
import os
import time
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from configurator import configure, resolve_device
from model import GPT, GPT2_META, layer_norm
from prepare import load_meta, prepare_command

# -----------------------------------------------------------------------------
# Defaults: a 1024-latent SAE on the middle of the embedded default teacher, sized for 2 CPU cores.
out_dir = "out/sae"
init_from = "scratch"       # "scratch", "resume" (from out_dir/sae.pt) or "openai:PATH" (a released GPT-2 SAE)
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


# -----------------------------------------------------------------------------
# the frozen teacher

def load_teacher(spec, device):
    """(frozen GPT, what it recorded) from a train.py out_dir or ckpt.pt, or a GPT-2 name like "gpt2". The
    record holds "meta" (the meta.json of the data it learned) and "config" (its train.py settings: dataset,
    data_root). Raises ValueError if it cannot be loaded or predicts concepts itself."""
    if spec.startswith("gpt2"):
        try:
            model = GPT.from_pretrained(spec)
            record = {"meta": GPT2_META, "config": {"dataset": GPT2_META["dataset"], "data_root": "data"}}
        except ImportError:
            raise ValueError(f"teacher {spec} needs Hugging Face transformers: pip install transformers") from None
        except OSError as e:  # offline, or no such model
            raise ValueError(f"could not load teacher {spec} from Hugging Face ({str(e).splitlines()[0]})") from None
    else:
        if not os.path.exists(spec if spec.endswith(".pt") else os.path.join(spec, "ckpt.pt")):
            raise ValueError(f"teacher checkpoint {spec} not found: train one with "
                             "`python train.py config/concepts_teacher.py`, or use --teacher_path=gpt2")
        model, record = GPT.from_checkpoint(spec)
        if model.config.n_concepts:
            raise ValueError(f"teacher {spec} is a CoCoMix model: use a next-token-prediction checkpoint")
    return model.to(device).eval().requires_grad_(False), record


def check_teacher(teacher, layer, sae):
    """The SAE's layer must exist in the teacher, and the SAE must read that layer's width."""
    if not 0 <= layer < teacher.config.n_layer:
        raise ValueError(f"layer={layer} is out of range: the teacher has blocks 0..{teacher.config.n_layer - 1}")
    if sae.n_inputs != teacher.config.n_embd:
        raise ValueError(f"the SAE reads {sae.n_inputs}-wide activations but the teacher is {teacher.config.n_embd} "
                         "wide: use the teacher the SAE was trained on")


def tokenizer_of(meta):
    """What must agree for two datasets to be read alike: the tokenizer's name and its vocabulary."""
    return {"tokenizer": meta["tokenizer"], "itos": meta.get("itos")}


def check_vocab(teacher, teacher_tokenizer, meta, name):
    """Dataset `name` (its meta.json) must be tokenized as the teacher's data (teacher_tokenizer, from
    tokenizer_of), into no more tokens than it has. Raises ValueError otherwise."""
    if meta["vocab_size"] > teacher.config.vocab_size:
        raise ValueError(f"dataset {name} has {meta['vocab_size']} tokens but the teacher only "
                         f"{teacher.config.vocab_size}: use a teacher trained on {name}")
    if teacher_tokenizer == tokenizer_of(meta):
        return
    ours, theirs = meta["tokenizer"], teacher_tokenizer["tokenizer"]
    how = f"with {ours!r} but the teacher with {theirs!r}" if ours != theirs else f"with another {ours!r} vocabulary"
    raise ValueError(f"dataset {name} is tokenized {how}: use a teacher trained on {name}, "
                     "or a dataset prepared with the teacher's tokenizer")


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
    per-token std, which leaves each position's ranking unchanged, and so do we.
    tokenizer (tokenizer_of the teacher's data) is what check_data compares a student's dataset with."""

    methods = ("attribution", "attribution_pre", "activation")

    def __init__(self, teacher, sae, layer, k_attr=4, method="attribution", tokenizer=None, chunk_tokens=4096):
        if method not in self.methods:
            raise ValueError(f"unknown concept method {method!r}: use one of {', '.join(self.methods)}")
        if not 1 <= k_attr <= sae.n_latents:
            raise ValueError(f"k_attr={k_attr} must be between 1 and the SAE's {sae.n_latents} latents")
        check_teacher(teacher, layer, sae)
        self.teacher, self.sae, self.layer, self.k_attr, self.method = teacher, sae, layer, k_attr, method
        self.n_concepts, self.tokenizer = sae.n_latents, tokenizer
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
            h = self.teacher.hidden(idx, self.layer)
        if self.method == "activation":
            return h, torch.zeros_like(h)
        h.requires_grad_()
        with torch.enable_grad():
            grad, = torch.autograd.grad(next_token_loss(self.teacher.logits_from(h, self.layer), idx), h)
        return h.detach(), grad

    @torch.no_grad()
    def scores(self, h, grad):
        """Per-latent scores (..., C) whose top k_attr are the labels, in float32 whatever the autocast."""
        with torch.autocast(h.device.type, enabled=False):
            z = self.sae.encode(h.float())
            c = densify(z.vals, z.idx, self.sae.n_latents)
            if self.method == "activation":
                return c
            dl_dc = grad.float() @ self.sae.decoder.weight  # one value per latent
            return dl_dc * (c if self.method == "attribution" else z.pre)


def load_sae(path, device="cpu"):
    """(SAE, checkpoint dict) from a sae.pt. Raises ValueError if it is missing."""
    if not os.path.exists(path):
        raise ValueError(f"SAE checkpoint {path} not found: train one with `python sae.py`")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if "teacher_path" not in ckpt:
        raise ValueError(f"{path} was written by an older sae.py (it does not name its teacher_path): retrain it")
    sae = SAE(ckpt["n_inputs"], ckpt["n_latents"], ckpt["k"], ckpt["normalize"])
    sae.load_state_dict(ckpt["sae"])
    return sae.to(device).eval().requires_grad_(False), ckpt


def load_concept_extractor(path, device, k_attr=4, method="attribution"):
    """The ConceptExtractor of a sae.pt, on the teacher and layer it records."""
    sae, ckpt = load_sae(path, device)
    return ConceptExtractor(load_teacher(ckpt["teacher_path"], device)[0], sae, ckpt["layer"], k_attr, method,
                            ckpt["tokenizer"])


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


def activation_batches(teacher, layer, path, eot, block_size, batch_size, buffer_tokens, gen, device):
    """Endless (batch_size, d) batches of teacher activations on random train windows, through a shuffle buffer
    of buffer_tokens: each fill is shuffled and half of it given out, the other half mixed into the next fill."""
    n_tokens, buf = os.path.getsize(path) // 2, torch.empty(0, teacher.config.n_embd, device=device)
    while True:
        while len(buf) < buffer_tokens:
            starts = torch.randint(n_tokens - block_size, (max(1, batch_size // block_size),), generator=gen)
            idx = read_windows(path, starts.tolist(), block_size, device)
            with torch.no_grad():
                buf = torch.cat((buf, teacher.hidden(idx, layer)[keep_mask(idx, eot)]))
        buf = buf[torch.randperm(len(buf), generator=gen).to(device)]
        n_out = len(buf) // 2 // batch_size * batch_size
        yield from buf[:n_out].split(batch_size)
        buf = buf[n_out:]


# -----------------------------------------------------------------------------
# training and evaluation

def train(sae, batches, state, save, max_tokens, learning_rate, k_aux, aux_coef, dead_tokens, log_interval,
          ckpt_interval):
    """Adam on FVU + aux_coef * AuxK until max_tokens activations, with unit-norm decoder columns; save() every
    ckpt_interval steps. state holds what a resume needs: the step, the tokens seen, the tokens since each latent
    last fired and the optimizer."""
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
            state["optimizer"] = opt.state_dict()
            save()
    state["optimizer"] = opt.state_dict()


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
    """Atomically (write, then rename) save the SAE with all that using it and resuming it need."""
    ckpt = {"sae": sae.state_dict(), "n_inputs": sae.n_inputs, "n_latents": sae.n_latents, "k": sae.k,
            "normalize": sae.normalize, "metrics": metrics, **info,
            **{key: v.cpu() if torch.is_tensor(v) else v for key, v in state.items()}}
    torch.save(ckpt, path + ".tmp")
    os.replace(path + ".tmp", path)


def main():
    config = configure(globals())
    dev = resolve_device(device)
    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    ckpt_path = os.path.join(out_dir, "sae.pt")
    run = {"teacher_path": teacher_path, "layer": layer, "dataset": dataset, "data_root": data_root,
           "block_size": block_size}  # what the SAE reads; a resume takes it from the checkpoint
    sae, state, from_openai = None, {"step": 0, "tokens": 0}, init_from.startswith("openai:")
    if from_openai:
        path = init_from[len("openai:"):]
        if not os.path.exists(path):
            raise ValueError(f"{path} not found: download a released SAE, e.g. az://openaipublic/sparse-autoencoder/"
                             "gpt2-small/resid_post_mlp_v5_32k/autoencoders/5.pt")
        sae = sae_from_openai(torch.load(path, map_location="cpu"))
        stem = os.path.splitext(os.path.basename(path))[0]
        run.update(teacher_path="gpt2", layer=int(stem) if stem.isdigit() else 5)  # the files are named by layer
    elif init_from == "resume":
        sae, ckpt = load_sae(ckpt_path)
        sae.requires_grad_(True)
        run = {key: ckpt[key] for key in run}
        state = {key: ckpt[key] for key in ("step", "tokens", "since_fired", "optimizer") if key in ckpt}
    elif init_from != "scratch":
        raise ValueError(f"unknown init_from={init_from!r}: use 'scratch', 'resume' or 'openai:PATH'")
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
    meta = None
    if from_openai and not os.path.exists(os.path.join(data_dir, "val.bin")):
        print(f"{data_dir}/val.bin not found: saving the SAE unevaluated (`{prepare_command(data_dir)}`)")
    else:
        meta = load_meta(data_dir)
        check_vocab(teacher, tokenizer_of(teacher_meta), meta, run["dataset"])
    train_path = os.path.join(data_dir, "train.bin")
    if not from_openai and not os.path.exists(train_path):
        raise ValueError(f"{train_path} not found: run `{prepare_command(data_dir)}` first")
    os.makedirs(out_dir, exist_ok=True)  # only now: a run stopped by bad input leaves nothing behind
    info = {**run, "tokenizer": tokenizer_of(meta or teacher_meta), "config": config}
    print(f"SAE: {sae.n_latents} latents, k={sae.k}, on the output of block {run['layer']} of teacher "
          f"{run['teacher_path']}, data {data_dir}, device {dev}")
    t0 = time.time()
    if not from_openai:
        state["since_fired"] = state.get("since_fired", torch.zeros(sae.n_latents, dtype=torch.long)).to(dev)
        batches = activation_batches(teacher, run["layer"], train_path, meta["eot_token"], run["block_size"],
                                     batch_size, buffer_tokens, torch.Generator().manual_seed(seed + state["step"]),
                                     dev)
        train(sae, batches, state, lambda: save_checkpoint(ckpt_path, sae, state, None, info), max_tokens,
              learning_rate, k_aux, aux_coef, dead_tokens, log_interval, ckpt_interval)
    train_seconds, metrics = time.time() - t0, None
    if meta is not None:
        print(f"evaluating on up to {eval_tokens:,} val tokens ...")
        metrics = evaluate_sae(sae, teacher, run["layer"], os.path.join(data_dir, "val.bin"), meta["eot_token"],
                               run["block_size"], eval_tokens, dev)[0]
        metrics.update(train_seconds=train_seconds, train_tokens=state["tokens"])
        print(f"FVU {metrics['fvu']:.4f}, L0 {metrics['l0']:.1f}, dead {100 * metrics['dead_frac']:.1f}% "
              f"(no activation on {metrics['eval_tokens']:,} val positions), trained {train_seconds:.0f}s")
        print(f"teacher val loss: clean {metrics['loss_clean']:.4f}, SAE spliced in {metrics['loss_spliced']:.4f}, "
              f"zero-ablated {metrics['loss_zero']:.4f}: {100 * metrics['loss_recovered']:.2f}% of the loss recovered")
    save_checkpoint(ckpt_path, sae, state, metrics, info)
    print(f"saved {ckpt_path}")


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        raise SystemExit(f"error: {e}")
