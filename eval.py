"""
Evaluate checkpoints as the paper does (Section 3.1, Table 1): perplexity on a whole validation split, the
seven zero-shot tasks the paper runs through lm-evaluation-harness (here run natively, no harness needed), and
on the concept world probes of the planted concepts. Writes <out>/results.json; compare.py makes Table 1 of it.

    python eval.py out/compare/ntp_s1                        # val perplexity (+ concept probes on the concept world)
    python eval.py out/compare/ntp_s1 out/compare/cocomix_s1 --tasks=val,concept_probes --out=out/eval
    python eval.py out/owt_ntp --tasks=paper                 # OWT val + the seven tasks, loaded from the hub
    python eval.py out/owt_ntp --tasks=val,piqa --task_dir=evals   # offline: evals/piqa.jsonl, the hub's rows
    python compare.py out/eval/results.json                  # then: Table 1 (table.md), tasks.png, curves.png

Tasks: val, concept_probes, lambada_openai, wikitext, hellaswag, piqa, social_iqa, arc_easy, winogrande;
"paper" is val and the seven; NAME=FILE.jsonl reads one task from a local file. Prompts (tasks.py), scoring and
metrics follow lm-eval's zero-shot defaults. For the full harness, make_lm_eval_model() wraps a checkpoint as an
lm_eval LM (or pass --harness=task,task).
"""
import importlib.util
import math
import os
import re
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import write_json
from configurator import autocast_for, check, configure, resolve_device
from model import GPT
from prepare import check_trained_on, get_tokenizer, load_meta, load_planted_concepts, load_tokens
from tasks import TASKS, load_docs, multiple_choice, wikitext_detokenize
from teacher import tokenizer_of
from world import concept_probe_items

# -----------------------------------------------------------------------------
runs = ""                   # train.py out_dirs, comma-separated (or bare: python eval.py RUN [RUN ...])
tasks = "auto"              # comma-separated; "auto": val, plus concept_probes on the concept world
task_dir = ""               # local <task>.jsonl files in the hub's row format; "" loads tasks from the hub
limit = 0                   # documents per task and concept-probe documents (0: all)
dataset = ""                # val perplexity and probes on this prepared dataset ("": the checkpoint's own)
data_root = ""              # "": the checkpoint's
probe_prefix = 32           # concept probes: a probed word is at least this many tokens into its document
harness = ""                # lm-eval task names to run through lm_eval.simple_evaluate (needs `pip install lm_eval`)
batch_size = 16
out = "out/eval"            # writes <out>/results.json
device = "auto"
dtype = "auto"              # one precision for every checkpoint: "auto" is bfloat16 on CUDA, float32 on CPU
seed = 1337
# -----------------------------------------------------------------------------


# -----------------------------------------------------------------------------
# scoring: everything below reduces to log p(continuation | context) over token ids


@torch.no_grad()
def loglikelihoods(model, requests, batch_size=16, autocast=nullcontext(), desc="scoring"):
    """(log p(continuation | context), whether greedy decoding yields the continuation) per (context ids,
    continuation ids) request. As lm-eval, the input is cut from the left to block_size tokens. Requests run
    longest first in right-padded batches: padding after a sequence cannot change it, attention is causal."""
    T = model.config.block_size
    dev = next(model.parameters()).device
    rows = []
    for i, (context, continuation) in enumerate(requests):
        if not len(context) or not len(continuation):
            raise ValueError(f"request {i} has no {'context' if not len(context) else 'continuation'} token: "
                             "each needs a context token and a continuation token")
        seq = (list(context) + list(continuation))[-(T + 1):]
        rows.append((seq[:-1], seq[-min(len(continuation), T):]))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    results = [None] * len(rows)
    with tqdm(total=len(rows), desc=desc, leave=False, disable=len(rows) < 2 * batch_size) as bar:
        for k in range(0, len(order), batch_size):
            batch = order[k:k + batch_size]
            x = torch.zeros(len(batch), len(rows[batch[0]][0]), dtype=torch.long)
            for r, i in enumerate(batch):
                x[r, :len(rows[i][0])] = torch.tensor(rows[i][0])
            with autocast:
                logits = model(x.to(dev))[0]
            for r, i in enumerate(batch):
                n, target = len(rows[i][0]), torch.tensor(rows[i][1], device=dev)
                logp = F.log_softmax(logits[r, n - len(target):n].float(), dim=-1)
                results[i] = (logp.gather(1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all()))
            bar.update(len(batch))
    return results


