import json
import os

import numpy as np
import pytest

import prepare
from conftest import run_script

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


def read_split(data_dir, split):
    return (prepare.load_tokens(data_dir, split), *prepare.load_planted_concepts(data_dir, split))


def test_concept_world_files_have_the_sizes_and_vocabulary_that_meta_json_states(concepts_dir):
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
        tokens, _, _ = read_split(concepts_dir, split)
        assert tokens.max() < meta["vocab_size"] and tokens[-1] == meta["eot_token"]
    assert meta["val_docs"] == 15 and meta["train_docs"] == 285
    assert not [f for f in os.listdir(concepts_dir) if f.startswith(".")]  # no temp files left


def test_planted_concepts_are_constant_per_story_and_drivers_name_the_factor_that_chose_each_word(concepts_dir):
    meta = prepare.load_meta(concepts_dir)
    words = {(c["factor_index"], c["value_index"]): set(c["words"]) for c in meta["concepts"]}
    all_concept_words = set().union(*words.values())
    for split in ("train", "val"):
        tokens, concepts, drivers = read_split(concepts_dir, split)
        eot = np.flatnonzero(tokens == meta["eot_token"])
        assert len(eot) == meta[f"{split}_docs"]
        doc_start = np.r_[0, eot[:-1] + 1]
        for s, e in zip(doc_start, eot):  # factor values are constant within a document, EOT included
            assert (concepts[s:e + 1] == concepts[s]).all()
        assert (drivers[eot] == meta["neutral_driver"]).all()
        for i in range(len(tokens)):
            w = meta["itos"][tokens[i]]
            if drivers[i] == meta["neutral_driver"]:
                assert w not in all_concept_words
            else:
                assert w in words[(int(drivers[i]), int(concepts[i, drivers[i]]))]
    tokens, concepts, _ = read_split(concepts_dir, "train")
    assert np.unique(concepts[:, 0]).size == len(meta["concept_factors"][0]["values"])  # all topics occur


def test_knowing_the_planted_concepts_lowers_the_entropy_of_the_words(concepts_dir):
    meta = prepare.load_meta(concepts_dir)
    assert 0 < meta["conditional_entropy_given_concepts"] < meta["unigram_entropy"] - 0.3
    tokens, _, _ = read_split(concepts_dir, "train")
    p = np.bincount(tokens) / len(tokens)
    assert abs(-(p[p > 0] * np.log(p[p > 0])).sum() - meta["unigram_entropy"]) < 1e-3


def test_words_tokenizer_round_trips_the_text_and_names_an_unknown_word(concepts_dir):
    meta = prepare.load_meta(concepts_dir)
    encode, decode = prepare.get_tokenizer(meta)
    tokens = np.fromfile(os.path.join(concepts_dir, "val.bin"), dtype=np.uint16)[:500].tolist()
    text = decode(tokens)
    assert " ." not in text and " ," not in text and "<|endoftext|>" in text
    assert encode(text) == tokens
    assert decode(encode("The Ship sailed , and the waves were blue .")) == "the ship sailed, and the waves were blue."
    with pytest.raises(ValueError, match="'spaceship'.*'concepts'"):
        encode("the spaceship sailed")


def test_text_files_become_chars_or_gpt2_tokens_with_an_end_of_text_after_each_file(tmp_path):
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


def test_empty_or_missing_input_stops_with_a_one_line_error_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    out = tmp_path / "data"
    with pytest.raises(SystemExit, match=r"error: input file .*empty\.txt is empty"):
        prepare.prepare_text_files([str(empty)], "empty", str(out))
    with pytest.raises(SystemExit, match="not found"):
        prepare.prepare_text_files([str(tmp_path / "nope.txt")], "nope", str(out))
    assert not out.exists()
    with pytest.raises(SystemExit, match=rf"run `python prepare.py --dataset=x --data_root={out}` first"):
        prepare.load_meta(str(out / "x"))
    with pytest.raises(SystemExit, match=r"val\.bin not found: run `python prepare.py --dataset=x --data_root="):
        prepare.load_tokens(str(out / "x"), "val")


def test_a_failed_write_leaves_no_temp_files_and_keeps_the_dataset_that_was_there(tmp_path):
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


def test_hf_documents_are_split_and_written_in_order_each_followed_by_end_of_text(tmp_path):
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


