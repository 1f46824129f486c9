"""
The frozen teacher of CoCoMix: the pretrained model whose hidden state the SAE reads and whose next-token loss
the concept labels are attributed to (Tack et al., 2025, Section 2.1). A train.py checkpoint, or GPT-2.

Loading it, running it in its two halves for the gradient the labels are attributed by (teacher_pass), telling
one teacher from another (an SAE records the identity of the teacher it was trained on and refuses to be used
with another), and the checks that a teacher fits an SAE and reads a dataset's tokens.
"""
import hashlib
import os

import torch
import torch.nn.functional as F

from checkpoint import find
from model import GPT
from prepare import fingerprint

# What GPT.from_pretrained's models read: GPT-2's BPE (prepare.py's "gpt2" tokenizer), as our OpenWebText data
GPT2_META = {"dataset": "openwebtext", "tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256}


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
        if not os.path.exists(find(spec, "ckpt.pt")):
            raise ValueError(f"teacher checkpoint {spec} not found: train one with "
                             "`python train.py config/concepts_teacher.py`, or use --teacher_path=gpt2")
        model, record = GPT.from_checkpoint(spec)
        if model.config.slot:
            raise ValueError(f"teacher {spec} mixes a {model.config.slot} slot into its sequence: use a plain "
                             "next-token-prediction checkpoint")
    return model.to(device).eval().requires_grad_(False), record


def teacher_identity(spec, teacher, record):
    """What tells one teacher from another: a GPT-2's name; else the fingerprint of the data it learned, the
    iteration it reached and a hash of its weights (a teacher retrained with another seed differs only there)."""
    if spec.startswith("gpt2"):
        return spec
    return {"data": fingerprint(record["meta"]), "iter_num": record.get("iter_num"), "weights": weights_hash(teacher)}


def weights_hash(module):
    """A 16-hex-digit hash of a module's weights, bit for bit."""
    weights = hashlib.sha256()
    for t in module.state_dict().values():
        weights.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy())
    return weights.hexdigest()[:16]


def changed_inputs(ckpt, teacher_id, data_id=None):
    """Why the teacher (its teacher_identity) or the dataset (prepare.fingerprint of its meta.json) there now is
    not what the SAE of ckpt was trained on, or None if both are. data_id None: the dataset is not compared."""
    was, path = ckpt.get("teacher_id"), ckpt["teacher_path"]
    if was is None:
        return "it records no teacher identity (an older sae.py wrote it)"
    if was != teacher_id:
        how = (f"{was} -> {teacher_id}" if isinstance(was, str) or isinstance(teacher_id, str) else
               ", ".join(f"{key} {was[key]} -> {teacher_id[key]}" for key in was if was[key] != teacher_id[key]))
        return f"the teacher at {path} was retrained since this SAE started ({how})"
    if data_id is not None and ckpt.get("data_fingerprint") not in (None, data_id):
        return f"dataset {ckpt['dataset']} was prepared again since this SAE started (its meta.json changed)"
    return None


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


def teacher_pass(teacher, idx, layer, grad=True):
    """(h, dL/dh): the teacher's hidden state at the output of block `layer` for tokens idx (B, T), and the
    gradient there of its next_token_loss over the window (zeros with grad=False). No weight gradients, and no
    graph below h: the teacher runs its two halves, hidden and logits_from."""
    if idx.size(1) > teacher.config.block_size:
        raise ValueError(f"windows of {idx.size(1)} tokens exceed the teacher's block_size {teacher.config.block_size}")
    with torch.no_grad():
        h = teacher.hidden(idx, layer)
    if not grad:
        return h, torch.zeros_like(h)
    h.requires_grad_()
    with torch.enable_grad():
        dl_dh, = torch.autograd.grad(next_token_loss(teacher.logits_from(h, layer), idx), h)
    return h.detach(), dl_dh


def teacher_flops_per_token(teacher, T, layer=None, grad=False):
    """FLOPs per token of the frozen teacher on windows of T tokens: its whole forward (a third of its training
    FLOPs, GPT.flops_per_token) for layer=None; its forward up to the output of block `layer`; or, with grad, its
    whole forward and the backward of its loss down to that block, activation gradients only (one more forward's
    worth for the blocks above `layer` and the head)."""
    forward = teacher.flops_per_token(T) / 3
    if layer is None:
        return forward
    below = (layer + 1) * teacher.block_flops(T) / 3
    return 2 * forward - below if grad else below