def encode_pair(encode, context, continuation, prefix):
    """Context and continuation ids, split as lm-eval does: trailing spaces of the context move to the
    continuation and the pair is encoded whole, so a word is tokenized as in running text. An empty context
    becomes the end-of-text token (or, without one, the continuation's first token, which is then not scored)."""
    if not context:
        ids = encode(continuation)
        return ([prefix], ids) if prefix is not None else (ids[:1], ids[1:])
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx):]


def rolling_requests(ids, prefix, T):
    """lm-eval's rolling windows for a document's total log-likelihood: every token is predicted once, in
    chunks of T, each chunk with as much preceding context as fits (the first after the end-of-text token)."""
    full = ([prefix] if prefix is not None else []) + list(ids)
    return [(full[max(0, b - 1 - T):a], full[a:b]) for a in range(1, len(full), T) for b in [min(a + T, len(full))]]


def val_perplexity(model, data_dir, split="val", **kw):
    """Perplexity over a whole split in non-overlapping block_size windows, as the paper's OWT number.
    Token-weighted: equal to the paper's mean of per-window losses when the last window is full too."""
    data = np.asarray(load_tokens(data_dir, split), dtype=np.int64)
    if len(data) < 2:
        raise SystemExit(f"error: {data_dir}/{split}.bin holds {len(data)} token(s): perplexity needs at least 2; "
                         "prepare more data")
    T = model.config.block_size
    reqs = [(data[a - 1:a].tolist(), data[a:a + T].tolist()) for a in range(1, len(data), T)]
    nll = -sum(ll for ll, _ in loglikelihoods(model, reqs, desc=f"{split} perplexity", **kw)) / (len(data) - 1)
    return {"loss": nll, "ppl": math.exp(nll), "tokens": len(data) - 1}

# -----------------------------------------------------------------------------
# the seven zero-shot tasks (tasks.py), scored as lm-eval's default zero-shot settings


def check_scorable(task, row, pairs, strings):
    """Stop, naming the row, if a (context, continuation) string pair encoded to no context or no continuation
    tokens: there would be nothing to condition on or nothing to score."""
    for (ctx, cont), (context, continuation) in zip(pairs, strings):
        if not ctx or not cont:
            part, text = ("context", context) if not ctx else ("continuation", continuation)
            raise SystemExit(f"error: {task} row {row}: the {part} {text!r} encodes to no tokens with this "
                             "checkpoint's tokenizer, so it cannot be scored: fix or drop the row")


