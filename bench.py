"""
Time one training step of NTP and of CoCoMix on the same shapes, and the concept labelling separately: online
(teacher + SAE; with --compile, also with the teacher's blocks compiled) and read from labels.py's cache. Random
tokens and random weights: speed does not depend on what the model knows. With --compile, also the first
(compiling) step's seconds and the eager/compiled ratio.

    python bench.py                                                  # the embedded default's students, CPU
    python bench.py --ntp_config=config/owt_ntp_69m.py --cocomix_config=config/owt_cocomix_69m.py \
        --teacher_config=gpt2 --n_latents=32768 --sae_k=32 --sae_layer=5 --batch_size=16 \
        --vocab_size=50304                                           # the paper's 69M, GPU
    python bench.py --memory_table=True      # the OWT presets' training memory per GPU, estimated (a markdown table)

The parts are timed against each other (timed_in_rounds): in each of `rounds` rounds every part runs `steps`
steps in turn, so that the machine's slow spells fall on all of them; a time is a part's median round, and the
CoCoMix / NTP ratio the median of the per-round ratios, with its range.

Each timed part also reports its peak memory: on CUDA the allocator's peak (reset before the part), on CPU the
process's peak resident set size (one number for the whole run: the kernel keeps no per-part peak).
"""
import os
import resource
import runpy
import sys
import tempfile
import time

import numpy as np
import torch

from configurator import autocast_for, check, configure, resolve_device
from model import GPT, GPTConfig
from labels import as_labels
from sae import SAE, ConceptExtractor

# -----------------------------------------------------------------------------
ntp_config = "config/concepts_ntp.py"
cocomix_config = "config/concepts_cocomix.py"
teacher_config = "config/concepts_teacher.py"  # a train.py preset for the teacher's shape, or "gpt2" (124M)
n_latents = 1024            # SAE size C
sae_k = 16
sae_layer = 1
vocab_size = 384
batch_size = 32
steps = 20                  # timed steps per round, after `warmup` untimed ones
rounds = 5                  # rounds; within each, every part is timed in turn: a slow spell hits all parts alike
warmup = 5
device = "auto"
dtype = "auto"
compile = None              # as train.py: None compiles on CUDA only; True also times compiled steps on CPU
seed = 1337
memory_table = False        # only print the OWT presets' estimated training memory (meta device: nothing allocated)
# -----------------------------------------------------------------------------


def model_config(path, **extra):
    """GPTConfig from a train.py preset's architecture keys; extra overrides (vocab_size too)."""
    if path == "gpt2":
        return GPTConfig(**{"vocab_size": vocab_size, **extra})
    cfg = runpy.run_path(path)
    keys = ("n_layer", "n_head", "n_embd", "block_size", "k_concepts", "insert_layer", "mixing")
    return GPTConfig(**{"vocab_size": vocab_size, **{k: cfg[k] for k in keys if k in cfg}, **extra})


def label_cache(labels, directory):
    """labels.py's cache format, for timing reads from it: 64 copies of labels (B, T, k_attr) in a uint16 memmap
    in directory, -1 stored as 65535 (NONE)."""
    cache = np.memmap(os.path.join(directory, "labels.bin"), dtype=np.uint16, mode="w+",
                      shape=(64 * labels.size(0), *labels.shape[1:]))
    cache[:] = np.tile(labels.cpu().numpy().astype(np.uint16), (64, 1, 1))  # int64 -1 wraps to 65535
    return cache


