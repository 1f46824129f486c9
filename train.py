r"""
Pretrain a GPT by next-token prediction (mode="ntp") or with CoCoMix (mode="cocomix"), on one process or DDP;
or one of the paper's controls: pause tokens (mode="pause"), regressing the teacher's hidden state instead of
predicting concepts (mode="regress"), and knowledge distillation on top of any of them (lam_kd=0.1).

One process (the embedded default, CPU, a couple of minutes):
    python train.py
A preset and overrides:
    python train.py config/owt_ntp_69m.py --batch_size=8
DDP on one node with 8 GPUs:
    torchrun --standalone --nproc_per_node=8 train.py config/owt_ntp_69m.py
DDP on 2 nodes (run on each, with NODE_RANK 0 and 1):
    torchrun --nproc_per_node=8 --nnodes=2 --node_rank=$NODE_RANK --master_addr=$MASTER --master_port=29500 \
        train.py config/owt_ntp_69m.py
Resume a stopped run. It keeps its own settings; a flag may change only how long it trains, how often it
evaluates, logs and saves, where its data lies and the machine (RESUME_MAY_CHANGE in train.py):
    python train.py --init_from=resume --out_dir=out/ntp --max_iters=2000
"""
import gc
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import check_new_run, claim_out_dir, finite, remove_stale, replacing, save
from configurator import autocast_for, check, configure, resolve_device, resume_settings
from model import GPT, GPTConfig, concept_accuracy, kd_loss, layer_norm
from prepare import check_splits, check_trained_on, fingerprint, load_meta
from labels import as_labels, cache_dir, cache_key, load_labels, n_windows
from sae import load_concept_extractor
from teacher import check_vocab, load_teacher, teacher_flops_per_token, tokenizer_of

# -----------------------------------------------------------------------------
# Defaults: a ~1M-parameter model on the embedded synthetic concept world, sized for 2 CPU cores.
# I/O
out_dir = "out/ntp"
eval_interval = 100
log_interval = 10
eval_iters = 20             # batches per split per evaluation
always_save_checkpoint = True
init_from = "scratch"       # "scratch", "resume" (from out_dir/ckpt.pt) or a GPT-2 name like "gpt2"
overwrite = False           # a new run may replace the run in out_dir (deletes its ckpt.pt and metrics.jsonl)
# data
dataset = "concepts"        # reads data/<dataset>/{train,val}.bin written by prepare.py
data_root = "data"
gradient_accumulation_steps = 1  # micro-batches per step, summed over all processes
batch_size = 32             # sequences per micro-batch
block_size = 64
# model
n_layer = 2
n_head = 4
n_embd = 128
dropout = 0.0
bias = True
# CoCoMix (Section 2): labels from a frozen teacher + SAE (sae.py); the model predicts, compresses and mixes them
mode = "ntp"                # "ntp": next-token prediction only; "cocomix": + concept prediction and mixing; the
                            # controls in the same slot: "pause" (one learned pause token), "regress" (Fig. 6b)