def run_task(model, task, docs, encode, prefix, **kw):
    """Score one task's rows. Multiple choice: acc (argmax of summed log-likelihoods) and acc_norm (divided
    by the answer's length in characters); LAMBADA: perplexity and greedy accuracy of the last word;
    WikiText: word and byte perplexity of whole pages."""
    T, reqs, spans = model.config.block_size, [], []
    for i, doc in enumerate(docs, 1):
        try:
            if task == "lambada_openai":
                context, _, word = doc["text"].rpartition(" ")
                strings, extra = [(context, " " + word)], None
                pairs = [encode_pair(encode, *strings[0], prefix)]
            elif task == "wikitext":
                pairs = rolling_requests(encode(wikitext_detokenize(doc["page"])), prefix, T)
                extra = (len(re.split(r"\s+", doc["page"])), len(doc["page"].encode("utf-8")))
            else:
                strings, gold, answers = multiple_choice(task, doc)
                pairs = [encode_pair(encode, c, t, prefix) for c, t in strings]
                extra = (gold, [len(a) for a in answers])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            if "vocabulary" in str(e):  # raised by the words and chars encoders of prepare.get_tokenizer
                raise SystemExit(f"error: {task}: {e}; this checkpoint's tokenizer cannot read the task: "
                                 f"evaluate a checkpoint trained with the gpt2 tokenizer (e.g. on openwebtext)")
            raise SystemExit(f"error: {task} row {i} is malformed ({type(e).__name__}: {e}): rows must look like "
                             f"{TASKS[task][0]}'s")
        if task != "wikitext":  # rolling windows are never empty
            check_scorable(task, i, pairs, strings)
        spans.append((len(reqs), len(pairs), extra))
        reqs += pairs
    scores = loglikelihoods(model, reqs, desc=task, **kw)
    lls = np.array([ll for ll, _ in scores])
    if task == "lambada_openai":
        return {"ppl": math.exp(-lls.mean()), "acc": float(np.mean([g for _, g in scores])), "n": len(docs)}
    if task == "wikitext":
        total, words, nbytes = lls.sum(), sum(s[2][0] for s in spans), sum(s[2][1] for s in spans)
        return {"word_perplexity": math.exp(-total / words), "byte_perplexity": math.exp(-total / nbytes),
                "bits_per_byte": -total / nbytes / math.log(2), "n": len(docs)}
    acc = [np.argmax(lls[s:s + n]) == gold for s, n, (gold, _) in spans]
    acc_norm = [np.argmax(lls[s:s + n] / np.array(lens)) == gold for s, n, (gold, lens) in spans]
    return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)), "n": len(docs)}

# -----------------------------------------------------------------------------
# concept probes: multiple choice that only a model which inferred a story's planted concepts can pass


def concept_probes(model, data_dir, prefix_tokens=32, n_docs=0, seed=1337, **kw):
    """Accuracy of picking the true concept word in world.concept_probe_items' questions on data_dir's val
    split, overall and per factor, with the chance level."""
    meta = load_meta(data_dir)
    if "concepts" not in meta:
        raise SystemExit(f"error: {data_dir} has no planted concepts: concept_probes need the concept world "
                         "(python prepare.py), or drop concept_probes from --tasks")
    concepts, drivers = load_planted_concepts(data_dir, "val")
    items = concept_probe_items(load_tokens(data_dir, "val"), concepts, drivers, meta, prefix_tokens, n_docs, seed)
    if not items:
        raise SystemExit(f"error: no concept probes in {data_dir}: lower --probe_prefix={prefix_tokens}")
    reqs = [(it["context"], c) for it in items for c in it["continuations"]]
    lls = np.array([ll for ll, _ in loglikelihoods(model, reqs, desc="concept probes", **kw)])
    per_item = np.split(lls, np.cumsum([len(it["continuations"]) for it in items])[:-1])
    correct = [np.argmax(ll) == it["gold"] for ll, it in zip(per_item, items)]
    out = {"acc": float(np.mean(correct)), "chance": float(np.mean([1 / len(it["continuations"]) for it in items])),
           "n": len(items)}
    for f, factor in enumerate(meta["concept_factors"]):
        hits = [c for c, it in zip(correct, items) if it["factor"] == f]
        if hits:
            out[f"acc_{factor['name']}"] = float(np.mean(hits))
    return out

# -----------------------------------------------------------------------------
# one model, many tasks