def timed(fn, sync):
    """Mean seconds per call of fn over `steps` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def timed_in_rounds(parts, sync, cuda=None):
    """Time the parts against each other: after `warmup` calls of each, `rounds` rounds in which each part's fn
    runs `steps` times in turn. A CPU's speed drifts between runs and within one; a slow spell then falls on every
    part of a round, so the ratio of two parts is best taken per round (ratio).
    parts: {name: fn}; cuda: the CUDA device they run on, or None.
    Returns ({name: [mean seconds per call, one per round]}, {name: the CUDA allocator's peak bytes over its calls,
    reset before each round's calls; None on CPU, which keeps no such peak})."""
    for fn in parts.values():
        for _ in range(warmup):
            fn()
    sync()
    seconds, peaks = {name: [] for name in parts}, dict.fromkeys(parts)
    for _ in range(rounds):
        for name, fn in parts.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats(cuda)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            seconds[name].append((time.perf_counter() - t0) / steps)
            if cuda:
                peaks[name] = max(peaks[name] or 0, torch.cuda.max_memory_allocated(cuda))
    return seconds, peaks


def ratio(a, b):
    """(median, min, max) over rounds of a[i] / b[i]: two parts' per-round seconds."""
    r = np.array(a) / np.array(b)
    return float(np.median(r)), float(r.min()), float(r.max())


# -----------------------------------------------------------------------------
# The memory table: what the paper's presets need per GPU to train, estimated from their shapes alone. They train
# on OpenWebText with GPT-2's BPE (50257 tokens, padded to 50304 as train.py pads), and CoCoMix's concepts come
# from OpenAI's GPT-2 small SAE (32,768 latents, k=32, on the output of block 5) on the frozen GPT-2 small teacher.
# (Constants here are tuples and dicts: configure() would take a plain number or string for a setting.)
OWT_PRESETS = tuple(f"config/owt_{mode}_{size}.py" for size in ("69m", "386m", "1b") for mode in ("ntp", "cocomix"))
OWT = dict(vocab_size=50304, teacher_vocab_size=50257, n_latents=32768, sae_k=32, sae_layer=5)
GPU_GB = (24, 40, 80)       # GPU memory sizes, which their makers write in GB but are GiB


def activation_bytes(b, h, seqs, s, classes, bytes_per_value=2, masks=True):
    """Bytes a micro-batch of b sequences holds for its backward (no activation checkpointing): blocks of width h
    over seqs[i] positions each, then cross-entropies over s positions, one per entry of classes.
    A block: sbh(34 + 5as/h) bytes in 16 bits (Korthikanti et al., 2022, Eq. 1; a heads). We drop 5as^2b, the
    attention scores and their dropout mask, which SDPA's flash kernel (dropout included) never stores; an eval-mode
    model (masks=False) has no dropout masks (2sbh); fp32 doubles the rest. A cross-entropy: 4sb bytes per class
    for the fp32 log-softmax it saves, plus 8sb per class in its backward (its gradient in, and out), for the
    largest one only: the losses run their backward one after the other.
    Left out: the few s*b*h tensors outside the blocks, and autocast's bf16 weight copies (2 B/param)."""
    per_position = (34 if masks else 32) * h * bytes_per_value // 2
    return b * (per_position * sum(seqs) + s * (4 * sum(classes) + 8 * max(classes)))


def training_memory(path):
    """One row of the memory table: the preset at `path` trained on one GPU at its micro-batch (batch_size x
    block_size tokens, bf16 autocast), in bytes; for CoCoMix, with its frozen teacher and SAE, and their labelling."""
    cfg = runpy.run_path(path)
    b, s = cfg["batch_size"], cfg["block_size"]
    cocomix = cfg.get("mode") == "cocomix"
    with torch.device("meta"):  # shapes only: nothing is allocated
        concepts = {"n_concepts": OWT["n_latents"]} if cocomix else {}
        model = GPT(model_config(path, vocab_size=OWT["vocab_size"], **concepts))
        teacher = GPT(GPTConfig(vocab_size=OWT["teacher_vocab_size"])) if cocomix else None  # GPT-2 small
        sae = SAE(teacher.config.n_embd, OWT["n_latents"], OWT["sae_k"]) if cocomix else None
    c = model.config
    states = 16 * model.get_num_params()  # fp32 weights and gradients, and AdamW's two fp32 moments
    if not cocomix:
        activations = activation_bytes(b, c.n_embd, [s] * c.n_layer, s, [c.vocab_size])
        frozen = labelling = 0
    else:  # the blocks from insert_layer on see 2s positions (h1, c1, h2, c2, ...); both losses over the s tokens
        seqs = [s] * c.insert_layer + [2 * s] * (c.n_layer - c.insert_layer)
        activations = activation_bytes(b, c.n_embd, seqs, s, [c.vocab_size, c.n_concepts])
        # the teacher and SAE in fp32 (train.py loads them so), never trained: weights only
        frozen = 4 * (teacher.get_num_params() + sum(p.numel() for p in sae.parameters()))
        # labelling (teacher.teacher_pass, fp32: train.py's default label_dtype) runs before the student's forward
        # and frees its graph before it: no graph below the SAE's layer, the eval-mode blocks above it, the loss.
        # Its forward holds as much at the loss (logits, their shifted copy, the log-softmax). The SAE's scores
        # after it (4096 tokens x C in fp32 at a time, sae.ConceptExtractor.chunk_tokens) take less.
        t = teacher.config
        labelling = activation_bytes(b, t.n_embd, [s] * (t.n_layer - 1 - OWT["sae_layer"]), s, [t.vocab_size],
                                     bytes_per_value=4, masks=False)
    total = states + frozen + max(activations, labelling)
    # "yes" leaves 10% free (CUDA context, allocator fragmentation, what the estimate leaves out); "tight" does not
    fits = {gb: "yes" if total <= 0.9 * gb * 2**30 else "tight" if total <= gb * 2**30 else "no" for gb in GPU_GB}
    return dict(preset=path, params=model.get_num_params(), micro_batch=(b, s), states=states,
                activations=activations, frozen=frozen, labelling=labelling, total=total, fits=fits)


def memory_rows():
    """The training_memory rows of OWT_PRESETS, from wherever bench.py is run."""
    root = os.path.dirname(os.path.abspath(__file__))
    return [{**training_memory(os.path.join(root, path)), "preset": path} for path in OWT_PRESETS]


def print_memory_table(rows):
    """Markdown, to paste into the README."""
    gib = lambda x: f"{x / 2**30:.1f}" if x else "-"  # noqa: E731
    print(f"Estimated training memory per GPU, GiB (one process; bench.py --memory_table=True). Weights, gradients "
          f"and AdamW in fp32 (16 B/param); activations bf16 at the micro-batch, no checkpointing, flash attention; "
          f"CoCoMix adds its frozen fp32 GPT-2 teacher and {OWT['n_latents']:,}-latent SAE, and their fp32 "
          f"labelling pass, which comes before the student's forward and so counts only if larger. 'yes' leaves "
          f"10% free, 'tight' does not. DDP adds its gradient buckets (4 B/param).\n")
    print("| preset | params | micro-batch | weights + grads + AdamW | activations | teacher + SAE | labelling "
          "| total | " + " | ".join(f"{gb} GB" for gb in GPU_GB) + " |")
    print("|---" * (8 + len(GPU_GB)) + "|")
    for r in rows:
        print(f"| {r['preset']} | {r['params'] / 1e6:,.1f}M | {r['micro_batch'][0]} x {r['micro_batch'][1]} "
              f"| {gib(r['states'])} | {gib(r['activations'])} | {gib(r['frozen'])} | {gib(r['labelling'])} "
              f"| {gib(r['total'])} | " + " | ".join(r["fits"][gb] for gb in GPU_GB) + " |")


# -----------------------------------------------------------------------------
def main():
    check(globals(), at_least=dict(n_latents=1, sae_k=1, sae_layer=0, vocab_size=1, batch_size=1, steps=1, rounds=1,
                                   warmup=0))
    if memory_table:
        print_memory_table(memory_rows())
        return
    dev = resolve_device(device)
    dev_type = "cuda" if dev.startswith("cuda") else "cpu"
    ptdtype, autocast = autocast_for(dev, dtype)
    sync = torch.cuda.synchronize if dev_type == "cuda" else (lambda: None)
    torch.manual_seed(seed)

    teacher = GPT(model_config(teacher_config)).to(dev).eval().requires_grad_(False)
    extractor = ConceptExtractor(teacher, SAE(teacher.config.n_embd, n_latents, sae_k).to(dev), sae_layer)
    ntp = GPT(model_config(ntp_config)).to(dev)
    cocomix = GPT(model_config(cocomix_config, n_concepts=n_latents)).to(dev)
    T = cocomix.config.block_size
    X = torch.randint(0, vocab_size, (batch_size, T), device=dev)
    Y = torch.randint(0, vocab_size, (batch_size, T), device=dev)
    labels = extractor(X)
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev_type == 'cuda' else 'cpu'}), {ptdtype}, "
          f"batch {batch_size} x {T} tokens, {torch.get_num_threads()} CPU threads")

    first = {}  # seconds of the first, compiling step

    def training_step(name, model, lam, compiled):
        """A function doing one optimisation step (forward, backward, AdamW) of model, compiled or eager; a compiled
        one has run its first, compiling step."""
        optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), dev_type)
        fwd = torch.compile(model) if compiled else model

        def step():
            with autocast:
                _, _, losses = fwd(X, Y, labels if lam else None)
                loss = losses["ntp"] + lam * losses.get("concept", 0.0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if compiled:  # the compilation's cost, paid once per run
            t0 = time.perf_counter()
            step()
            sync()
            first[name] = time.perf_counter() - t0
        return step

    use_compile = compile or (compile is None and dev_type == "cuda")
    resident = torch.cuda.memory_allocated(dev) if dev_type == "cuda" else None  # all three models, X, Y, labels
    students = (("ntp", ntp, 0.0), ("cocomix", cocomix, 0.1))
    parts = {name: training_step(name, model, lam, use_compile) for name, model, lam in students}
    if use_compile and dev_type == "cpu":  # what train.py's CPU default rests on: the same steps, eager
        parts.update({f"{name} eager": training_step(name, model, lam, False) for name, model, lam in students})
    parts["labelling"] = lambda: extractor(X)
    seconds, peaks = timed_in_rounds(parts, sync, dev if dev_type == "cuda" else None)
    results = {name: float(np.median(s)) for name, s in seconds.items()}  # the median round of each part
    if use_compile and dev_type == "cpu":
        print("eager / compiled step time on CPU (median of rounds): " + ", ".join(
            f"{name} {ratio(seconds[f'{name} eager'], seconds[name])[0]:.2f}x" for name, _, _ in students))
    label_time = results["labelling"]
    with tempfile.TemporaryDirectory() as tmp:  # a batch of random windows as train.py reads them from the cache
        cache, ix = label_cache(labels, tmp), np.random.default_rng(seed).integers(64 * batch_size, size=batch_size)
        assert torch.equal(as_labels(cache[:batch_size]).to(dev), labels)  # the cache holds what it was given
        cached_time = timed(lambda: as_labels(cache[ix]).to(dev), sync)
    if use_compile:  # train.py's --compile compiles the teacher's blocks too
        teacher.compile_blocks()
        compiled_label_time = timed(lambda: extractor(X), sync)

    tokens = batch_size * T
    flops = {name: m.flops_per_token(T) for name, m in (("ntp", ntp), ("cocomix", cocomix))}
    print(f"{'':28s}{'ms/step':>10s}{'tokens/s':>12s}   (the median of {rounds} rounds of {steps} steps)")
    rows = [("NTP step", results["ntp"]), ("CoCoMix step (model only)", results["cocomix"]),
            ("concept labelling", label_time), ("CoCoMix step + labelling", results["cocomix"] + label_time)]
    if use_compile:
        rows.insert(3, ("labelling, teacher compiled", compiled_label_time))
    rows.insert(3, ("labels from the cache", cached_time))
    for name, t in rows:
        print(f"{name:28s}{t * 1e3:10.1f}{tokens / t:12,.0f}")
    if use_compile:
        print("first (compiling) step: " + ", ".join(f"{name} {first[name]:.1f} s" for name in first))
    print(f"parameters: NTP {ntp.get_num_params() / 1e6:.2f}M, CoCoMix {cocomix.get_num_params(activated=True) / 1e6:.2f}M "
          f"activated ({cocomix.get_num_params() / 1e6:.2f}M stored), teacher {teacher.get_num_params() / 1e6:.2f}M")
    with_labels = [c + lab for c, lab in zip(seconds["cocomix"], seconds["labelling"])]
    (model_only, lo, hi), labelled = ratio(seconds["cocomix"], seconds["ntp"]), ratio(with_labels, seconds["ntp"])
    print(f"CoCoMix / NTP step time, the median of {rounds} rounds: {model_only:.2f}x model only ({lo:.2f}x to "
          f"{hi:.2f}x), {labelled[0]:.2f}x with labelling ({labelled[1]:.2f}x to {labelled[2]:.2f}x); FLOPs per "
          f"token ratio: {flops['cocomix'] / flops['ntp']:.2f}x")
    if dev_type == "cuda":
        for name, m in (("ntp", ntp), ("cocomix", cocomix)):
            mfu = m.estimate_mfu(tokens / results[name], T, torch.cuda.get_device_name(dev))
            print(f"MFU {name}: {mfu:.1%}" if mfu is not None else f"MFU {name}: unknown GPU")
        # each part's peak holds every model: all three stay on the GPU throughout
        print(f"peak memory (CUDA, torch.cuda.max_memory_allocated, reset before each part): NTP step "
              f"{peaks['ntp'] / 2**20:,.0f} MiB, CoCoMix step {peaks['cocomix'] / 2**20:,.0f} MiB, concept labelling "
              f"{peaks['labelling'] / 2**20:,.0f} MiB; of which {resident / 2**20:,.0f} MiB resident before timing "
              f"(teacher, SAE, both students' weights, the batch and its labels)")
    else:  # ru_maxrss: KiB on Linux, bytes on macOS
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        print(f"peak memory (CPU, process peak RSS from getrusage ru_maxrss): {rss / 2**20:,.0f} MiB over the whole "
              f"run, Python and torch included; the kernel keeps no per-part peak")


if __name__ == "__main__":
    configure(globals())
    main()
