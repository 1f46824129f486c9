"""
The seven zero-shot tasks that the paper evaluates on through lm-evaluation-harness (Table 1), as text: where each
task's rows come from (the hub, or a local JSON-lines file in the hub's row format) and how lm-eval's default
zero-shot settings turn a row into its (context, continuation) strings. No model and no tokenizer here: eval.py
encodes and scores the strings.
"""
import json
import os
import re

# lm-eval's zero-shot tasks: hub dataset, config, split, and the fields a row needs
TASKS = {
    "lambada_openai": ("EleutherAI/lambada_openai", "default", "test", ["text"]),
    "wikitext": ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test", ["page"]),
    "hellaswag": ("Rowan/hellaswag", None, "validation", ["activity_label", "ctx_a", "ctx_b", "endings", "label"]),
    "piqa": ("baber/piqa", None, "validation", ["goal", "sol1", "sol2", "label"]),
    "social_iqa": ("lighteval/siqa", None, "validation",
                   ["context", "question", "answerA", "answerB", "answerC", "label"]),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test", ["question", "choices", "answerKey"]),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation", ["sentence", "option1", "option2", "answer"]),
}


def load_docs(task, path=None, limit=0):
    """A task's rows: from a local JSON-lines file in the hub's row format, else from the hub."""
    hub, name, split, fields = TASKS[task]
    source = path or f"{hub} ({split})"
    if path:
        if not os.path.isfile(path):
            what = "is a directory, not a file" if os.path.isdir(path) else "not found"
            raise SystemExit(f"error: task file {path} {what}: give --task_dir=DIR holding {task}.jsonl")
        rows = []
        try:
            for i, line in enumerate(open(path, encoding="utf-8"), 1):
                rows += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError:
            raise SystemExit(f"error: {path} line {i} is not JSON: task files hold one JSON object per line")
        except UnicodeDecodeError:
            raise SystemExit(f"error: {path} is not UTF-8 text: task files hold one JSON object per line")
    else:
        from datasets import load_dataset
        try:
            rows = load_dataset(hub, name, split=split)
        except Exception as e:
            raise SystemExit(f"error: could not load {source} from the hub ({type(e).__name__}): check the "
                             f"network, or pass --task_dir=DIR with {task}.jsonl in the same row format")
    rows = [rows[i] for i in range(min(limit, len(rows)) if limit else len(rows))]
    for i, row in enumerate(rows, 1):
        missing = [k for k in fields if not isinstance(row, dict) or k not in row]
        if missing:
            raise SystemExit(f"error: {source} row {i} lacks {', '.join(missing)}: {task} rows need the fields "
                             f"{', '.join(fields)}, as in {hub}")
    return rows


def hellaswag_clean(text):
    """lm-eval's HellaSwag cleanup: WikiHow's " [title]" marks end a sentence, other [tags] go."""
    text = re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". "))
    return text.replace("  ", " ")


def wikitext_detokenize(text):
    """Undo WikiText's tokenization (" @-@ " for "-", spaces inside brackets and around punctuation) as
    lm-eval does before scoring; the word and byte counts stay those of the raw page."""
    punctuation = [(f" {p} ", f"{p} ") for p in ":;.!?,"]
    for a, b in [("s '", "s'"), (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), *punctuation]:
        text = text.replace(a, b)
    for o, c in ("()", "[]", "{}", '""', "''"):
        text = re.sub(rf"{re.escape(o)}\s*([^{re.escape(c)}]*?)\s*{re.escape(c)}", lambda m: o + m[1] + c, text)
    for a, b in [("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
                 (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")]:
        text = text.replace(a, b)
    return text


def multiple_choice(task, doc):
    """(one (context, continuation) string pair per answer, gold index, the answers for acc_norm's lengths)."""
    if task == "winogrande":  # partial evaluation: each option fills the blank; score the same rest of the sentence
        i = doc["sentence"].index("_")
        contexts = [doc["sentence"][:i] + doc[o] for o in ("option1", "option2")]
        return [(c, " " + doc["sentence"][i + 1:].strip()) for c in contexts], {"1": 0, "2": 1}[doc["answer"]], contexts
    if task == "hellaswag":
        context = hellaswag_clean(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
        answers, gold = [hellaswag_clean(e) for e in doc["endings"]], int(doc["label"])
    elif task == "piqa":
        context, answers, gold = f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"])
    elif task == "social_iqa":
        context, gold = f"Q: {doc['context']} {doc['question']}\nA:", int(doc["label"]) - 1
        answers = [doc["answerA"], doc["answerB"], doc["answerC"]]
    else:  # arc_easy
        context, answers = f"Question: {doc['question']}\nAnswer:", doc["choices"]["text"]
        gold = doc["choices"]["label"].index(doc["answerKey"])
    return [(context, " " + a) for a in answers], gold, answers
