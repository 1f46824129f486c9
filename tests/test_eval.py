import json
import math
import os
import string
import sys
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest
import tiktoken
import torch
import torch.nn.functional as F

import compare
import eval as E
from conftest import run_script
from model import GPT, GPTConfig
from prepare import get_tokenizer, load_planted_concepts, load_tokens, prepare_concepts
from tasks import TASKS, load_docs, multiple_choice, wikitext_detokenize
from world import concept_probe_items

# GPT-2's pre-tokenizer over single bytes: offline, and a string's tokens are simply its UTF-8 bytes
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TINY_ENC = tiktoken.Encoding(name="tiny", pat_str=GPT2_SPLIT,
                             mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={"<|endoftext|>": 256})
EOT = 256
GPT2_META = {"dataset": "tiny", "tokenizer": "gpt2", "vocab_size": 257, "eot_token": EOT}
T = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_gpt(n_concepts=0, vocab_size=320, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=T, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32,
                          n_concepts=n_concepts, k_concepts=4, insert_layer=1)).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 1.0)  # far from uniform, so answers do not tie
    return model


def tokens(text):
    return list(text.encode("utf-8"))


@torch.no_grad()
def hand_loglikelihood(model, context, continuation):
    """log p(continuation | context), one sequence at a time, the input cut from the left to block_size."""
    seq = (context + continuation)[-(model.config.block_size + 1):]
    logp = F.log_softmax(model(torch.tensor([seq[:-1]]))[0][0].float(), dim=-1)
    n = len(continuation)
    return sum(logp[len(seq) - 1 - n + k, tok].item() for k, tok in enumerate(continuation))


# rows in the hub's format, with the (context, continuation) strings lm-eval builds from them, the gold
# answer, and the answers whose lengths acc_norm divides by
ROWS = {
    "piqa": [
        ({"goal": "How do you open a jar?", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0},
         [("Question: How do you open a jar?\nAnswer:", " Twist the lid."),
          ("Question: How do you open a jar?\nAnswer:", " Eat the lid.")], 0, ["Twist the lid.", "Eat the lid."]),
        ({"goal": "Dry your hair after a long swim", "sol1": "Use a towel.", "sol2": "Use a big spoon.", "label": 1},
         [("Question: Dry your hair after a long swim\nAnswer:", " Use a towel."),
          ("Question: Dry your hair after a long swim\nAnswer:", " Use a big spoon.")], 1,
         ["Use a towel.", "Use a big spoon."]),
    ],
    "social_iqa": [
        ({"context": "Tracy gave Ash a gift.", "question": "How would Ash feel?", "answerA": "grateful",
          "answerB": "angry", "answerC": "bored", "label": "1"},
         [("Q: Tracy gave Ash a gift. How would Ash feel?\nA:", " grateful"),
          ("Q: Tracy gave Ash a gift. How would Ash feel?\nA:", " angry"),
          ("Q: Tracy gave Ash a gift. How would Ash feel?\nA:", " bored")], 0, ["grateful", "angry", "bored"]),
        ({"context": "Jo lost.", "question": "What next?", "answerA": "cry", "answerB": "sleep", "answerC": "win",
          "label": "3"},
         [("Q: Jo lost. What next?\nA:", " cry"), ("Q: Jo lost. What next?\nA:", " sleep"),
          ("Q: Jo lost. What next?\nA:", " win")], 2, ["cry", "sleep", "win"]),
    ],
    "arc_easy": [
        ({"id": "a", "question": "Which is a liquid?", "answerKey": "A",
          "choices": {"text": ["water", "rock", "wood"], "label": ["A", "B", "C"]}},
         [("Question: Which is a liquid?\nAnswer:", " water"), ("Question: Which is a liquid?\nAnswer:", " rock"),
          ("Question: Which is a liquid?\nAnswer:", " wood")], 0, ["water", "rock", "wood"]),
        ({"id": "b", "question": "Hot?", "answerKey": "2",
          "choices": {"text": ["ice", "fire", "snow", "rain"], "label": ["1", "2", "3", "4"]}},
         [("Question: Hot?\nAnswer:", " ice"), ("Question: Hot?\nAnswer:", " fire"),
          ("Question: Hot?\nAnswer:", " snow"), ("Question: Hot?\nAnswer:", " rain")], 1,
         ["ice", "fire", "snow", "rain"]),
    ],
    "hellaswag": [  # " [title]" ends a sentence, other [tags] go, ctx_b is capitalized
        ({"activity_label": "Baking", "ctx_a": "How to bake bread [title] Mix the flour.", "ctx_b": "then",
          "endings": ["knead the dough [step] well.", "eat the oven."], "label": "0"},
         [("Baking: How to bake bread. Mix the flour. Then", " knead the dough well."),
          ("Baking: How to bake bread. Mix the flour. Then", " eat the oven.")], 0,
         ["knead the dough well.", "eat the oven."]),
        ({"activity_label": "Running", "ctx_a": "A man runs.", "ctx_b": "he", "endings": ["stops.", "flies away."],
          "label": "1"},
         [("Running: A man runs. He", " stops."), ("Running: A man runs. He", " flies away.")], 1,
         ["stops.", "flies away."]),
    ],
    "winogrande": [  # partial evaluation: the options fill the blank, the rest of the sentence is scored
        ({"sentence": "The cup fell off the table because _ was slippery.", "option1": "the cup",
          "option2": "the table", "answer": "2"},
         [("The cup fell off the table because the cup", " was slippery."),
          ("The cup fell off the table because the table", " was slippery.")], 1,
         ["The cup fell off the table because the cup", "The cup fell off the table because the table"]),
        ({"sentence": "Ann helped Bo since _ was kind.", "option1": "Ann", "option2": "Bo", "answer": "1"},
         [("Ann helped Bo since Ann", " was kind."), ("Ann helped Bo since Bo", " was kind.")], 0,
         ["Ann helped Bo since Ann", "Ann helped Bo since Bo"]),
    ],
}
LAMBADA = [{"text": "the cat sat on the mat"}, {"text": "a dog ran far"}]
WIKI_PAGE = " = Rain = \n The rain @-@ soaked town ( in 1 @,@ 900 ) was quiet . It 's said that \" no one \" left . \n"
WIKI_DETOKENIZED = " = Rain =\nThe rain-soaked town (in 1,900) was quiet. It's said that \"no one\" left.\n"


