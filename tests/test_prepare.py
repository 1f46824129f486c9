import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import prepare  # noqa: E402

PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tiny_encoding():
    import tiktoken  # byte-level, built in memory: nothing downloads
    return tiktoken.Encoding(name="tiny", pat_str=PAT, mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={"<|endoftext|>": 256})


@pytest.fixture(scope="module")
def concepts_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare.prepare_concepts(str(out), n_docs=300, seed=7)
    return os.path.join(out, "concepts")


def read_split(data_dir, split, meta):
    tokens = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
    concepts, drivers = prepare.load_concept_labels(data_dir, split)
    return tokens, concepts, drivers


def test_world_deterministic_per_seed():
    a, b, c = (prepare.make_concept_world(50, s) for s in (1, 1, 2))
    assert np.array_equal(a["tokens"], b["tokens"]) and np.array_equal(a["concepts"], b["concepts"])
    assert not np.array_equal(a["tokens"][:500], c["tokens"][:500])
    assert a["itos"] == c["itos"]  # the vocabulary does not depend on seed or size


def test_files_match_meta(concepts_dir):
    meta = prepare.load_meta(concepts_dir)
    assert meta["tokenizer"] == "words" and meta["vocab_size"] == len(meta["itos"]) <= 512
    assert meta["itos"][meta["eot_token"]] == "<|endoftext|>"
    n_factors = len(meta["concept_factors"])
    assert meta["n_concepts"] == len(meta["concepts"]) == sum(len(f["values"]) for f in meta["concept_factors"])
    assert [c["id"] for c in meta["concepts"]] == list(range(meta["n_concepts"]))
    for split in ("train", "val"):
        n = meta[f"{split}_tokens"]
        assert os.path.getsize(os.path.join(concepts_dir, f"{split}.bin")) == 2 * n
        assert os.path.getsize(os.path.join(concepts_dir, f"{split}_concepts.bin")) == n * n_factors
        assert os.path.getsize(os.path.join(concepts_dir, f"{split}_drivers.bin")) == n
        tokens, _, _ = read_split(concepts_dir, split, meta)
        assert tokens.max() < meta["vocab_size"] and tokens[-1] == meta["eot_token"]
    assert meta["val_docs"] == 15 and meta["train_docs"] == 285
    assert not [f for f in os.listdir(concepts_dir) if f.startswith(".")]  # no temp files left


def test_concepts_align_with_tokens(concepts_dir):
    meta = prepare.load_meta(concepts_dir)
    words = {(c["factor_index"], c["value_index"]): set(c["words"]) for c in meta["concepts"]}
    all_concept_words = set().union(*words.values())
    for split in ("train", "val"):
        tokens, concepts, drivers = read_split(concepts_dir, split, meta)
        eot = np.flatnonzero(tokens == meta["eot_token"])
        assert len(eot) == meta[f"{split}_docs"]
        doc_start = np.r_[0, eot[:-1] + 1]
        for s, e in zip(doc_start, eot):  # factor values are constant within a document, EOT included
            assert (concepts[s:e + 1] == concepts[s]).all()
        assert (drivers[eot] == 255).all()
        for i in range(len(tokens)):
            w = meta["itos"][tokens[i]]
            if drivers[i] == 255:
                assert w not in all_concept_words
            else:
                assert w in words[(int(drivers[i]), int(concepts[i, drivers[i]]))]
    tokens, concepts, _ = read_split(concepts_dir, "train", meta)
    assert np.unique(concepts[:, 0]).size == len(meta["concept_factors"][0]["values"])  # all topics occur


def test_document_lengths_and_name_recurs():
    w = prepare.make_concept_world(100, 3)
    eot = np.flatnonzero(w["tokens"] == len(w["itos"]) - 1)
    lengths = np.diff(np.r_[-1, eot])
    assert lengths.min() >= 60 and lengths.max() <= 420 and 150 < lengths.mean() < 300
    start = 0
    for e, values in zip(eot, w["values"]):
        name = w["factors"][2][1][values[2]]  # the hero's name appears several times in its own document
        assert sum(w["itos"][t] == name for t in w["tokens"][start:e]) >= 3
        start = e + 1


def test_conditional_entropy_below_unigram(concepts_dir):
    meta = prepare.load_meta(concepts_dir)
    assert 0 < meta["conditional_entropy_given_concepts"] < meta["unigram_entropy"] - 0.3
    tokens, _, _ = read_split(concepts_dir, "train", meta)
    p = np.bincount(tokens) / len(tokens)
    assert abs(-(p[p > 0] * np.log(p[p > 0])).sum() - meta["unigram_entropy"]) < 1e-3


def test_words_tokenizer(concepts_dir):
    meta = prepare.load_meta(concepts_dir)
    encode, decode = prepare.get_tokenizer(meta)
    tokens = np.fromfile(os.path.join(concepts_dir, "val.bin"), dtype=np.uint16)[:500].tolist()
    text = decode(tokens)
    assert " ." not in text and " ," not in text and "<|endoftext|>" in text
    assert encode(text) == tokens
    assert decode(encode("The Ship sailed , and the waves were blue .")) == "the ship sailed, and the waves were blue."
    with pytest.raises(ValueError, match="'spaceship'.*'concepts'"):
        encode("the spaceship sailed")


