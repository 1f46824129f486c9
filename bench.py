"""
Time one training step of NTP and of CoCoMix on the same shapes, and the concept labelling (teacher + SAE)
separately. Random tokens and random weights: speed does not depend on what the model knows.

    python bench.py                                                  # the embedded default's students, CPU
    python bench.py --ntp_config=config/owt_ntp_69m.py --cocomix_config=config/owt_cocomix_69m.py \
        --teacher_config=gpt2 --n_latents=32768 --sae_k=32 --sae_layer=5 --batch_size=16   # the paper's 69M, GPU
"""
import runpy
import time

import torch

from configurator import autocast_for, configure, resolve_device
from model import GPT, GPTConfig
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
steps = 20                  # timed steps, after `warmup` untimed ones
warmup = 5
device = "auto"
dtype = "auto"
compile = None              # as train.py: None compiles on CUDA only; True also times compiled steps on CPU
seed = 1337
# -----------------------------------------------------------------------------


def model_config(path, **extra):
    """GPTConfig from a train.py preset's architecture keys."""
    if path == "gpt2":
        return GPTConfig(vocab_size=vocab_size)
    cfg = runpy.run_path(path)
    keys = ("n_layer", "n_head", "n_embd", "block_size", "k_concepts", "insert_layer", "mixing")
    return GPTConfig(vocab_size=vocab_size, **{k: cfg[k] for k in keys if k in cfg}, **extra)


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


def main():
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

    def step_time(model, lam, compiled):
        """Seconds per optimisation step (forward, backward, AdamW) of model, compiled or eager."""
        optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), dev_type)
        fwd = torch.compile(model) if compiled else model

        def step():
            with autocast:
                _, _, losses = fwd(X, Y, labels if lam else None)
                loss = losses["ntp"] + lam * losses.get("concept", 0.0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return timed(step, sync)

    use_compile = compile or (compile is None and dev_type == "cuda")
    results = {name: step_time(model, lam, use_compile) for name, model, lam in
               (("ntp", ntp, 0.0), ("cocomix", cocomix, 0.1))}
    if use_compile and dev_type == "cpu":  # what train.py's CPU default rests on: the same steps, eager
        eager = {name: step_time(model, lam, False) for name, model, lam in (("ntp", ntp, 0.0), ("cocomix", cocomix, 0.1))}
        print("eager / compiled step time on CPU: " +
              ", ".join(f"{name} {eager[name] / results[name]:.2f}x" for name in results))
    label_time = timed(lambda: extractor(X), sync)

    tokens = batch_size * T
    flops = {name: m.flops_per_token(T) for name, m in (("ntp", ntp), ("cocomix", cocomix))}
    print(f"{'':28s}{'ms/step':>10s}{'tokens/s':>12s}")
    rows = [("NTP step", results["ntp"]), ("CoCoMix step (model only)", results["cocomix"]),
            ("concept labelling", label_time), ("CoCoMix step + labelling", results["cocomix"] + label_time)]
    for name, t in rows:
        print(f"{name:28s}{t * 1e3:10.1f}{tokens / t:12,.0f}")
    print(f"parameters: NTP {ntp.get_num_params() / 1e6:.2f}M, CoCoMix {cocomix.get_num_params(activated=True) / 1e6:.2f}M "
          f"activated ({cocomix.get_num_params() / 1e6:.2f}M stored), teacher {teacher.get_num_params() / 1e6:.2f}M")
    print(f"CoCoMix / NTP step time: {results['cocomix'] / results['ntp']:.2f}x model only, "
          f"{(results['cocomix'] + label_time) / results['ntp']:.2f}x with labelling; "
          f"FLOPs per token ratio: {flops['cocomix'] / flops['ntp']:.2f}x")
    if dev_type == "cuda":
        for name, m in (("ntp", ntp), ("cocomix", cocomix)):
            mfu = m.estimate_mfu(tokens / results[name], T, torch.cuda.get_device_name(dev))
            print(f"MFU {name}: {mfu:.1%}" if mfu is not None else f"MFU {name}: unknown GPU")


if __name__ == "__main__":
    configure(globals())
    main()