def write_jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def write_task_dir(d):
    for task, rows in ROWS.items():
        write_jsonl(d / f"{task}.jsonl", [r[0] for r in rows])
    write_jsonl(d / "lambada_openai.jsonl", LAMBADA)
    write_jsonl(d / "wikitext.jsonl", [{"page": WIKI_PAGE}, {"page": " = B = \n"}])
    return str(d)


@pytest.mark.parametrize("task", list(ROWS))
def test_multiple_choice_prompts_are_lm_evals_zero_shot_prompts(task):
    for row, pairs, gold, answers in ROWS[task]:
        assert multiple_choice(task, row) == (pairs, gold, answers)


def test_wikitext_is_detokenized_but_words_are_counted_on_the_raw_page():
    assert wikitext_detokenize(WIKI_PAGE) == WIKI_DETOKENIZED


def test_loglikelihoods_in_padded_batches_equal_one_sequence_at_a_time_with_left_truncation():
    model = tiny_gpt()
    reqs = [(tokens("Question: a long question that is longer than the block\nAnswer:"), tokens(" yes")),
            (tokens("hi"), tokens(" there")), ([EOT], tokens("x")), (tokens("ab"), tokens(" a continuation"))]
    got = E.loglikelihoods(model, reqs, batch_size=3)
    for (ctx, cont), (ll, _) in zip(reqs, got):
        assert ll == pytest.approx(hand_loglikelihood(model, ctx, cont), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("n_concepts", [0, 16], ids=["ntp", "cocomix"])
def test_multiple_choice_acc_and_acc_norm_match_hand_computed_loglikelihoods(tmp_path, n_concepts):
    model = tiny_gpt(n_concepts)
    task_list = E.parse_tasks(",".join(ROWS), write_task_dir(tmp_path))
    results = E.evaluate(model, GPT2_META, task_list, enc=TINY_ENC, batch_size=4)
    for task, rows in ROWS.items():
        acc, acc_norm = [], []
        for _, pairs, gold, answers in rows:
            lls = np.array([hand_loglikelihood(model, tokens(c), tokens(t)) for c, t in pairs])
            assert len(set(np.round(lls, 3))) == len(lls)  # no ties: the argmax means something
            acc.append(np.argmax(lls) == gold)
            acc_norm.append(np.argmax(lls / np.array([len(a) for a in answers])) == gold)
        assert results[task]["acc"] == np.mean(acc) and results[task]["acc_norm"] == np.mean(acc_norm)
        assert results[task]["n"] == len(rows)


class Bigram(torch.nn.Module):
    """logits = table[previous token]: greedy decoding is known in advance."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table)
        self.config = SimpleNamespace(block_size=T, vocab_size=table.size(0))

    def forward(self, idx, targets=None, concept_labels=None):
        return self.table[idx], None, None


def test_lambada_scores_the_last_word_after_a_space_greedy_acc_and_perplexity(tmp_path):
    table = torch.randn(320, 320)
    for a, b in ("e ", " m", "ma", "at"):  # greedy decoding after "...the" writes " mat", not " far"
        table[ord(a), ord(b)] = 10.0
    model = Bigram(table)
    docs = load_docs("lambada_openai", write_jsonl(tmp_path / "l.jsonl", LAMBADA))
    res = E.run_task(model, "lambada_openai", docs, TINY_ENC.encode_ordinary, EOT)
    lls = [hand_loglikelihood(model, tokens("the cat sat on the"), tokens(" mat")),
           hand_loglikelihood(model, tokens("a dog ran"), tokens(" far"))]
    assert res["acc"] == 0.5
    assert res["ppl"] == pytest.approx(math.exp(-np.mean(lls)), rel=1e-6)


def test_wikitext_word_perplexity_rolls_windows_over_each_page(tmp_path):
    model = tiny_gpt()
    docs = load_docs("wikitext", write_jsonl(tmp_path / "w.jsonl", [{"page": WIKI_PAGE}, {"page": " = B = \n"}]))
    res = E.run_task(model, "wikitext", docs, TINY_ENC.encode_ordinary, EOT)
    total = 0.0
    for text in (WIKI_DETOKENIZED, " = B =\n"):
        full = [EOT] + tokens(text)
        for a in range(1, len(full), T):  # chunks of T tokens, each after as much of the page as fits
            b = min(a + T, len(full))
            total += hand_loglikelihood(model, full[max(0, b - 1 - T):a], full[a:b])
    words, nbytes = 29 + 5, len(WIKI_PAGE) + len(" = B = \n")  # whitespace-separated pieces of the raw pages
    assert len(WIKI_DETOKENIZED) + 1 > 2 * T  # three windows: the rolling really happens
    assert res["word_perplexity"] == pytest.approx(math.exp(-total / words), rel=1e-5)
    assert res["byte_perplexity"] == pytest.approx(math.exp(-total / nbytes), rel=1e-5)
    assert res["bits_per_byte"] == pytest.approx(-total / nbytes / math.log(2), rel=1e-5)


def test_val_perplexity_covers_the_whole_split_in_non_overlapping_windows(tiny_dataset):
    data_root, name = tiny_dataset
    model = tiny_gpt(vocab_size=64)
    res = E.val_perplexity(model, os.path.join(data_root, name), batch_size=16)
    data = np.fromfile(os.path.join(data_root, name, "val.bin"), dtype=np.uint16).astype(np.int64)
    nll = 0.0
    with torch.no_grad():
        for i in range(0, len(data) - 1, T):
            y = torch.from_numpy(data[i + 1:i + 1 + T])
            logits = model(torch.from_numpy(data[i:i + len(y)])[None])[0][0]
            nll += F.cross_entropy(logits, y, reduction="sum").item()
    assert res["tokens"] == len(data) - 1 == 3999
    assert res["loss"] == pytest.approx(nll / 3999, rel=1e-5) and res["ppl"] == pytest.approx(math.exp(res["loss"]))


class CopyModel(torch.nn.Module):
    """Prefers every word already in its context: a crude way of inferring a document's concepts."""

    def __init__(self, vocab_size):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(5.0))
        self.config = SimpleNamespace(block_size=64, vocab_size=vocab_size)

    def forward(self, idx, targets=None, concept_labels=None):
        return self.scale * F.one_hot(idx, self.config.vocab_size).cumsum(1).clamp(max=1).float(), None, None


