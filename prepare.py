"""
Prepare a token dataset for cocomix: data/<name>/train.bin, val.bin (flat np.uint16
token ids) and meta.json (tokenizer, vocab, sizes). Usable as a script and a module.

  python prepare.py                             synthetic concept world (default, offline)
  python prepare.py --input a.txt [b.txt ...]   local text files (--tokenizer chars|gpt2)
  python prepare.py --dataset shakespeare       tiny shakespeare, downloaded once
  python prepare.py --dataset openwebtext       OpenWebText + GPT-2 BPE, as in the paper

The concept world is English-like text whose words are driven by latent per-document
factors (topic, setting, hero, trait, mood). Besides the tokens it saves the true
factor values of every token's document (train_concepts.bin, uint8, shape
(n_tokens, n_factors)) and which factor generated each word (train_drivers.bin,
uint8, 255 = neutral word), so later stages can check what a model's concepts recover.

Local files: chars concatenates the files as they are (no end-of-text token, like
nanoGPT's shakespeare_char); gpt2 appends <|endoftext|> after every file. The last
--val_fraction of the token stream is the val split.

OpenWebText: the hub repo Skylion007/openwebtext is a loading script on its main
branch, which datasets>=4 refuses to run. The Hub's automatic parquet conversion of
the same repo (revision refs/convert/parquet) holds the same documents as plain
parquet and loads with current versions, so that is what we read.
"""
import argparse
import contextlib
import json
import os
import re
import time

import numpy as np

EOT = "<|endoftext|>"
OWT_REPO, OWT_REVISION = "Skylion007/openwebtext", "refs/convert/parquet"
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"

# ----------------------------------------------------------------------------------
# the synthetic concept world. Each factor value owns a few words per slot kind
# ("nouns | verbs | adjectives"); a word belongs to exactly one factor value.

FACTORS = [  # (factor, slot names, {value: words for each slot, "|"-separated})
    ("topic", "N1 V A", {  # singular nouns | past-tense verbs | adjectives (plurals are derived)
        "sea": "ship wave sailor anchor harbor gull | sailed steered rowed hauled | salty tidal blue",
        "war": "soldier sword battle army shield fort | fought attacked defended besieged | bloody armored wounded",
        "farm": "cow field barn plow farmer horse | planted plowed harvested fed | muddy green ripe",
        "city": "street tower bridge crowd lamp wall | built crossed paved guarded | busy noisy tall",
        "forest": "tree fox path branch owl mushroom | climbed hunted gathered followed | wild mossy shady",
        "church": "priest bell candle prayer altar monk | blessed lit rang carried | holy sacred golden",
        "market": "coin apple basket stall trader cloth | sold bought traded weighed | cheap fresh costly",
        "school": "book teacher lesson pupil desk letter | read wrote learned taught | strict dusty neat"}),
    ("setting", "SN SV SA", {  # nouns | verbs | adjectives
        "night": "moon star shadow | shone faded | dark silent late",
        "winter": "snow frost ice | fell drifted | cold frozen white",
        "storm": "rain thunder wind | roared howled | wet grey stormy",
        "summer": "sun heat flower | burned blazed | warm bright dry",
        "dawn": "morning mist light | rose glimmered | pale early misty"}),
    ("hero", "NAME PRON POSS OBJ PERSON", {  # the name recurs; pronouns agree with it
        **{n: n + " | she | her | her | woman girl" for n in ("anna", "mara", "lena", "ella")},
        **{n: n + " | he | his | him | man boy" for n in ("tom", "ben", "hugo", "otto")}}),
    ("trait", "TA TADV TN", {  # adjectives | adverbs | nouns
        "brave": "brave bold fearless | bravely boldly | courage",
        "greedy": "greedy selfish grasping | greedily hungrily | greed",
        "kind": "kind gentle generous | gently kindly | kindness",
        "cruel": "cruel harsh wicked | cruelly harshly | malice",
        "clever": "clever wise cunning | cleverly wisely | wit",
        "foolish": "foolish silly careless | foolishly carelessly | folly"}),
    ("mood", "MA MV MN", {  # adjectives | verbs | nouns
        "joy": "glad happy cheerful | laughed smiled | joy delight",
        "fear": "afraid nervous uneasy | trembled shivered | fear dread",
        "sorrow": "sad gloomy lonely | wept sighed | sorrow grief",
        "anger": "angry furious bitter | shouted cursed | anger rage"}),
]
NEUTRAL = {"ADJ": "old small strange little", "STRANGER": "stranger friend neighbor visitor"}

