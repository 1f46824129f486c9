"""
Prepare a token dataset: <data_root>/<dataset>/train.bin and val.bin (flat uint16 token ids) and meta.json
(tokenizer, vocabulary, sizes), which train.py, sae.py and eval.py read. A script and a module.

    python prepare.py                                   the synthetic concept world (offline, under a second)
    python prepare.py --input=a.txt,b.txt --dataset=mine --tokenizer=gpt2    local text files
    python prepare.py --dataset=shakespeare             tiny shakespeare, characters, downloaded once
    python prepare.py --dataset=openwebtext --num_proc=8   OpenWebText with GPT-2's BPE, as in the paper

The concept world (world.py) is English-like text whose words are driven by latent per-document factors
(topic, setting, hero, trait, mood). Besides the tokens it saves its planted concepts: each token's story's
factor values (<split>_concepts.bin, uint8, (n_tokens, n_factors)) and which factor chose each word
(<split>_drivers.bin, uint8, 255 = none), so later stages can check what a model's concepts recover.

Local files: chars concatenates the files as they are (no end-of-text token, like nanoGPT's shakespeare_char);
gpt2 appends <|endoftext|> after every file. The last val_fraction of the token stream is the val split.

OpenWebText: the hub repo Skylion007/openwebtext is a loading script on its main branch, which datasets>=4
refuses to run. The Hub's automatic parquet conversion of the same repo (revision refs/convert/parquet) holds
the same documents as plain parquet and loads with current versions, so that is what we read.
"""
import contextlib
import hashlib
import json
import os
import re
import time

import numpy as np

import world
from configurator import check, configure

# -----------------------------------------------------------------------------
dataset = "concepts"        # concepts, shakespeare, openwebtext; with --input a name (default: the first file's)
input = ""                  # comma-separated local text files, one document each
tokenizer = ""              # chars or gpt2, for text files and shakespeare ("": chars); openwebtext is gpt2
data_root = "data"          # writes <data_root>/<dataset>/
seed = 1337                 # concept world
n_docs = 8000               # concept world stories
val_fraction = None         # the val split's share; None: 0.05 for the concept world, 0.1 for text, 0.0005 for owt
num_proc = max(1, (os.cpu_count() or 2) // 2)  # openwebtext: tokenizing processes
hf_revision = "refs/convert/parquet"  # openwebtext's hub revision ("main" once it holds no loading script)
# -----------------------------------------------------------------------------
VAL_FRACTION = {"concepts": 0.05, "openwebtext": 0.0005}  # of the stories, of the documents; text: 0.1 of the tokens


def prepare_concepts(data_root="data", n_docs=8000, seed=1337, val_fraction=0.05, name="concepts"):
    """Generate the concept world (world.py) and write its tokens and planted concepts; returns its meta.
    The last round(n_docs * val_fraction) stories (at least one) are the val split."""
    n_val = max(1, round(n_docs * val_fraction))
    if n_val >= n_docs:
        raise SystemExit(f"error: val_fraction={val_fraction} of n_docs={n_docs} stories leaves none to train on: "
                         "use more --n_docs or a smaller --val_fraction")
    t0 = time.time()
    w = world.make_concept_world(n_docs, seed)
    cut = int(np.searchsorted(w["doc"], n_docs - n_val))  # val = the last n_val stories
    itos = w["itos"]
    h_uni, h_cond = world.concept_entropies(w["tokens"][:cut], w["concepts"][:cut], w["drivers"][:cut], len(itos))
    concept_factors, concepts = world.planted_concepts(w)
    meta = {"dataset": name, "source": f"synthetic concept world (prepare.py, seed {seed})", "tokenizer": "words",
            "vocab_size": len(itos), "eot_token": len(itos) - 1, "train_tokens": cut, "val_tokens": len(w["tokens"]) - cut,
            "train_docs": n_docs - n_val, "val_docs": n_val, "seed": seed, "dtype": "uint16",
            "concept_factors": concept_factors, "n_concepts": len(concepts), "concepts": concepts,
            "neutral_driver": world.NEUTRAL_DRIVER,
            "unigram_entropy": round(h_uni, 4), "conditional_entropy_given_concepts": round(h_cond, 4),
            "entropy_note": "nats per token, bag of words: H(W) vs H(W | true factor values of the document)",
            "itos": itos}
    with staged_dir(os.path.join(data_root, name)) as tmp:
        for split, sl in (("train", slice(0, cut)), ("val", slice(cut, None))):
            w["tokens"][sl].tofile(tmp(f"{split}.bin"))
            w["concepts"][sl].tofile(tmp(f"{split}_concepts.bin"))
            w["drivers"][sl].tofile(tmp(f"{split}_drivers.bin"))
        write_meta(tmp, meta)
    print(f"concept world: {n_docs} docs, {len(w['tokens']):,} tokens, vocab {len(itos)}, {time.time() - t0:.1f}s")
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
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"error: cannot create {data_dir} ({e.strerror}): give a --data_root that is a directory "
                         "you can write") from None
    for f in os.listdir(data_dir):  # a killed run's hidden temp files (.NAME.PID.tmp) are never moved into place
        if re.fullmatch(r"\..+\.\d+\.tmp", f):
            os.remove(os.path.join(data_dir, f))
    staged = []

    def tmp(name):
        staged.append((os.path.join(data_dir, f".{name}.{os.getpid()}.tmp"), os.path.join(data_dir, name)))
        return staged[-1][0]
    try:
        yield tmp
    except BaseException as e:
        for path, _ in staged:
            if os.path.exists(path):
                os.remove(path)
        for d in created:  # deepest first; stops at the first non-empty one
            try:
                os.rmdir(d)
            except OSError:
                break
        if isinstance(e, OSError):  # e.g. a full disk
            raise SystemExit(f"error: could not write {data_dir} ({e.strerror or e}): free some space or choose "
                             "another --data_root; the dataset that was there is unchanged") from None
        raise
    for path, final in staged:
        os.replace(path, final)