def test_concept_probes_ask_the_val_split_and_a_model_that_reads_the_context_beats_chance(tmp_path):
    meta = prepare_concepts(str(tmp_path), n_docs=40, val_fraction=0.25)
    data_dir = str(tmp_path / "concepts")
    items = concept_probe_items(load_tokens(data_dir, "val"), *load_planted_concepts(data_dir, "val"), meta, seed=1)
    res = E.concept_probes(CopyModel(meta["vocab_size"]), data_dir, seed=1)
    assert res["n"] == len(items) > 20 and res["chance"] == pytest.approx(
        np.mean([1 / len(it["continuations"]) for it in items]))
    assert res["acc"] > res["chance"] + 0.3
    assert {f"acc_{f['name']}" for f in meta["concept_factors"]} <= set(res)
    write_chars_data(tmp_path / "data")
    with pytest.raises(SystemExit, match="has no planted concepts: concept_probes need the concept world"):
        E.concept_probes(CopyModel(meta["vocab_size"]), str(tmp_path / "data" / "chars"))


def write_chars_data(data_root):
    """A chars dataset whose characters cover the task files' text (no end-of-text token)."""
    itos = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    d = data_root / "chars"
    d.mkdir(parents=True)
    np.random.default_rng(0).integers(0, len(itos), 1000).astype(np.uint16).tofile(d / "val.bin")
    (d / "meta.json").write_text(json.dumps({"dataset": "chars", "tokenizer": "chars", "vocab_size": len(itos),
                                             "itos": itos, "eot_token": None}))
    return {"dataset": "chars", "tokenizer": "chars", "vocab_size": len(itos), "itos": itos, "eot_token": None}