# sentence templates: {SLOT} is filled from the document's factor values (or NEUTRAL).
# {N} {BE} {DET} agree in number: such a template becomes a singular and a plural one.
INTRO = [
    "once upon a time there was a {TA} {PERSON} named {NAME} .",
    "this is the story of {NAME} , a {TA} {PERSON} who lived near the {N1} .",
    "long ago , in the time of the {SN} , there lived a {PERSON} named {NAME} .",
    "{NAME} was a {TA} {PERSON} , and {POSS} days were full of {MN} .",
]
BODY = [
    "{NAME} {V} the {N} .",
    "the {N} {BE} {A} and {SA} .",
    "{PRON} {V} the {N} {TADV} .",
    "under the {SA} {SN} , {NAME} {V} {DET} {A} {N} .",
    "the {SN} {SV} over the {N} .",
    "{NAME} felt {MA} , and {PRON} {MV} .",
    "{POSS} {TN} was known to all the people .",
    "there {BE} {DET} {ADJ} {N} near the {N1} .",
    "{NAME} looked at the {N} and {MV} .",
    "the people said that {NAME} was {TA} .",
    "{PRON} was {MA} because the {N} {BE} {A} .",
    "{MN} filled {POSS} heart as the {SN} {SV} .",
    "{NAME} {V} the {N} , and the {SN} {SV} .",
    "with great {TN} , {PRON} {V} the {N} .",
    "{PRON} saw {DET} {A} {N} under the {SN} .",
    "then {PRON} {V} the {N} {TADV} , and {PRON} {MV} .",
    "the {N} {BE} {A} , but {NAME} was {MA} .",
    "it was a {SA} day , and the {N} {BE} {A} .",
    "{NAME} {TADV} {V} the {A} {N} under the {SN} .",
    "all day long {NAME} {V} the {N} .",
    "{PRON} never forgot the {A} {N} .",
    "how {A} the {N} {BE} , said {NAME} .",
    "{NAME} was {TA} , so {PRON} {V} the {N} {TADV} .",
    "the {TA} {PERSON} {V} {POSS} {N} .",
    "{POSS} {N} {BE} {A} .",
    "a {ADJ} {STRANGER} came to see {OBJ} , and {NAME} {MV} .",
    "and so the days went on .",
    "after that , nothing was the same .",
]
END = [
    "and that is the end of the story of {NAME} . " + EOT,
    "{NAME} was {MA} until the end of {POSS} days . " + EOT,
    "and the {SN} {SV} over the {N1} for ever . " + EOT,
]
NUMBER = {"sg": {"{N}": "{N1}", "{BE}": "was", "{DET}": "a"}, "pl": {"{N}": "{NPL}", "{BE}": "were", "{DET}": "some"}}