def parse_tasks(spec, task_dir="", has_concepts=False):
    """[(task, local file or None)] from "val,piqa,winogrande=path.jsonl"; "paper" is val and the seven tasks."""
    if spec == "auto":
        spec = "val,concept_probes" if has_concepts else "val"
    out = []
    items = [i.strip() for i in spec.split(",")]
    for item in [t for i in items for t in (["val", *TASKS] if i == "paper" else [i])]:
        name, _, path = item.partition("=")
        if name not in TASKS and name not in ("val", "concept_probes"):
            raise SystemExit(f"error: unknown task {name!r}: use val, concept_probes, paper, {', '.join(TASKS)}, "
                             "or NAME=FILE.jsonl")
        if not path and task_dir and name in TASKS:
            path = os.path.join(task_dir, f"{name}.jsonl")
        if name not in (t for t, _ in out):
            out.append((name, path or None))
    return out


def check_same_tokenizer(meta, data_dir):
    """The meta of data_dir, if it is tokenized as the checkpoint's dataset (described by meta) was."""
    data_meta = load_meta(data_dir)
    if tokenizer_of(data_meta) != tokenizer_of(meta):
        raise SystemExit(f"error: {data_dir} is tokenized with {data_meta['tokenizer']} ({data_meta['vocab_size']} "
                         f"tokens) but the checkpoint learned {meta['dataset']} ({meta['tokenizer']}, "
                         f"{meta['vocab_size']} tokens): evaluate on a dataset with the checkpoint's tokenizer")
    return data_meta


def tokenizer_size(meta, enc=None):
    """The number of token ids the tokenizer can decode (enc: the offline tiktoken Encoding of the tests)."""
    return enc.n_vocab if enc is not None and meta["tokenizer"] == "gpt2" else meta["vocab_size"]