def save_run(run_dir, model, data_root, dataset):
    """A train.py out_dir: ckpt.pt (with the dataset's meta, as train.py records it) and metrics.jsonl."""
    run_dir.mkdir()
    meta = json.loads((data_root / dataset / "meta.json").read_text())
    torch.save({"model": model.state_dict(), "model_args": asdict(model.config), "iter_num": 20, "meta": meta,
                "config": {"dataset": dataset, "data_root": str(data_root)}}, run_dir / "ckpt.pt")
    with open(run_dir / "metrics.jsonl", "w") as f:
        for it in (0, 10, 20):
            f.write(json.dumps({"iter": it, "tokens": it * 64, "val_loss": 4.0 - it / 10}) + "\n")
    return str(run_dir)


def test_eval_then_compare_puts_plain_and_cocomix_runs_in_table_1_with_the_numbers_of_evaluate(tmp_path):
    write_chars_data(tmp_path / "data")
    task_dir = write_task_dir(tmp_path)
    runs = [save_run(tmp_path / "ntp_s1", tiny_gpt(0, 128), tmp_path / "data", "chars"),
            save_run(tmp_path / "cocomix_s1", tiny_gpt(16, 128), tmp_path / "data", "chars")]
    out = tmp_path / "eval"
    p = run_script("eval.py", *runs, "--tasks=val,lambada_openai,wikitext,paper", f"--task_dir={task_dir}",
                   f"--out={out}", "--device=cpu")
    command = p.stdout.strip().splitlines()[-1]  # eval.py ends by naming the command that makes the table
    assert command.endswith(f"python compare.py {out / 'results.json'}")
    lines = run_script(*command.split("python ")[-1].split()).stdout.splitlines()
    head = ("| Run | Method | Params | Val PPL (chars) | LAMB | Wiki | HellaS | PIQA | SIQA | ARC-E | WinoG | "
            "Avg PPL | Avg Acc |")
    i = lines.index(head)
    assert lines[i + 2].startswith("| ntp_s1 | NTP | ") and lines[i + 3].startswith("| cocomix_s1 | CoCoMix | ")
    assert (out / "table.md").read_text().splitlines() == lines[i:i + 4]
    results = json.load(open(out / "results.json"))
    for run in runs:  # the same numbers as evaluating in-process, the same way for both kinds of checkpoint
        model, record = GPT.from_checkpoint(run)
        task_list = E.parse_tasks("val,piqa,wikitext", task_dir)
        expect = E.evaluate(model.eval(), record["meta"], task_list, str(tmp_path / "data" / "chars"))
        got = results[os.path.basename(run)]["tasks"]
        assert got["val"]["ppl"] == pytest.approx(expect["val"]["ppl"], rel=1e-5)
        assert got["wikitext"]["word_perplexity"] == pytest.approx(expect["wikitext"]["word_perplexity"], rel=1e-5)
        assert got["piqa"] == expect["piqa"]
        row = next(line for line in lines if line.startswith(f"| {os.path.basename(run)} |")).split(" | ")
        ppl = [got["val"]["ppl"], got["lambada_openai"]["ppl"], got["wikitext"]["word_perplexity"]]
        assert row[-2] == compare.format_ppl(np.mean(ppl))  # Avg PPL: the mean of val, LAMBADA and Wiki
    for png in ("tasks.png", "curves.png"):
        assert open(out / png, "rb").read(4) == b"\x89PNG"