def write_meta(tmp, meta):
    with open(tmp("meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def fingerprint(meta):
    """A 16-hex-digit hash of a dataset's meta.json content (keys sorted). Checkpoints record it, so that a
    reader can tell a dataset re-prepared under the same name (another text, another tokenizer) from the one
    the checkpoint learned."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def check_trained_on(record, data_dir, path):
    """Raise ValueError unless data_dir holds the dataset that the checkpoint at path (its record) learned:
    a dataset re-prepared under the same name (another text, another tokenizer) must not pass for it."""
    want = record.get("data_fingerprint") or fingerprint(record["meta"])
    got = fingerprint(load_meta(data_dir))
    if got != want:
        source = record.get("meta", {}).get("source")
        raise ValueError(f"{os.path.join(data_dir, 'meta.json')} was re-prepared since {path} was trained "
                         f"(its fingerprint is {got}, the checkpoint's {want}): retrain on the new data, or prepare "
                         "the data the checkpoint learned again" + (f" ({source})" if source else ""))


def prepare_command(data_dir):
    """The command that writes data_dir (<data_root>/<dataset>), for error messages."""
    root, name = os.path.split(os.path.normpath(data_dir))
    return f"python prepare.py --dataset={name}" + (f" --data_root={root or '.'}" if root != "data" else "")


def load_meta(data_dir):
    """A prepared dataset's meta.json as a dict. Raises SystemExit, saying how to prepare it, if it is missing or
    damaged."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} not found: run `{prepare_command(data_dir)}` first")
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, OSError) as e:  # cut short, not JSON, a directory
        raise SystemExit(f"error: {path} is damaged ({type(e).__name__}): run `{prepare_command(data_dir)}` "
                         "again") from None


