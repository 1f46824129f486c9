import numpy as np

import world


def small_world(n_docs=60, seed=3):
    """A generated world and the meta.json fields that concept_probe_items reads."""
    w = world.make_concept_world(n_docs, seed)
    concept_factors, concepts = world.planted_concepts(w)
    meta = {"itos": w["itos"], "eot_token": len(w["itos"]) - 1, "concept_factors": concept_factors,
            "concepts": concepts}
    return w, meta


def test_the_world_is_a_function_of_its_seed_and_its_vocabulary_is_fixed():
    a, b, c = (world.make_concept_world(50, s) for s in (1, 1, 2))
    assert np.array_equal(a["tokens"], b["tokens"]) and np.array_equal(a["concepts"], b["concepts"])
    assert not np.array_equal(a["tokens"][:500], c["tokens"][:500])
    assert a["itos"] == c["itos"] == world.make_concept_world(3, 9)["itos"]  # seed and size do not change it
    assert a["itos"][-1] == world.EOT


def test_stories_are_60_to_420_tokens_long_and_the_heros_name_recurs_in_each():
    w = world.make_concept_world(100, 3)
    eot = np.flatnonzero(w["tokens"] == len(w["itos"]) - 1)
    lengths = np.diff(np.r_[-1, eot])
    assert lengths.min() >= 60 and lengths.max() <= 420 and 150 < lengths.mean() < 300
    start = 0
    for e, values in zip(eot, w["values"]):
        name = w["factors"][2][1][values[2]]
        assert sum(w["itos"][t] == name for t in w["tokens"][start:e]) >= 3
        start = e + 1


def test_planted_concepts_number_the_factor_values_in_order_and_own_disjoint_words():
    w, meta = small_world()
    concepts = meta["concepts"]
    assert [c["id"] for c in concepts] == list(range(sum(len(v) for _, v in w["factors"])))
    for f in meta["concept_factors"]:
        assert [c["value"] for c in concepts if c["factor"] == f["name"]] == f["values"]
        assert concepts[f["offset"]]["name"] == f"{f['name']}={f['values'][0]}"
    owners = {}
    for c in concepts:
        for word in c["words"]:
            owners.setdefault(word, set()).add(c["factor"])
    assert all(len(factors) == 1 for factors in owners.values())  # she/her are shared by values, not factors


def test_concept_probe_items_swap_the_factor_word_for_each_value_in_the_same_slot_without_an_article_hint():
    w, meta = small_world()
    tokens = w["tokens"]
    items = world.concept_probe_items(tokens, w["concepts"], w["drivers"], meta, prefix_tokens=32, seed=1)
    assert items == world.concept_probe_items(tokens, w["concepts"], w["drivers"], meta, prefix_tokens=32, seed=1)
    words = {(c["factor_index"], c["value_index"]): c["words"] for c in meta["concepts"]}
    text = tokens.tolist()
    for it in items:
        conts, f = it["continuations"], it["factor"]
        assert len(conts) == len(meta["concept_factors"][f]["values"])
        assert len({c[0] for c in conts}) == len(conts) and all(c[1:] == conts[0][1:] for c in conts)
        slot = {words[f, v].index(meta["itos"][c[0]]) for v, c in enumerate(conts)}
        assert len(slot) == 1  # each value's word at the same position of its list: the same slot kind
        assert meta["itos"][conts[0][-1]] == "."  # the rest of the sentence
        assert meta["itos"][it["context"][-1]] not in ("a", "an")  # no grammatical hint
        assert len(it["context"]) - 1 >= 32 and it["context"][0] == meta["eot_token"]
        story = it["context"][1:] + conts[it["gold"]]  # the true word is the story's own text
        assert any(text[i:i + len(story)] == story for i in range(len(text) - len(story) + 1))
    assert {it["factor"] for it in items} == set(range(5))
    some = world.concept_probe_items(tokens, w["concepts"], w["drivers"], meta, prefix_tokens=32, n_docs=10, seed=1)
    assert 0 < len(some) <= 5 * 10 < len(items)