def test_a_run_without_a_checkpoint_stops_with_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    p = run_script("eval.py", str(tmp_path / "empty"), "--device=cpu", check=False)
    assert p.returncode != 0
    assert p.stdout.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'empty' / 'ckpt.pt'} not found")


def test_bad_task_files_and_mismatched_tokenizers_stop_with_one_line_errors(tmp_path):
    bad = write_jsonl(tmp_path / "piqa.jsonl", [{"goal": "g", "sol1": "a", "label": 0}])
    with pytest.raises(SystemExit, match="row 1 lacks sol2: piqa rows need the fields goal, sol1, sol2, label"):
        load_docs("piqa", bad)
    (tmp_path / "broken.jsonl").write_text('{"goal": "g",\n')
    with pytest.raises(SystemExit, match="line 1 is not JSON"):
        load_docs("piqa", str(tmp_path / "broken.jsonl"))
    with pytest.raises(SystemExit, match="arc_easy row 1 is malformed"):
        E.run_task(tiny_gpt(), "arc_easy", [{"question": "q", "choices": {"text": ["a"], "label": ["A"]},
                                             "answerKey": "Z"}], TINY_ENC.encode_ordinary, EOT)
    with pytest.raises(SystemExit, match="unknown task 'piqa2'"):
        E.parse_tasks("val,piqa2")
    words_meta = {"dataset": "concepts", "tokenizer": "words", "vocab_size": 3, "itos": ["the", ".", "<|endoftext|>"],
                  "eot_token": 2}
    with pytest.raises(SystemExit, match="tokenizer cannot read the task"):
        E.evaluate(tiny_gpt(), words_meta, [("piqa", write_jsonl(tmp_path / "p.jsonl", [ROWS["piqa"][0][0]]))])
    with pytest.raises(SystemExit, match="the tokenizer has 257 tokens but the checkpoint's vocabulary only 128"):
        E.evaluate(tiny_gpt(vocab_size=128), GPT2_META, [], enc=TINY_ENC)
    chars_meta = write_chars_data(tmp_path / "data")
    with pytest.raises(SystemExit, match="tokenized with chars .* but the checkpoint learned tiny"):
        E.check_same_tokenizer(GPT2_META, str(tmp_path / "data" / "chars"))
    assert E.check_same_tokenizer(chars_meta, str(tmp_path / "data" / "chars")) == chars_meta


def test_tasks_load_from_the_hub_datasets_lm_eval_uses(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return [ROWS["piqa"][0][0]]
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    load_docs("piqa")
    assert calls == [("baber/piqa", None, "validation")]
    assert TASKS["lambada_openai"][:3] == ("EleutherAI/lambada_openai", "default", "test")
    assert TASKS["wikitext"][:3] == ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test")
    assert TASKS["winogrande"][:3] == ("allenai/winogrande", "winogrande_xl", "validation")

    def offline(*args, **kw):
        raise ConnectionError("offline")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SystemExit, match="pass --task_dir=DIR with hellaswag.jsonl"):
        load_docs("hellaswag")