def test_text_files_chars_and_gpt2(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("hello world\n" * 10)
    b.write_text("more text here\n" * 10)
    meta = prepare.prepare_text_files([str(a), str(b)], "mytext", str(tmp_path / "data"))
    data_dir = tmp_path / "data" / "mytext"
    assert prepare.load_meta(str(data_dir)) == meta and meta["eot_token"] is None
    train = np.fromfile(data_dir / "train.bin", dtype=np.uint16)
    val = np.fromfile(data_dir / "val.bin", dtype=np.uint16)
    n = len("hello world\n" * 10 + "more text here\n" * 10)
    assert len(val) == int(n * 0.1) and len(train) + len(val) == n
    encode, decode = prepare.get_tokenizer(meta)
    assert decode(train.tolist() + val.tolist()) == "hello world\n" * 10 + "more text here\n" * 10
    assert decode(encode("hello there")) == "hello there"
    with pytest.raises(ValueError, match="'Z'"):
        encode("Zebra")
    enc = tiny_encoding()
    meta = prepare.prepare_text_files([str(a), str(b)], "bytes", str(tmp_path / "data"), tokenizer="gpt2", enc=enc)
    ids = np.r_[np.fromfile(tmp_path / "data/bytes/train.bin", np.uint16), np.fromfile(tmp_path / "data/bytes/val.bin", np.uint16)]
    assert ids.tolist() == list(("hello world\n" * 10).encode()) + [256] + list(("more text here\n" * 10).encode()) + [256]
    assert meta["eot_token"] == 256 and meta["vocab_size"] == 257


def test_empty_and_missing_input_leave_nothing(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    out = tmp_path / "data"
    with pytest.raises(SystemExit, match=r"error: input file .*empty\.txt is empty"):
        prepare.prepare_text_files([str(empty)], "empty", str(out))
    with pytest.raises(SystemExit, match="not found"):
        prepare.prepare_text_files([str(tmp_path / "nope.txt")], "nope", str(out))
    assert not out.exists()
    with pytest.raises(SystemExit, match="unknown dataset 'bogus'"):
        prepare.main(["--dataset", "bogus", "--out_dir", str(out)])
    with pytest.raises(SystemExit, match=r"run `python prepare.py --dataset x` first"):
        prepare.load_meta(str(out / "x"))


def test_failed_write_cleans_up(tmp_path):
    data_dir = tmp_path / "data" / "broken"
    with pytest.raises(RuntimeError):
        with prepare.staged_dir(str(data_dir)) as tmp:
            np.arange(10, dtype=np.uint16).tofile(tmp("train.bin"))
            raise RuntimeError("disk full")
    assert not (tmp_path / "data").exists()
    # an existing dataset is left as it was when a rewrite fails
    prepare.prepare_concepts(str(tmp_path / "data"), n_docs=20, seed=1)
    before = (tmp_path / "data/concepts/train.bin").read_bytes()
    with pytest.raises(RuntimeError):
        with prepare.staged_dir(str(tmp_path / "data/concepts")) as tmp:
            np.zeros(3, np.uint16).tofile(tmp("train.bin"))
            raise RuntimeError("interrupted")
    assert (tmp_path / "data/concepts/train.bin").read_bytes() == before
    assert sorted(os.listdir(tmp_path / "data/concepts"))[0] == "meta.json"


def test_hf_tokenize_and_write(tmp_path):
    from datasets import Dataset
    docs = [f"document number {i} says hi." for i in range(20)]
    enc = tiny_encoding()
    meta = prepare.prepare_hf(Dataset.from_dict({"text": docs}), "tinyhf", str(tmp_path), source="test", enc=enc,
                              test_size=0.1, seed=2357, max_shards=3)
    assert meta["train_docs"] == 18 and meta["val_docs"] == 2 and meta["eot_token"] == 256
    seen = []
    for split in ("train", "val"):
        ids = np.fromfile(tmp_path / "tinyhf" / f"{split}.bin", dtype=np.uint16)
        assert len(ids) == meta[f"{split}_tokens"] and ids[-1] == 256
        texts = bytes(ids[ids != 256].astype(np.uint8)).decode()
        split_docs = [d for d in docs if d in texts]
        assert (ids == 256).sum() == len(split_docs) == meta[f"{split}_docs"]
        # exact stream: the split's documents, in the split's order, each followed by EOT
        order = sorted(split_docs, key=texts.index)
        assert ids.tolist() == [t for d in order for t in list(d.encode()) + [256]]
        seen += split_docs
    assert sorted(seen) == sorted(docs)
    assert prepare.load_meta(str(tmp_path / "tinyhf")) == meta


def test_cli(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), "--dataset", "concepts", "--n_docs", "200",
                        "--out_dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "unigram entropy" in r.stdout and "wrote" in r.stdout
    meta = json.loads((tmp_path / "out/concepts/meta.json").read_text())
    assert meta["train_docs"] + meta["val_docs"] == 200
    r = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), "--input", str(tmp_path / "missing.txt")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == f"error: input file {tmp_path / 'missing.txt'} not found: check the path"