sae_path = "out/sae/sae.pt"  # cocomix, regress: an SAE checkpoint from sae.py, which names its teacher and layer
concept_method = "attribution"  # label selection: "attribution" (official code), "attribution_pre" (Eq. 1), "activation"
k_attr = 4                  # K_attr: concept labels per token
cached_labels = False       # cocomix: read the labels `python labels.py` wrote (whole windows on a fixed grid)
label_dtype = "float32"     # the teacher's pass for the labels: "float32", or "bfloat16" (autocast; faster on GPUs)
k_concepts = 32             # K_concept: predicted concepts kept and compressed
insert_layer = 1            # predict and mix concepts at the input of this block
mixing = "interleave"       # "interleave", "add" or "none" (concept prediction only)
lam_concept = 0.1           # lambda in Eq. 4 (for regress, on its loss); 0 with mixing is the "mixing only" ablation
regress_loss = "l2"         # regress: "l2" or "cosine", on the teacher's layer-normed hidden state at the SAE's layer
# knowledge distillation (the paper's KD baseline): + lam_kd * KL(teacher || student) per token, with any mode
lam_kd = 0.0                # 0.1 in the paper's KD and KD + pause
teacher_path = "out/teacher"  # the KD teacher: a train.py out_dir or a GPT-2 name
# AdamW with warmup then cosine decay to min_lr_ratio * learning_rate (Brown et al., 2020, as the paper)
learning_rate = 2e-3
max_iters = 1000
lr_decay_iters = None       # None: decay over max_iters
warmup_iters = None         # None: the paper's 1/300 of lr_decay_iters
min_lr_ratio = 0.1
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
# system
device = "auto"             # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
dtype = "auto"              # "auto" (bfloat16 on cuda, else float32), "float32", "bfloat16", "float16"
compile = None              # torch.compile the model and the teacher's blocks: True, False, or None (CUDA only)
seed = 1337
# -----------------------------------------------------------------------------
config = configure(globals())
# What a flag may change on resume: how long to train and to decay the learning rate, how often to evaluate, log
# and save, where the data lies (its fingerprint is checked) and the machine. The rest (model, data, batches,
# optimizer, seed, CoCoMix) is the run itself.
RESUME_MAY_CHANGE = ("max_iters", "lr_decay_iters", "eval_interval", "log_interval", "eval_iters",
                     "always_save_checkpoint", "data_root", "device", "dtype", "compile")


def fail(message):
    raise SystemExit(f"error: {message}")


def check_settings():
    """Stop, in one line, at the first setting the run cannot use; before anything is written."""
    check(config, at_least=dict(eval_interval=1, log_interval=1, eval_iters=1, gradient_accumulation_steps=1,
                                batch_size=1, block_size=1, n_layer=1, n_head=1, n_embd=1, k_attr=1, k_concepts=1,
                                max_iters=0, lr_decay_iters=1, warmup_iters=0),
          between=dict(learning_rate="(0, inf)", dropout="[0, 1)", beta1="[0, 1)", beta2="[0, 1)",
                       min_lr_ratio="[0, 1]", weight_decay="[0, inf)", grad_clip="[0, inf)", lam_concept="[0, inf)",
                       lam_kd="[0, inf)"),
          one_of=dict(mode=("ntp", "cocomix", "pause", "regress"), mixing=("interleave", "add", "none"),
                      concept_method=("attribution", "attribution_pre", "activation"), regress_loss=("l2", "cosine"),
                      label_dtype=("float32", "bfloat16")))
    if init_from not in ("scratch", "resume") and not init_from.startswith("gpt2"):
        fail(f"unknown init_from={init_from!r}: use 'scratch', 'resume' or a GPT-2 name like 'gpt2'")
    if init_from == "resume" and overwrite:
        fail("--overwrite starts a new run and --init_from=resume continues one: give only one of them")
    if n_embd % n_head:
        fail(f"n_embd={n_embd} is not a multiple of n_head={n_head}: each head takes n_embd/n_head dimensions")
    if mode != "ntp" and not 0 < insert_layer < n_layer:
        fail(f"insert_layer={insert_layer} must leave blocks on both sides: use 1..{n_layer - 1}")
    if cached_labels and mode != "cocomix":
        fail(f"--cached_labels holds concept labels, which mode={mode} does not learn: drop it")
    if mode == "pause" and mixing != "interleave":
        fail(f"mode=pause interleaves its pause tokens; mixing={mixing!r} has no meaning for it: drop --mixing")
    if gradient_accumulation_steps % int(os.environ.get("WORLD_SIZE", 1)):
        fail(f"gradient_accumulation_steps={gradient_accumulation_steps} must be a multiple of the "
             f"{os.environ['WORLD_SIZE']} processes")
    if not out_dir:
        fail("out_dir is empty: give --out_dir=DIR")
    if compile is not None and not isinstance(compile, bool):
        fail(f"compile={compile!r} must be True, False or None (None: compile on CUDA only)")


# on resume the run's own settings come first: everything below is checked and built from them
ckpt_path = os.path.join(out_dir, "ckpt.pt")
checkpoint, changes = None, []
if init_from == "resume":
    try:
        model, checkpoint = GPT.from_checkpoint(ckpt_path)
    except ValueError as e:
        fail(e)
    changes = resume_settings(config, checkpoint["config"], RESUME_MAY_CHANGE, "start a new run in another --out_dir")
    globals().update(config)