def test_lm_eval_harness_through_the_adapter_agrees_with_the_native_tasks(tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "tasks").mkdir()
    task_dir = write_task_dir(tmp_path / "tasks")
    stock = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    configs = {"lambada_openai": "lambada/lambada_openai.yaml", "wikitext": "wikitext/wikitext.yaml",
               "hellaswag": "hellaswag/hellaswag.yaml", "piqa": "piqa/piqa.yaml", "social_iqa": "siqa/siqa.yaml",
               "arc_easy": "arc/arc_easy.yaml", "winogrande": "winogrande/default.yaml"}
    for task, path in configs.items():  # lm-eval's own task configs, reading our local rows
        split = TASKS[task][2]
        splits = "".join(f"{s}_split: {s if s == split else 'null'}\n" for s in ("training", "validation", "test"))
        (tmp_path / f"local_{task}.yaml").write_text(
            f"include: {os.path.join(stock, path)}\ntask: local_{task}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {task_dir}/{task}.jsonl\n" + splits)
    model = tiny_gpt()
    lm = E.make_lm_eval_model(model, GPT2_META, enc=TINY_ENC)
    harness = lm_eval.simple_evaluate(model=lm, tasks=[f"local_{t}" for t in configs],
                                      task_manager=TaskManager(include_path=str(tmp_path)))["results"]
    native = E.evaluate(model, GPT2_META, E.parse_tasks(",".join(configs), task_dir), enc=TINY_ENC)
    reported = {"lambada_openai": ["perplexity", "acc"], "wikitext": ["word_perplexity", "byte_perplexity",
                "bits_per_byte"], "hellaswag": ["acc", "acc_norm"], "piqa": ["acc", "acc_norm"],
                "social_iqa": ["acc"], "arc_easy": ["acc", "acc_norm"], "winogrande": ["acc"]}
    for task, metrics in reported.items():
        for m in metrics:
            ours = native[task]["ppl" if m == "perplexity" else m]
            assert harness[f"local_{task}"][f"{m},none"] == pytest.approx(ours, rel=1e-6), (task, m)
    out = lm.generate_until([Instance("generate_until", {}, ("ab", {"until": ["\n"], "max_gen_toks": 4}), 0)])
    assert isinstance(out[0], str) and "\n" not in out[0]


def test_the_adapter_generates_greedily_and_never_decodes_the_ids_that_pad_the_vocabulary(monkeypatch):
    for name in ("lm_eval", "lm_eval.api", "lm_eval.api.model"):  # the adapter needs only lm_eval's LM base class
        monkeypatch.setitem(sys.modules, name, SimpleNamespace(LM=object))
    model = tiny_gpt(vocab_size=320)
    with torch.no_grad():  # every position's logits are W @ 1, and padded id 300 beats every real token
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[300] = 10.0
    x = torch.tensor([tokens("ab")])
    assert model.generate(x, 1, temperature=0)[0, -1] == 300  # what the adapter used to decode, and crash on
    lm = E.make_lm_eval_model(model, GPT2_META, enc=TINY_ENC)
    out = lm.generate_until([SimpleNamespace(args=("ab", {"until": ["\n"], "max_gen_toks": 4}))])
    best = model.lm_head.weight[:EOT + 1].sum(1).argmax().item()  # the best real token, every time
    assert out == [TINY_ENC.decode([best] * 4).split("\n")[0]]


def test_a_request_without_context_or_continuation_tokens_is_refused_by_name():
    with pytest.raises(ValueError, match="request 1 has no continuation token"):
        E.loglikelihoods(tiny_gpt(), [([1], [2]), ([1], [])])
    words = {"dataset": "w", "tokenizer": "words", "vocab_size": 2, "itos": ["the", "<|endoftext|>"], "eot_token": 1}
    row = {"sentence": "the _", "option1": "the", "option2": "the", "answer": "1"}  # nothing after the blank
    with pytest.raises(SystemExit, match=r"winogrande row 2: the continuation ' ' encodes to no tokens"):
        E.run_task(tiny_gpt(), "winogrande", [{**row, "sentence": "the _ the"}, row], get_tokenizer(words)[0], 1)