def load_tokens(data_dir, split="train"):
    """A split's token ids (n_tokens,) as a read-only uint16 memmap. Raises SystemExit if it is missing."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} not found: run `{prepare_command(data_dir)}` first")
    return np.memmap(path, dtype=np.uint16, mode="r")


def check_splits(data_dir, block_size, splits=("train", "val")):
    """Raise SystemExit unless each split holds at least one window of block_size tokens and its next token."""
    for split in splits:
        path = os.path.join(data_dir, f"{split}.bin")
        if not os.path.isfile(path):
            raise SystemExit(f"error: {path} not found: run `{prepare_command(data_dir)}` first")
        if (n := os.path.getsize(path) // 2) < block_size + 1:
            raise SystemExit(f"error: {path} has {n} tokens, fewer than one window of block_size+1={block_size + 1}: "
                             "use a smaller --block_size, or prepare more text")


def load_planted_concepts(data_dir, split="train"):
    """The concept world's ground truth for a split, as read-only uint8 memmaps: concepts (n_tokens, n_factors),
    the factor values of each token's story, and drivers (n_tokens,), the factor that chose each word
    (world.NEUTRAL_DRIVER: none). Raises SystemExit if data_dir is not a concept world or lacks the files."""
    meta = load_meta(data_dir)
    if "concept_factors" not in meta:
        raise SystemExit(f"error: {data_dir} has no planted concepts: only the concept world has them "
                         "(python prepare.py)")
    paths = [os.path.join(data_dir, f"{split}_{kind}.bin") for kind in ("concepts", "drivers")]
    for path in paths:
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} not found: run `{prepare_command(data_dir)}` first")
    concepts = np.memmap(paths[0], dtype=np.uint8, mode="r").reshape(-1, len(meta["concept_factors"]))
    return concepts, np.memmap(paths[1], dtype=np.uint8, mode="r")


def gpt2_encoding(enc=None):
    """enc if given (tests pass a small offline one), else tiktoken's GPT-2 BPE (downloaded on first use).
    Raises SystemExit, saying how to provide the files, if they cannot be downloaded."""
    if enc is None:
        import tiktoken
        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline: requests' ConnectionError; a damaged download: ValueError
            raise SystemExit(f"error: could not download GPT-2's BPE files (vocab.bpe, encoder.json from "
                             f"openaipublic.blob.core.windows.net) for tiktoken ({type(e).__name__}): connect once, "
                             "or copy a cache made where there is a network (TIKTOKEN_CACHE_DIR=DIR python -c "
                             "\"import tiktoken; tiktoken.get_encoding('gpt2')\") and set TIKTOKEN_CACHE_DIR=DIR "
                             "here") from None
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
        words = re.findall(re.escape(world.EOT) + r"|[\w']+|[^\w\s]", text.lower())
        for w in words:
            if w not in stoi:
                some = [t for t in itos if t.isalpha()][::25]
                raise ValueError(f"word {w!r} is not in the vocabulary of dataset {name!r}, which has {len(itos)} "
                                 f"lowercase words and punctuation marks such as {', '.join(some)}")
        return [stoi[w] for w in words]

    def decode(ids):  # words joined by spaces, punctuation attached, <|endoftext|> on a line of its own
        eot = world.EOT
        text = re.sub(" ?" + re.escape(eot) + " ?", "\n" + eot + "\n", " ".join(itos[i] for i in ids))
        return re.sub(r" ([^\w\s])", r"\1", text)
    return encode, decode

# ----------------------------------------------------------------------------------
# local text files and Hugging Face datasets


def read_text(path):
    """A text file's content as open() reads text (newlines as \\n). Raises SystemExit, naming the file and the
    byte, if it is missing, a directory, empty or not UTF-8."""
    if os.path.isdir(path):
        raise SystemExit(f"error: input {path} is a directory: list the text files in it, e.g. "
                         f"--input={os.path.join(path, 'a.txt')},{os.path.join(path, 'b.txt')}")
    if not os.path.isfile(path):
        raise SystemExit(f"error: input file {path} not found: check the path")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SystemExit(f"error: input file {path} is not UTF-8 text (byte {e.start:,} is 0x{raw[e.start]:02x}): "
                         f"convert it first, e.g. iconv -f latin1 -t utf-8 {path} > converted.txt") from None
    if not text.strip():
        raise SystemExit(f"error: input file {path} is empty: give a file that contains text")
    return text.replace("\r\n", "\n").replace("\r", "\n")  # what open(path) in text mode does


def prepare_text_files(paths, name, data_root="data", tokenizer="chars", val_fraction=0.1, enc=None, source=None):
    """Tokenize local text files (chars, or gpt2 with an end-of-text token after each file) and write
    <data_root>/<name>/; the last val_fraction of the tokens is the val split. Returns the meta."""
    texts = [read_text(p) for p in paths]
    if tokenizer == "chars":
        text = "".join(texts)
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        vocab = np.unique(codepoints)
        if len(vocab) > 65535:
            raise SystemExit(f"error: {len(vocab)} distinct characters do not fit uint16: use --tokenizer=gpt2")
        ids, itos, eot, vocab_size = np.searchsorted(vocab, codepoints), [chr(c) for c in vocab], None, len(vocab)
    else:
        enc = gpt2_encoding(enc)
        ids = np.array([i for t in texts for i in enc.encode_ordinary(t) + [enc.eot_token]], dtype=np.int64)
        itos, eot, vocab_size = None, enc.eot_token, enc.n_vocab
    n_val = int(len(ids) * val_fraction)
    if min(n_val, len(ids) - n_val) < 2:  # one input and its target; a model needs block_size + 1
        raise SystemExit(f"error: {len(ids)} tokens are too few to split with val_fraction={val_fraction}: each "
                         "split needs at least 2 tokens (train.py needs block_size + 1): give more text")
    meta = {"dataset": name, "source": source or ", ".join(paths), "tokenizer": tokenizer, "vocab_size": vocab_size,
            "eot_token": eot, "train_tokens": len(ids) - n_val, "val_tokens": n_val, "dtype": "uint16"}
    if itos is not None:
        meta["itos"] = itos
    with staged_dir(os.path.join(data_root, name)) as tmp:
        ids[:-n_val].astype(np.uint16).tofile(tmp("train.bin"))
        ids[-n_val:].astype(np.uint16).tofile(tmp("val.bin"))
        write_meta(tmp, meta)
    return meta


def prepare_hf(dataset, name, data_root="data", source="", enc=None, test_size=0.0005, seed=2357, num_proc=1, max_shards=1024):
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
    with staged_dir(os.path.join(data_root, name)) as tmp:
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


def prepare_openwebtext(data_root, num_proc, revision, val_fraction=0.0005, enc=None, repo="Skylion007/openwebtext"):
    """OpenWebText from the hub (the parquet revision: see the top of this file), GPT-2 BPE; val_fraction of the
    documents are the val split."""
    try:
        from datasets import load_dataset
        splits = load_dataset(repo, revision=revision, num_proc=num_proc)
    except ImportError:
        raise SystemExit("error: openwebtext needs Hugging Face datasets: pip install datasets") from None
    except Exception as e:  # offline, or the hub changed
        raise SystemExit(f"error: could not load {repo}@{revision} from the Hugging Face Hub ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120] if str(e) else ''}): check the network, or copy a Hugging "
                         "Face cache that holds it (HF_HOME) and set HF_DATASETS_OFFLINE=1") from None
    # the Hub converts only the first few GB of very big datasets, naming the split "partial-train"
    split = "train" if "train" in splits else next(iter(splits))
    docs = splits[split]
    print(f"loaded {len(docs):,} documents from {repo}@{revision} split {split!r} (the full set has 8,013,769)")
    return prepare_hf(docs, "openwebtext", data_root, f"hf:{repo}@{revision}/{split}", enc, val_fraction,
                      num_proc=num_proc)


def prepare_shakespeare(data_root, tokenizer, val_fraction, enc=None,
                        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"):
    """Tiny shakespeare as a text file dataset, downloaded once to <data_root>/shakespeare/input.txt."""
    path = os.path.join(data_root, "shakespeare", "input.txt")
    if not os.path.exists(path):
        import urllib.request
        try:  # into memory (1 MB) first, so that a failed download leaves no directory behind
            with urllib.request.urlopen(url) as r:
                text = r.read()
        except OSError as e:
            raise SystemExit(f"error: could not download {url} ({e}): check the network, "
                             "or save the file yourself and pass --input=path/to/input.txt --dataset=shakespeare")
        with staged_dir(os.path.dirname(path)) as tmp:
            with open(tmp("input.txt"), "wb") as f:
                f.write(text)
    return prepare_text_files([path], "shakespeare", data_root, tokenizer, val_fraction, enc, url)


def check_settings(files, name):
    """Refuse, before anything is written, settings that cannot make the dataset they name."""
    if "" in files:
        raise SystemExit(f"error: --input={input!r} has an empty file name: drop the extra comma")
    if name in ("", ".", "..") or "/" in name or os.sep in name:
        raise SystemExit(f"error: dataset name {name!r} must be a plain directory name: use e.g. --dataset=mytext")
    if tokenizer not in ("", "chars", "gpt2"):
        raise SystemExit(f"error: unknown tokenizer={tokenizer!r}: use chars or gpt2")
    check(globals(), between={"val_fraction": "(0, 1)"})
    if files or name == "shakespeare":
        return
    if name == "concepts":
        if tokenizer:
            raise SystemExit(f"error: the concept world has its own words tokenizer: drop --tokenizer={tokenizer}")
        check(globals(), at_least={"n_docs": 2, "seed": 0})  # one train and one val story
    elif name == "openwebtext":
        if tokenizer == "chars":
            raise SystemExit("error: openwebtext is prepared with the gpt2 tokenizer only: drop --tokenizer=chars")
        check(globals(), at_least={"num_proc": 1})
    else:
        raise SystemExit(f"error: unknown dataset {name!r}: use concepts, shakespeare or openwebtext, "
                         "or build one from local files with --input=FILE[,FILE...] --dataset=NAME")


def main():
    """Prepare the dataset that the config keys above describe; returns its meta."""
    files = input.split(",") if input else []
    name = os.path.splitext(os.path.basename(files[0]))[0] if files and dataset == "concepts" else dataset
    check_settings(files, name)
    fraction = (0.1 if files else VAL_FRACTION.get(name, 0.1)) if val_fraction is None else val_fraction
    gpt2 = tokenizer == "gpt2" or name == "openwebtext" and not files
    enc = gpt2_encoding() if gpt2 else None  # before any download or tokenizing, which it would waste when offline
    if files:
        meta = prepare_text_files(files, name, data_root, tokenizer or "chars", fraction, enc)
    elif name == "concepts":
        meta = prepare_concepts(data_root, n_docs, seed, fraction)
    elif name == "shakespeare":
        meta = prepare_shakespeare(data_root, tokenizer or "chars", fraction, enc)
    else:
        meta = prepare_openwebtext(data_root, num_proc, hf_revision, fraction, enc)
    data_dir = os.path.join(data_root, name)
    print(f"{meta['dataset']}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens, "
          f"tokenizer {meta['tokenizer']}, vocab {meta['vocab_size']}")
    print("wrote " + ", ".join(os.path.join(data_dir, f) for f in sorted(os.listdir(data_dir)) if not f.startswith(".")))
    return meta


if __name__ == "__main__":
    configure(globals())
    main()