check_settings()
device = resolve_device(device)
if init_from != "resume" and not overwrite:
    check_new_run(out_dir, ("ckpt.pt", "metrics.jsonl"))


def setup_distributed():
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) for a plain `python train.py`."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return 0, 0, 1
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), int(os.environ["LOCAL_RANK"]), dist.get_world_size()


rank, local_rank, world_size = setup_distributed()
if world_size > 1 and device == "cuda":
    device = f"cuda:{local_rank}"
    torch.cuda.set_device(device)
master = rank == 0
device_type = "cuda" if device.startswith("cuda") else "cpu"
ptdtype, autocast = autocast_for(device, dtype)
local_micro_steps = gradient_accumulation_steps // world_size
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
lr_decay_iters = lr_decay_iters or max_iters
warmup_iters = max(1, lr_decay_iters // 300) if warmup_iters is None else warmup_iters
torch.manual_seed(seed + rank)  # dropout differs per rank; data sampling below does not depend on rank
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
if master:
    print(f"{world_size} process(es), {tokens_per_iter:,} tokens per iteration, device {device}, "
          f"{str(ptdtype).removeprefix('torch.')}")
    if checkpoint is not None:
        print(f"resuming {ckpt_path} with its own settings" + (f", changed: {', '.join(changes)}" if changes else ""))

# -----------------------------------------------------------------------------
# data: the uint16 token memmaps from prepare.py
data_dir = os.path.join(data_root, dataset)
check_splits(data_dir, block_size)
meta = load_meta(data_dir)
if checkpoint is not None:
    try:
        check_trained_on(checkpoint, data_dir, ckpt_path)  # the data it learned, not one re-prepared since
    except ValueError as e:
        fail(e)


def get_batch(split, it, micro):
    """(x, y, cached concept labels or None): micro-batch `micro` of iteration `it`'s global batch. The global
    batch is drawn from a generator seeded by (seed, split, it) alone, so a run gives the same batches with any
    number of processes and after a resume. Windows start anywhere; with cached labels, on their grid."""
    data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")  # re-open: no leak
    g = torch.Generator().manual_seed(seed * 1_000_003 + 2 * it + (split == "val"))
    n = gradient_accumulation_steps * batch_size
    if label_cache is None:
        ix = torch.randint(len(data) - block_size, (n,), generator=g)
    else:  # whole grid windows, the ones labels.py labelled
        ix = block_size * torch.randint(n_windows(len(data), block_size), (n,), generator=g)
    ix = ix[micro * batch_size:(micro + 1) * batch_size]
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    labels = None if label_cache is None else as_labels(label_cache[split][(ix // block_size).numpy()])
    if device_type == "cuda":
        x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        labels = None if labels is None else labels.pin_memory().to(device, non_blocking=True)
    return x, y, labels


# -----------------------------------------------------------------------------
# model and optimizer
iter_num, best_val_loss = 0, float("inf")
vocab_size = -(-meta["vocab_size"] // 64) * 64  # pad to a multiple of 64 for faster matmuls
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                  vocab_size=vocab_size, dropout=dropout)
extractor = teacher = None  # the SAE's labels (or, for regress, its teacher and layer); the KD teacher


def check_teacher_window(teacher, what):
    if block_size > teacher.config.block_size:
        fail(f"block_size={block_size} exceeds the teacher's {teacher.config.block_size}: the teacher {what} the "
             f"student's exact windows, so use --block_size<={teacher.config.block_size}")


if mode in ("cocomix", "regress"):
    try:
        extractor = load_concept_extractor(sae_path, device, k_attr=k_attr, method=concept_method)
        extractor.check_data(meta, dataset)  # the teacher must read the same tokens as the student
    except ValueError as e:
        fail(e)
    check_teacher_window(extractor.teacher, "labels" if mode == "cocomix" else "reads")
    if mode == "cocomix" and k_concepts > extractor.n_concepts:  # k_attr: the extractor checks it
        fail(f"k_concepts={k_concepts} exceeds the SAE's {extractor.n_concepts} concepts: "
             f"use 1..{extractor.n_concepts}")
    model_args.update(dict(n_concepts=extractor.n_concepts, k_concepts=k_concepts) if mode == "cocomix" else
                      dict(n_regress=extractor.teacher.config.n_embd, regress_loss=regress_loss))
label_cache = None  # {split: (windows, block_size, k_attr) uint16 memmap} with --cached_labels
if cached_labels:
    try:
        label_cache = load_labels(cache_dir(sae_path, dataset, concept_method, k_attr, block_size),
                                  cache_key(extractor, meta, block_size))
    except ValueError as e:
        fail(e)
if mode != "ntp":
    model_args.update(insert_layer=insert_layer, mixing=mixing, pause=mode == "pause")
if lam_kd:
    try:
        teacher, teacher_record = load_teacher(teacher_path, device)
        check_vocab(teacher, tokenizer_of(teacher_record["meta"]), meta, dataset)
    except ValueError as e:
        fail(e)
    check_teacher_window(teacher, "distils on")
if init_from == "scratch":
    model = GPT(GPTConfig(**model_args))
elif init_from == "resume":
    if model_args.get("n_concepts") != checkpoint["model_args"].get("n_concepts"):
        fail(f"{sae_path} has {model_args['n_concepts']} concepts but the checkpoint's model predicts "
             f"{checkpoint['model_args']['n_concepts']}: the SAE was retrained since; restore it, or start a new run")
    model_args = checkpoint["model_args"]
    iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
else:
    try:
        model = GPT.from_pretrained(init_from, dropout=dropout)
    except (ImportError, OSError) as e:
        fail(f"could not load the GPT-2 weights {init_from!r} ({type(e).__name__}): transformers downloads them "
             "from the Hugging Face hub once, so connect once, or set HF_HOME to a cache that holds them")
    model_args = asdict(model.config)
if block_size > model.config.block_size:
    fail(f"block_size={block_size} exceeds the model's {model.config.block_size}: "
         f"use --block_size={model.config.block_size} or less")
if meta["vocab_size"] > model.config.vocab_size:
    fail(f"dataset {dataset} has {meta['vocab_size']} tokens but the model only {model.config.vocab_size}: "
         "prepare the data with the model's tokenizer")
model.to(device)


# only now, all inputs checked, is anything written: a run stopped by bad input leaves nothing behind
metrics_path = os.path.join(out_dir, "metrics.jsonl")
if master:
    lock = claim_out_dir(out_dir)  # held until the run ends
    remove_stale(ckpt_path, metrics_path)
    if init_from != "resume" and os.path.exists(ckpt_path):  # --overwrite: the old run goes
        os.remove(ckpt_path)
    # a resumed run re-evaluates at its first iteration: keep the rows before it (none for a new run), and not a
    # row cut short by a kill; atomically (write, then rename), so a kill here loses nothing
    rows = open(metrics_path).readlines() if os.path.exists(metrics_path) else []
    with replacing(metrics_path) as tmp, open(tmp, "w") as f:
        f.writelines(r for r in rows if r.endswith("\n") and json.loads(r)["iter"] < iter_num)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint["optimizer"])
    rng = checkpoint["rng"]
    # one dropout stream per rank of the saved run; with another process count, rank r continues stream
    # r % (old count): the data batches do not depend on ranks, so only the dropout noise differs
    random.setstate(rng["python"]), np.random.set_state(rng["numpy"])
    state = rng["torch"][rank % len(rng["torch"])]
    if rng.get("device_type", "cpu") != device_type:  # a run moved between CPU and GPU: a fresh dropout stream
        print(f"note: the checkpoint's dropout stream is {rng.get('device_type', 'cpu')}'s; "
              f"on {device_type} dropout continues from seed {seed + rank}")
    elif device_type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
    checkpoint = None  # free memory
saved_iter = iter_num if init_from == "resume" else None  # the iteration of the checkpoint on disk
scaler = torch.amp.GradScaler(device_type, enabled=(ptdtype == torch.float16))
raw_model = model
if compile or (compile is None and device_type == "cuda"):
    model = torch.compile(model)
    for frozen in (teacher, extractor and extractor.teacher):  # the KD teacher's and the labels' passes
        if frozen is not None:
            frozen.compile_blocks()
if world_size > 1:
    model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
# training FLOPs per token (the compute axis): the student's, and the frozen teacher's and the SAE's it pays for
# (labelling counted as if online, also with cached labels, which pay it once per dataset token instead)
flops_per_token = raw_model.flops_per_token(block_size)
if mode == "cocomix":
    flops_per_token += extractor.flops_per_token(block_size)
elif mode == "regress":
    flops_per_token += teacher_flops_per_token(extractor.teacher, block_size, extractor.layer)
if teacher is not None:
    flops_per_token += teacher_flops_per_token(teacher, block_size)
if master:
    print(f"model: {raw_model.get_num_params() / 1e6:.2f}M parameters "
          f"({raw_model.get_num_params(activated=True) / 1e6:.2f}M activated), "
          f"{flops_per_token / 1e6:.2f} MFLOPs per training token, starting at iteration {iter_num}")


def get_lr(it):
    """Linear warmup, then cosine decay to min_lr_ratio * learning_rate."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    progress = min(1.0, (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters))
    return learning_rate * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def all_reduce_sum(x):
    """Sum a float over all processes."""
    if world_size == 1:
        return x
    t = torch.tensor(x, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def objective(losses):
    """Eq. 4: next-token cross-entropy plus lam_concept times the concept cross-entropy (Eq. 2) or the regression
    loss, plus lam_kd times the distillation KL."""
    return losses["ntp"] + lam_concept * losses.get("concept", 0.0) + lam_kd * losses.get("kd", 0.0)


def losses_of(X, Y, targets):
    """The model's losses on a batch (model.forward's, and "kd" with a KD teacher)."""
    logits, concept_logits, losses = model(X, Y, targets)
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = teacher(X)[0]
        losses["kd"] = kd_loss(logits, teacher_logits, meta["vocab_size"])
    return concept_logits, losses


def concept_labels(X):
    """What the slot head learns, from the frozen teacher (each DDP rank for its own batch): concept labels from
    the teacher + SAE (cocomix), the teacher's layer-normed hidden state at the SAE's layer (regress), else None."""
    if extractor is None:
        return None
    if mode == "regress":
        with torch.no_grad():
            return layer_norm(extractor.teacher.hidden(X, extractor.layer))[0]
    with torch.enable_grad(), torch.autocast(device_type, torch.bfloat16, enabled=label_dtype == "bfloat16"):
        return extractor(X)  # with the teacher's gradient (attribution needs it), also during evaluation


eval_labels = {}  # evaluation batches are fixed, so their concept labels are computed once


@torch.no_grad()
def estimate_loss():
    """Mean losses over the same eval_iters batches per split at every evaluation, split across processes."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        sums = dict.fromkeys(["loss"] + ["concept_loss"] * bool(extractor) + ["concept_acc"] * (mode == "cocomix")
                             + ["kd_loss"] * (teacher is not None), 0.0)
        for k in range(rank, eval_iters, world_size):
            X, Y, labels = get_batch(split, -1 - k, 0)  # negative iterations: fixed evaluation batches
            if extractor and labels is None and (split, k) not in eval_labels:
                eval_labels[split, k] = concept_labels(X)
            labels = eval_labels.get((split, k), labels)
            with autocast:
                concept_logits, losses = losses_of(X, Y, labels)
            sums["loss"] += losses["ntp"].item()
            for key in ("concept", "kd"):
                if key in losses:
                    sums[f"{key}_loss"] += losses[key].item()
            if "concept_acc" in sums:
                sums["concept_acc"] += concept_accuracy(concept_logits, labels)
        out.update({f"{split}_{key}": all_reduce_sum(v) / eval_iters for key, v in sums.items()})
    model.train()
    return out


def kept():
    return f"{ckpt_path} (iteration {saved_iter}) is kept" if saved_iter else "no checkpoint was written"


def stop_nonfinite(what):
    """A non-finite loss or weight does not recover: stop before it can reach a checkpoint."""
    fail(f"{what} at iteration {iter_num}: the learning rate ({learning_rate:g}) is likely too high, or another "
         f"setting is bad; {kept()}")


def save_checkpoint():
    """Save everything a bit-exact resume needs, whole or not at all (checkpoint.save). Never a non-finite
    model."""
    if not finite(raw_model):
        stop_nonfinite("the weights are not finite")
    # each rank has its own dropout stream, on the CPU generator or (on a GPU) the device's
    state = torch.cuda.get_rng_state(device) if device_type == "cuda" else torch.get_rng_state()
    rng_torch = [state]
    if world_size > 1:
        rng_torch = [None] * world_size
        dist.all_gather_object(rng_torch, state)
    if not master:
        return
    ckpt = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "model_args": model_args,
            "iter_num": iter_num, "best_val_loss": best_val_loss, "config": config, "meta": meta,
            "data_fingerprint": fingerprint(meta),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": rng_torch,
                    "device_type": device_type}}
    save(ckpt, ckpt_path, kept())