def plural(noun):
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def build_concept_world():
    """Compile the word lists and templates into the lookup tables the generator uses."""
    slots = {}  # slot -> (factor index or -1 for neutral, word list per factor value)
    for f, (_, slot_names, table) in enumerate(FACTORS):
        for i, slot in enumerate(slot_names.split()):
            slots[slot] = (f, [spec.split("|")[i].split() for spec in table.values()])
    slots["NPL"] = (0, [[plural(n) for n in nouns] for nouns in slots["N1"][1]])
    slots.update({slot: (-1, [words.split()]) for slot, words in NEUTRAL.items()})
    groups = [[t.split() for t in INTRO], [], [t.split() for t in END]]
    for t in BODY:  # only body templates use number agreement
        groups[1] += [[n[w] if w in n else w for w in t.split()] for n in NUMBER.values()] if "{N}" in t else [t.split()]
    # a word belongs to one factor (values of a factor may share one: she, her) and is never a template word
    factor_of = {}
    for f, pools in slots.values():
        for w in (w for pool in pools for w in pool):
            assert factor_of.setdefault(w, f) == f, f"word {w!r} belongs to two factors"
    literals = {w for g in groups for t in g for w in t if w[0] != "{"} | {"an"}
    assert not literals & set(factor_of), f"template words {literals & set(factor_of)} are also slot words"
    itos = sorted((literals | set(factor_of)) - {EOT}) + [EOT]  # <|endoftext|> is the last id
    stoi = {w: i for i, w in enumerate(itos)}
    # slot s filled for factor value v draws from pool_flat[pool_start[s, v]:][:pool_size[s, v]]
    names = list(slots)
    pool_start, pool_size, pool_flat = np.zeros((len(names), 8), np.int64), np.ones((len(names), 8), np.int64), []
    for s, name in enumerate(names):
        for v, pool in enumerate(slots[name][1]):
            pool_start[s, v], pool_size[s, v] = len(pool_flat), len(pool)
            pool_flat += [stoi[w] for w in pool]
    # templates as one flat code array: a code >= len(itos) means slot number code - len(itos)
    templates = [[len(itos) + names.index(w[1:-1]) if w[0] == "{" else stoi[w] for w in t] for g in groups for t in g]
    concept_words = [[list(dict.fromkeys(w for f2, pools in slots.values() if f2 == f for w in pools[v]))
                      for v in range(len(table))] for f, (_, _, table) in enumerate(FACTORS)]
    return dict(factors=[(name, list(table)) for name, _, table in FACTORS], concept_words=concept_words, itos=itos,
                slot_factor=np.array([slots[s][0] for s in names]), pool_start=pool_start, pool_size=pool_size,
                pool_flat=np.array(pool_flat), group_sizes=np.array([len(g) for g in groups]), templates=templates)


def make_concept_world(n_docs=8000, seed=1337):
    """Generate n_docs documents. Returns the world tables plus, per token: tokens, concepts
    (n, n_factors) factor values of its document, drivers (factor of the word or 255), doc index;
    and values (n_docs, n_factors)."""
    w = build_concept_world()
    rng = np.random.default_rng(seed)
    V = len(w["itos"])
    values = np.stack([rng.integers(0, len(vals), n_docs) for _, vals in w["factors"]], 1).astype(np.uint8)
    # sentences: an intro, 8-34 body sentences, an ending that closes with <|endoftext|>
    n_sent = rng.integers(8, 35, n_docs) + 2
    sent_doc = np.repeat(np.arange(n_docs), n_sent)
    pos = np.arange(len(sent_doc)) - np.repeat(np.cumsum(n_sent) - n_sent, n_sent)
    group = np.where(pos == 0, 0, np.where(pos == n_sent[sent_doc] - 1, 2, 1))
    group_start = np.cumsum(w["group_sizes"]) - w["group_sizes"]
    tpl = group_start[group] + (rng.random(len(group)) * w["group_sizes"][group]).astype(np.int64)
    # expand the sentences into token positions holding template codes
    tpl_len = np.array([len(t) for t in w["templates"]])
    lens = tpl_len[tpl]
    offset = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    code = np.concatenate(w["templates"])[np.repeat((np.cumsum(tpl_len) - tpl_len)[tpl], lens) + offset]
    doc = np.repeat(sent_doc, lens)
    # fill each slot from the pool of its factor's value in this document
    is_slot = code >= V
    slot = np.where(is_slot, code - V, 0)
    factor = w["slot_factor"][slot]
    value = np.where(factor >= 0, values[doc, np.maximum(factor, 0)], 0)
    pick = (rng.random(len(code)) * w["pool_size"][slot, value]).astype(np.int64)
    tokens = np.where(is_slot, w["pool_flat"][w["pool_start"][slot, value] + pick], code)
    drivers = np.where(is_slot & (factor >= 0), factor, 255).astype(np.uint8)
    # local grammar: "a" becomes "an" before a vowel
    a, an = w["itos"].index("a"), w["itos"].index("an")
    vowel = np.array([t[0] in "aeiou" for t in w["itos"]])
    tokens[np.flatnonzero((tokens[:-1] == a) & vowel[tokens[1:]])] = an
    return dict(w, tokens=tokens.astype(np.uint16), concepts=values[doc], drivers=drivers, doc=doc, values=values)