def test_command_line_writes_the_concept_world_under_data_root_as_the_loaders_read_it(tmp_path):
    out = tmp_path / "out"
    p = run_script("prepare.py", "--dataset=concepts", "--n_docs=200", "--val_fraction=0.1", f"--data_root={out}")
    assert "unigram entropy" in p.stdout and "wrote" in p.stdout
    meta = prepare.load_meta(str(out / "concepts"))
    assert meta["train_docs"] == 180 and meta["val_docs"] == 20
    tokens, concepts, drivers = read_split(str(out / "concepts"), "val")
    assert len(tokens) == len(concepts) == len(drivers) == meta["val_tokens"]


def test_command_line_reads_comma_separated_text_files_into_a_dataset_named_after_the_first(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first file\n" * 20)
    b.write_text("second\n" * 20)
    run_script("prepare.py", f"--input={a},{b}", f"--data_root={tmp_path / 'data'}")
    meta = prepare.load_meta(str(tmp_path / "data" / "a"))
    assert meta["tokenizer"] == "chars" and meta["train_tokens"] + meta["val_tokens"] == 11 * 20 + 7 * 20
    assert meta["val_tokens"] == int(0.1 * (11 * 20 + 7 * 20))  # text's default val_fraction


def test_a_killed_runs_hidden_temp_files_are_removed_when_the_next_run_starts(tmp_path):
    data_dir = tmp_path / "data" / "concepts"
    data_dir.mkdir(parents=True)
    for name in (".train.bin.4242.tmp", ".meta.json.17.tmp"):  # what a run killed mid-write leaves
        (data_dir / name).write_bytes(b"partial")
    (data_dir / ".keep.tmp").write_bytes(b"not ours")
    prepare.prepare_concepts(str(tmp_path / "data"), n_docs=20, seed=1)
    assert sorted(f for f in os.listdir(data_dir) if f.startswith(".")) == [".keep.tmp"]


def test_a_write_that_fails_says_why_in_one_line_and_keeps_the_dataset_that_was_there(tmp_path):
    prepare.prepare_concepts(str(tmp_path / "data"), n_docs=20, seed=1)
    before = {f: (tmp_path / "data/concepts" / f).read_bytes() for f in os.listdir(tmp_path / "data/concepts")}
    with pytest.raises(SystemExit, match=r"^error: could not write .*concepts \(No space left on device\): free "
                                         "some space or choose another --data_root; the dataset that was there is "
                                         "unchanged"):
        with prepare.staged_dir(str(tmp_path / "data/concepts")) as tmp:
            np.zeros(3, np.uint16).tofile(tmp("train.bin"))
            raise OSError(28, "No space left on device")
    assert {f: (tmp_path / "data/concepts" / f).read_bytes() for f in os.listdir(tmp_path / "data/concepts")} == before


def test_text_is_read_as_open_reads_it_and_shakespeare_is_saved_only_once_downloaded(tmp_path, monkeypatch):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"one\r\ntwo\rthree\n" * 4)
    assert prepare.read_text(str(crlf)) == open(crlf, encoding="utf-8").read()
    import io
    import urllib.request
    monkeypatch.setattr(urllib.request, "urlopen", lambda url: io.BytesIO(b"to be or not to be\n" * 10))
    meta = prepare.prepare_shakespeare(str(tmp_path / "data"), "chars", 0.1)
    assert meta["train_tokens"] + meta["val_tokens"] == 190 and meta["source"].startswith("https://")
    assert sorted(os.listdir(tmp_path / "data/shakespeare")) == ["input.txt", "meta.json", "train.bin", "val.bin"]


def test_a_checkpoint_refuses_a_dataset_re_prepared_since_it_learned_it(tmp_path):
    meta = {"dataset": "story", "tokenizer": "chars", "vocab_size": 3, "itos": ["a", "b", " "], "source": "a.txt"}
    (tmp_path / "story").mkdir()
    (tmp_path / "story" / "meta.json").write_text(json.dumps(meta))
    prepare.check_trained_on({"meta": meta}, str(tmp_path / "story"), "out/x/ckpt.pt")  # the same data: fine
    recorded = {"meta": {}, "data_fingerprint": prepare.fingerprint(meta)}  # the fingerprint, where it is recorded
    prepare.check_trained_on(recorded, str(tmp_path / "story"), "out/x")
    (tmp_path / "story" / "meta.json").write_text(json.dumps({**meta, "source": "b.txt"}))
    with pytest.raises(ValueError, match=r"story/meta.json was re-prepared since out/x/ckpt.pt was trained \(its "
                                         r"fingerprint is \w+, the checkpoint's \w+\): .* again \(a.txt\)"):
        prepare.check_trained_on({"meta": meta}, str(tmp_path / "story"), "out/x/ckpt.pt")