def log_metrics(row):
    try:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:  # a row cut short here is dropped on resume
        fail(f"could not append to {metrics_path} ({e.strerror}): the disk is full or not writable; {kept()}")


# -----------------------------------------------------------------------------
# the training loop
device_name = torch.cuda.get_device_name(device) if device_type == "cuda" else "cpu"
t0 = t_interval = time.time()
iters_in_interval = 0
while True:
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group["lr"] = lr

    if iter_num % eval_interval == 0 or iter_num == max_iters:
        train_time = time.time() - t_interval
        evals = estimate_loss()
        for key, value in evals.items():
            if not math.isfinite(value):
                stop_nonfinite(f"the evaluated {key} is {value}")
        tokens_per_sec = iters_in_interval * tokens_per_iter / train_time if iters_in_interval else None
        mfu = raw_model.estimate_mfu(tokens_per_sec, block_size, device_name) if tokens_per_sec else None
        if master:
            extra = "".join(f", val {key.replace('_', ' ')} {evals['val_' + key]:.4f}"
                            for key in ("concept_loss", "concept_acc", "kd_loss") if "val_" + key in evals)
            print(f"step {iter_num}: train loss {evals['train_loss']:.4f}, val loss {evals['val_loss']:.4f}{extra}")
            log_metrics({"iter": iter_num, "dataset": dataset, "tokens": iter_num * tokens_per_iter,
                         "flops": iter_num * tokens_per_iter * flops_per_token, **evals, "lr": lr,
                         "tokens_per_sec": tokens_per_sec, "mfu": mfu})
        if iter_num > 0 and (evals["val_loss"] < best_val_loss or always_save_checkpoint):
            best_val_loss = min(best_val_loss, evals["val_loss"])
            save_checkpoint()
            saved_iter = iter_num
        t_interval, iters_in_interval = time.time(), 0
    if iter_num >= max_iters:
        break

    # one optimisation step over gradient_accumulation_steps micro-batches
    loss_sum = torch.zeros((), device=device)  # summed on the device: .item() each micro-step would sync the GPU
    for micro in range(local_micro_steps):
        X, Y, labels = get_batch("train", iter_num, micro * world_size + rank)
        labels = concept_labels(X) if labels is None else labels
        sync = micro == local_micro_steps - 1  # DDP all-reduces gradients on the last micro-batch only
        with (model.no_sync() if world_size > 1 and not sync else nullcontext()), autocast:
            loss = objective(losses_of(X, Y, labels)[1]) / local_micro_steps
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    iters_in_interval += 1

    if iter_num % log_interval == 0:
        loss_sum = all_reduce_sum(loss_sum.item()) / world_size  # checked here, where it is on the host anyway
        if not math.isfinite(loss_sum):
            stop_nonfinite(f"the training loss is {loss_sum}")
        if master:
            dt = (time.time() - t0) / log_interval
            print(f"iter {iter_num}: loss {loss_sum:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
                  f"{tokens_per_iter / dt:,.0f} tokens/s")
        t0 = time.time()

if world_size > 1:
    dist.barrier()  # let rank 0 finish its checkpoint before the group is torn down
    del model  # free DDP's reducer (it holds gloo work) while the interpreter is whole: else rank 1 can abort at exit
    gc.collect()
    dist.destroy_process_group()