def concept_entropies(tokens, concepts, drivers, vocab_size):
    """Unigram entropy H(W) and H(W | factors) in nats. Words of different factors are
    disjoint and slot kinds are chosen independently of the factors, so
    H(W|Z) = H(driver) + H(W | driver, value of that factor), estimated from counts."""
    ent = lambda c: float(-(c[c > 0] / c.sum() * np.log(c[c > 0] / c.sum())).sum())
    n_factors = concepts.shape[1]
    neutral = drivers == 255
    cat = np.where(neutral, n_factors, drivers).astype(np.int64)
    val = np.where(neutral, 0, concepts[np.arange(len(tokens)), np.minimum(cat, n_factors - 1)]).astype(np.int64)
    ctx = cat * 256 + val
    joint = np.bincount(ctx * vocab_size + tokens)
    keys = np.flatnonzero(joint)
    c = joint[keys]
    h_word = -(c * np.log(c / np.bincount(ctx)[keys // vocab_size])).sum() / len(tokens)
    return ent(np.bincount(tokens)), ent(np.bincount(cat)) + float(h_word)


def prepare_concepts(out_dir="data", n_docs=8000, seed=1337, val_fraction=0.05, name="concepts"):
    t0 = time.time()
    world = make_concept_world(n_docs, seed)
    n_val = max(1, round(n_docs * val_fraction))
    cut = int(np.searchsorted(world["doc"], n_docs - n_val))  # val = the last n_val documents
    itos = world["itos"]
    h_uni, h_cond = concept_entropies(world["tokens"][:cut], world["concepts"][:cut], world["drivers"][:cut], len(itos))
    factors, offsets = world["factors"], np.cumsum([0] + [len(v) for _, v in world["factors"]])
    concepts = [{"id": int(offsets[f] + v), "name": f"{fname}={val}", "factor": fname, "factor_index": f,
                 "value": val, "value_index": v, "words": world["concept_words"][f][v]}
                for f, (fname, vals) in enumerate(factors) for v, val in enumerate(vals)]
    meta = {"dataset": name, "source": f"synthetic concept world (prepare.py, seed {seed})", "tokenizer": "words",
            "vocab_size": len(itos), "eot_token": len(itos) - 1, "train_tokens": cut, "val_tokens": len(world["tokens"]) - cut,
            "train_docs": n_docs - n_val, "val_docs": n_val, "seed": seed, "dtype": "uint16",
            "concept_factors": [{"name": n, "values": vals, "offset": int(o)} for (n, vals), o in zip(factors, offsets)],
            "n_concepts": len(concepts), "concepts": concepts, "neutral_driver": 255,
            "unigram_entropy": round(h_uni, 4), "conditional_entropy_given_concepts": round(h_cond, 4),
            "entropy_note": "nats per token, bag of words: H(W) vs H(W | true factor values of the document)",
            "itos": itos}
    with staged_dir(os.path.join(out_dir, name)) as tmp:
        for split, sl in (("train", slice(0, cut)), ("val", slice(cut, None))):
            world["tokens"][sl].tofile(tmp(f"{split}.bin"))
            world["concepts"][sl].tofile(tmp(f"{split}_concepts.bin"))
            world["drivers"][sl].tofile(tmp(f"{split}_drivers.bin"))
        write_meta(tmp, meta)
    print(f"concept world: {n_docs} docs, {len(world['tokens']):,} tokens, vocab {len(itos)}, {time.time() - t0:.1f}s")
    print(f"unigram entropy {h_uni:.3f} nats, entropy given the true concepts {h_cond:.3f} nats")
    return meta

# ----------------------------------------------------------------------------------
# writing files atomically, reading them back


@contextlib.contextmanager
def staged_dir(data_dir):
    """Yield tmp(name) -> a temporary path inside data_dir. If the block succeeds every
    staged file is moved into place (in staging order, so stage meta.json last); if it
    fails the temp files go, and so do the directories this call created."""
    created, d = [], os.path.abspath(data_dir)
    while not os.path.isdir(d):
        created.append(d)
        d = os.path.dirname(d)
    os.makedirs(data_dir, exist_ok=True)
    staged = []

    def tmp(name):
        staged.append((os.path.join(data_dir, f".{name}.{os.getpid()}.tmp"), os.path.join(data_dir, name)))
        return staged[-1][0]
    try:
        yield tmp
    except BaseException:
        for path, _ in staged:
            if os.path.exists(path):
                os.remove(path)
        for d in created:  # deepest first; stops at the first non-empty one
            try:
                os.rmdir(d)
            except OSError:
                break
        raise
    for path, final in staged:
        os.replace(path, final)


def write_meta(tmp, meta):
    with open(tmp("meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def load_meta(data_dir):
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        name = os.path.basename(os.path.normpath(data_dir))
        raise SystemExit(f"error: {path} not found: run `python prepare.py --dataset {name}` first")
    with open(path) as f:
        return json.load(f)


def load_concept_labels(data_dir, split="train"):
    """Ground truth of the concept world: concepts (n_tokens, n_factors) and drivers (n_tokens,), as memmaps."""
    n_factors = len(load_meta(data_dir)["concept_factors"])
    concepts = np.memmap(os.path.join(data_dir, f"{split}_concepts.bin"), dtype=np.uint8, mode="r").reshape(-1, n_factors)
    return concepts, np.memmap(os.path.join(data_dir, f"{split}_drivers.bin"), dtype=np.uint8, mode="r")


def gpt2_encoding(enc=None):
    """enc if given (tests pass a small offline one), else tiktoken's GPT-2 BPE (downloaded on first use)."""
    if enc is None:
        import tiktoken
        enc = tiktoken.get_encoding("gpt2")
    return enc


def get_tokenizer(meta, enc=None):
    """(encode, decode) for a dataset's meta. enc: a tiktoken Encoding to use for gpt2 (default: the real one)."""
    if meta["tokenizer"] == "gpt2":
        enc = gpt2_encoding(enc)
        return enc.encode_ordinary, enc.decode
    itos, name = meta["itos"], meta["dataset"]
    stoi = {t: i for i, t in enumerate(itos)}
    if meta["tokenizer"] == "chars":
        def encode(text):
            for c in text:
                if c not in stoi:
                    raise ValueError(f"character {c!r} is not in the vocabulary of dataset {name!r}, "
                                     f"which has {len(itos)} characters: {''.join(itos)!r}")
            return [stoi[c] for c in text]
        return encode, lambda ids: "".join(itos[i] for i in ids)

    def encode(text):  # words: lowercase, punctuation marks are tokens of their own
        words = re.findall(re.escape(EOT) + r"|[\w']+|[^\w\s]", text.lower())
        for w in words:
            if w not in stoi:
                some = [t for t in itos if t.isalpha()][::25]
                raise ValueError(f"word {w!r} is not in the vocabulary of dataset {name!r}, which has {len(itos)} "
                                 f"lowercase words and punctuation marks such as {', '.join(some)}")
        return [stoi[w] for w in words]

    def decode(ids):  # words joined by spaces, punctuation attached, <|endoftext|> on a line of its own
        text = re.sub(" ?" + re.escape(EOT) + " ?", "\n" + EOT + "\n", " ".join(itos[i] for i in ids))
        return re.sub(r" ([^\w\s])", r"\1", text)
    return encode, decode

# ----------------------------------------------------------------------------------
# local text files and Hugging Face datasets


def prepare_text_files(paths, name, out_dir="data", tokenizer="chars", val_fraction=0.1, enc=None, source=None):
    texts = []
    for p in paths:
        if not os.path.isfile(p):
            raise SystemExit(f"error: input file {p} not found: check the path")
        with open(p, encoding="utf-8") as f:
            texts.append(f.read())
        if not texts[-1].strip():
            raise SystemExit(f"error: input file {p} is empty: give a file that contains text")
    if tokenizer == "chars":
        text = "".join(texts)
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        vocab = np.unique(codepoints)
        if len(vocab) > 65535:
            raise SystemExit(f"error: {len(vocab)} distinct characters do not fit uint16: use --tokenizer gpt2")
        ids, itos, eot, vocab_size = np.searchsorted(vocab, codepoints), [chr(c) for c in vocab], None, len(vocab)
    else:
        enc = gpt2_encoding(enc)
        ids = np.array([i for t in texts for i in enc.encode_ordinary(t) + [enc.eot_token]], dtype=np.int64)
        itos, eot, vocab_size = None, enc.eot_token, enc.n_vocab
    n_val = int(len(ids) * val_fraction)
    if n_val < 1 or n_val >= len(ids):
        raise SystemExit(f"error: {len(ids)} tokens are too few to split with --val_fraction {val_fraction}: give more text")
    meta = {"dataset": name, "source": source or ", ".join(paths), "tokenizer": tokenizer, "vocab_size": vocab_size,
            "eot_token": eot, "train_tokens": len(ids) - n_val, "val_tokens": n_val, "dtype": "uint16"}
    if itos is not None:
        meta["itos"] = itos
    with staged_dir(os.path.join(out_dir, name)) as tmp:
        ids[:-n_val].astype(np.uint16).tofile(tmp("train.bin"))
        ids[-n_val:].astype(np.uint16).tofile(tmp("val.bin"))
        write_meta(tmp, meta)
    return meta


def prepare_hf(dataset, name, out_dir="data", source="", enc=None, test_size=0.0005, seed=2357, num_proc=1, max_shards=1024):
    """Tokenize a loaded datasets.Dataset with a "text" column (GPT-2 BPE + EOT per document),
    split off test_size of the documents as val, and write the memmaps shard by shard."""
    from tqdm import tqdm
    enc = gpt2_encoding(enc)
    assert enc.n_vocab <= 65536, "token ids must fit uint16"
    split = dataset.train_test_split(test_size=test_size, seed=seed, shuffle=True)
    split["val"] = split.pop("test")

    def tokenize(example):
        ids = enc.encode_ordinary(example["text"]) + [enc.eot_token]
        return {"ids": ids, "len": len(ids)}
    tokenized = split.map(tokenize, remove_columns=dataset.column_names, desc="tokenizing", num_proc=num_proc)
    meta = {"dataset": name, "source": source, "tokenizer": "gpt2", "vocab_size": enc.n_vocab, "eot_token": enc.eot_token,
            "dtype": "uint16"}
    with staged_dir(os.path.join(out_dir, name)) as tmp:
        for split_name in ("train", "val"):
            dset = tokenized[split_name]
            total = int(dset.select_columns(["len"]).with_format("numpy")[:]["len"].sum())
            arr = np.memmap(tmp(f"{split_name}.bin"), dtype=np.uint16, mode="w+", shape=(max(total, 1),))
            n_shards, idx = min(max_shards, len(dset)), 0
            for i in tqdm(range(n_shards), desc=f"writing {split_name}.bin"):
                batch = dset.shard(n_shards, i, contiguous=True).with_format("numpy")[:]
                chunk = np.concatenate(list(batch["ids"]))
                arr[idx:idx + len(chunk)] = chunk
                idx += len(chunk)
            arr.flush()
            del arr
            meta[f"{split_name}_tokens"], meta[f"{split_name}_docs"] = total, len(dset)
        write_meta(tmp, meta)
    return meta


def prepare_openwebtext(out_dir="data", num_proc=8, revision=OWT_REVISION):
    from datasets import load_dataset
    splits = load_dataset(OWT_REPO, revision=revision, num_proc=num_proc)
    # the Hub converts only the first few GB of very big datasets, naming the split "partial-train"
    split = "train" if "train" in splits else next(iter(splits))
    dataset = splits[split]
    print(f"loaded {len(dataset):,} documents from {OWT_REPO}@{revision} split {split!r} (the full set has 8,013,769)")
    return prepare_hf(dataset, "openwebtext", out_dir, f"hf:{OWT_REPO}@{revision}/{split}", num_proc=num_proc)


def download_shakespeare(out_dir="data"):
    path = os.path.join(out_dir, "shakespeare", "input.txt")
    if not os.path.exists(path):
        import urllib.request
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            urllib.request.urlretrieve(SHAKESPEARE_URL, path + ".tmp")
        except OSError as e:
            raise SystemExit(f"error: could not download {SHAKESPEARE_URL} ({e}): check the network, "
                             "or save the file yourself and pass --input path/to/input.txt")
        os.replace(path + ".tmp", path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description="Prepare a token dataset under <out_dir>/<name>/.")
    p.add_argument("--dataset", default=None, help="concepts (default), shakespeare, openwebtext, or a name for --input")
    p.add_argument("--input", nargs="+", default=None, help="local text files, one document each")
    p.add_argument("--tokenizer", choices=["chars", "gpt2"], default=None, help="for --input/shakespeare (default chars)")
    p.add_argument("--out_dir", default="data")
    p.add_argument("--seed", type=int, default=1337, help="concept world seed")
    p.add_argument("--n_docs", type=int, default=8000, help="concept world documents")
    p.add_argument("--val_fraction", type=float, default=None, help="default 0.05 (concepts), 0.1 (text files)")
    p.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="openwebtext workers")
    p.add_argument("--hf_revision", default=OWT_REVISION, help="openwebtext hub revision (main once it has no script)")
    args = p.parse_args(argv)
    name = args.dataset or (os.path.splitext(os.path.basename(args.input[0]))[0] if args.input else "concepts")
    if args.input:
        meta = prepare_text_files(args.input, name, args.out_dir, args.tokenizer or "chars", args.val_fraction or 0.1)
    elif name == "concepts":
        if args.n_docs < 2:
            raise SystemExit("error: --n_docs must be at least 2 (one train and one val document)")
        meta = prepare_concepts(args.out_dir, args.n_docs, args.seed, args.val_fraction or 0.05)
    elif name == "shakespeare":
        path = download_shakespeare(args.out_dir)
        meta = prepare_text_files([path], name, args.out_dir, args.tokenizer or "chars", args.val_fraction or 0.1,
                                  source=SHAKESPEARE_URL)
    elif name == "openwebtext":
        if args.tokenizer == "chars":
            raise SystemExit("error: openwebtext is prepared with the gpt2 tokenizer only: drop --tokenizer chars")
        meta = prepare_openwebtext(args.out_dir, args.num_proc, args.hf_revision)
    else:
        raise SystemExit(f"error: unknown dataset {name!r}: use concepts, shakespeare or openwebtext, "
                         "or build one from local files with --input FILE [FILE ...] --dataset NAME")
    data_dir = os.path.join(args.out_dir, name)
    print(f"{meta['dataset']}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens, "
          f"tokenizer {meta['tokenizer']}, vocab {meta['vocab_size']}")
    print("wrote " + ", ".join(os.path.join(data_dir, f) for f in sorted(os.listdir(data_dir)) if not f.startswith(".")))
    return meta


if __name__ == "__main__":
    main()