def evaluate(model, meta, task_list, data_dir=None, enc=None, limit=0, probe_prefix=32, seed=1337, **kw):
    """{task: {metric: value}} for one model. meta is the checkpoint's dataset meta (its tokenizer),
    data_dir the prepared dataset for val and concept_probes; enc an offline tiktoken Encoding for tests."""
    n = tokenizer_size(meta, enc)
    if n > model.config.vocab_size:  # a token the model has no output for
        raise SystemExit(f"error: the tokenizer has {n} tokens but the checkpoint's vocabulary only "
                         f"{model.config.vocab_size}: evaluate with the tokenizer the checkpoint was trained with")
    encode = get_tokenizer(meta, enc)[0] if any(t in TASKS for t, _ in task_list) else None
    results = {}
    for task, path in task_list:
        if task == "val":
            results[task] = val_perplexity(model, data_dir, **kw)
        elif task == "concept_probes":
            results[task] = concept_probes(model, data_dir, probe_prefix, limit, seed, **kw)
        else:
            results[task] = run_task(model, task, load_docs(task, path, limit), encode, meta.get("eot_token"), **kw)
        print(f"  {task}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[task].items()), flush=True)
    return results

# -----------------------------------------------------------------------------
# lm-evaluation-harness adapter (optional: lm_eval is imported only here)


def make_lm_eval_model(model, meta, enc=None, batch_size=16, autocast=nullcontext()):
    """Wrap a model as an lm_eval.api.model.LM, so lm_eval.simple_evaluate(model=..., tasks=[...]) can run
    any harness task on our checkpoints, with the same scoring as the native tasks."""
    try:
        from lm_eval.api.model import LM
    except ImportError:
        raise SystemExit("error: the lm-eval adapter needs lm-evaluation-harness: pip install lm_eval")
    encode, decode = get_tokenizer(meta, enc)
    prefix, kw = meta.get("eot_token"), dict(batch_size=batch_size, autocast=autocast)
    n_vocab = tokenizer_size(meta, enc)  # never generate the ids that pad the model's vocabulary

    class CocomixLM(LM):
        def loglikelihood(self, requests):
            return loglikelihoods(model, [encode_pair(encode, *r.args, prefix) for r in requests], **kw)

        def loglikelihood_rolling(self, requests):
            windows = [rolling_requests(encode(r.args[0]), prefix, model.config.block_size) for r in requests]
            lls = iter(loglikelihoods(model, [w for ws in windows for w in ws], **kw))
            return [sum(next(lls)[0] for _ in ws) for ws in windows]

        def generate_until(self, requests):
            outputs = []
            for context, gen_kwargs in (r.args for r in requests):
                until = gen_kwargs.get("until") or []
                until = [until] if isinstance(until, str) else until
                ids = encode(context) or [prefix]
                x = torch.tensor(ids, device=next(model.parameters()).device)[None, -model.config.block_size:]
                with autocast:  # greedy, as lm-eval's default for generation tasks
                    y = model.generate(x, gen_kwargs.get("max_gen_toks", 256), temperature=0, vocab_size=n_vocab)
                text = decode(y[0, x.size(1):].tolist())
                outputs.append(text[:min([text.index(s) for s in until if s in text] or [len(text)])])
            return outputs

    return CocomixLM()

# -----------------------------------------------------------------------------
# the command line: each run's checkpoint, its tasks, results.json


def evaluate_run(run, dev):
    """One results.json entry for a train.py out_dir, evaluated on device dev as the config keys say."""
    ptdtype, autocast = autocast_for(dev, dtype)
    precision = str(ptdtype).removeprefix("torch.")
    model, record = GPT.from_checkpoint(run, dev)
    model.eval()
    cfg, meta = record["config"], record["meta"]
    own_dir = os.path.join(cfg["data_root"], cfg["dataset"])
    data_dir = os.path.join(data_root or cfg["data_root"], dataset or cfg["dataset"])
    if os.path.realpath(data_dir) == os.path.realpath(own_dir):  # its own data: unchanged since it learned it
        check_trained_on(record, data_dir, run)
        data_meta = load_meta(data_dir)
    else:  # another dataset: read with the same tokenizer
        data_meta = check_same_tokenizer(meta, data_dir)
    method, params = "CoCoMix" if model.config.n_concepts else "NTP", model.get_num_params(activated=True)
    print(f"{run}: {method}, {params:,} activated parameters, iteration {record['iter_num']}, {precision} on {dev}")
    kw = dict(batch_size=batch_size, autocast=autocast)
    task_list = parse_tasks(tasks, task_dir, "concepts" in data_meta)
    res = evaluate(model, meta, task_list, data_dir, limit=limit, probe_prefix=probe_prefix, seed=seed, **kw)
    if harness:
        import lm_eval
        lm = make_lm_eval_model(model, meta, **kw)
        res["harness"] = lm_eval.simple_evaluate(model=lm, tasks=harness.split(","), limit=limit or None)["results"]
    return {"run": run, "method": method, "params": params, "iter": record["iter_num"],
            "dataset": data_meta["dataset"], "dtype": precision, "tasks": res}


def check_settings():
    """Refuse settings that cannot evaluate, before any checkpoint is read."""
    check(globals(), at_least=dict(limit=0, batch_size=1, probe_prefix=1))
    if os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"error: --out={out} is a file: give the directory to write results.json into")
    if harness and importlib.util.find_spec("lm_eval") is None:
        raise SystemExit("error: --harness needs lm-evaluation-harness: pip install lm_eval")
    autocast_for("cpu", dtype)  # an unknown dtype stops here


def main():
    run_dirs = [r for r in runs.split(",") if r]
    if not run_dirs:
        raise SystemExit("error: no runs to evaluate: python eval.py RUN_DIR [RUN_DIR ...] [--tasks=...] "
                         "(--help lists the keys)")
    check_settings()
    dev = resolve_device(device)
    results = {}
    for run in run_dirs:
        name = os.path.basename(os.path.normpath(run))
        results[os.path.normpath(run) if name in results else name] = evaluate_run(run, dev)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "results.json")
    write_json(results, path, default=str)  # whole: a kill leaves the old results.json, not half a new one
    print(f"wrote {path}")
    print(f"Table 1 and its plots: python compare.py {path}")


if __name__ == "__main__":
    configure(globals(), positional="runs")
    try:
        main()
    except ValueError as e:  # a checkpoint or dataset it cannot evaluate
        raise SystemExit(f"error: {e}")
