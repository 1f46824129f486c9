"""
The synthetic concept world: English-like stories whose words are driven by latent per-document factors
(topic, setting, hero, trait, mood), so that the "planted concepts" behind every token are known.

Each factor value owns a few words per slot kind ("nouns | verbs | adjectives"), and a word belongs to exactly
one factor value. A story draws one value per factor; sentence templates supply the grammar and leave slots
that are filled from the words of the story's values (or from NEUTRAL words). So a model predicts the next word
better once it has inferred the factors from the context, and we know the ground truth it should infer.

Pure numpy, no files: prepare.py writes what make_concept_world generates, eval.py's concept probes ask
concept_probe_items' questions.
"""
import numpy as np

EOT = "<|endoftext|>"  # ends every story; the last token id
NEUTRAL_DRIVER = 255   # the driver of a word that no factor chose

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
    """The plural of a singular noun of FACTORS (enough English for their words)."""
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
    """Generate n_docs stories, seeded. Returns build_concept_world's tables plus, per token (n of them): tokens
    (n,) uint16; concepts (n, n_factors) uint8, the planted concepts (factor values) of its story; drivers (n,)
    uint8, the factor that chose the word (NEUTRAL_DRIVER for template and neutral words); doc (n,), its story;
    and values (n_docs, n_factors), each story's factor values."""
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
    drivers = np.where(is_slot & (factor >= 0), factor, NEUTRAL_DRIVER).astype(np.uint8)
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
    neutral = drivers == NEUTRAL_DRIVER
    cat = np.where(neutral, n_factors, drivers).astype(np.int64)
    val = np.where(neutral, 0, concepts[np.arange(len(tokens)), np.minimum(cat, n_factors - 1)]).astype(np.int64)
    ctx = cat * 256 + val
    joint = np.bincount(ctx * vocab_size + tokens)
    keys = np.flatnonzero(joint)
    c = joint[keys]
    h_word = -(c * np.log(c / np.bincount(ctx)[keys // vocab_size])).sum() / len(tokens)
    return ent(np.bincount(tokens)), ent(np.bincount(cat)) + float(h_word)


def planted_concepts(world):
    """The planted concepts as meta.json lists them: (concept_factors, concepts). concept_factors holds
    {name, values, offset} per factor; concepts holds {id, name, factor, factor_index, value, value_index, words}
    per factor value, id = its factor's offset + value_index, words in the order build_concept_world gives them."""
    factors, offsets = world["factors"], np.cumsum([0] + [len(v) for _, v in world["factors"]])
    concepts = [{"id": int(offsets[f] + v), "name": f"{fname}={val}", "factor": fname, "factor_index": f,
                 "value": val, "value_index": v, "words": world["concept_words"][f][v]}
                for f, (fname, vals) in enumerate(factors) for v, val in enumerate(vals)]
    return [{"name": n, "values": vals, "offset": int(o)} for (n, vals), o in zip(factors, offsets)], concepts


def concept_probe_items(tokens, concepts, drivers, meta, prefix_tokens=32, n_docs=0, seed=1337):
    """Multiple-choice questions that only a model which inferred a story's planted concepts can answer.

    tokens (n,), concepts (n, n_factors) and drivers (n,) are a split of a prepared concept world, meta its
    meta.json. Each item cuts one story (of n_docs drawn with seed; 0: all) at a word that a factor produced, at
    least prefix_tokens into the story, and offers the rest of that sentence with the word as written or with
    the same-slot word of each other value of that factor (chance: 1 / values). Per story and factor one item:
    {"factor", "gold" (the true value), "context" ([eot] + the story so far), "continuations" (one per value)}.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    stoi = {w: i for i, w in enumerate(meta["itos"])}
    eot, stop = meta["eot_token"], stoi["."]
    articles = {stoi["a"], stoi["an"]}  # "an" before a vowel would give the true word away by grammar
    # a value's words are listed slot by slot, in the same order for every value of a factor, so the i-th words
    # of all values fill the same slot; a slot whose words repeat across values (she, her) is skipped
    words = {(c["factor_index"], c["value_index"]): [stoi[w] for w in c["words"]] for c in meta["concepts"]}
    n_values = [len(f["values"]) for f in meta["concept_factors"]]
    ends = np.flatnonzero(tokens == eot)
    starts = np.r_[0, ends[:-1] + 1]
    rng = np.random.default_rng(seed)
    docs = sorted(rng.choice(len(ends), n_docs, replace=False)) if 0 < n_docs < len(ends) else range(len(ends))
    items = []
    for d in docs:
        s, e = starts[d], ends[d]
        for f, n in enumerate(n_values):
            options = []
            for p in np.flatnonzero(drivers[s + prefix_tokens:e] == f) + s + prefix_tokens:
                if tokens[p - 1] in articles:
                    continue
                i = words[f, int(concepts[p, f])].index(tokens[p])
                alts = [words[f, v][i] if i < len(words[f, v]) else -1 for v in range(n)]
                if -1 not in alts and len(set(alts)) == n:
                    options.append((p, alts))
            if options:
                p, alts = options[rng.integers(len(options))]
                q = p + 1 + np.argmax(np.r_[tokens[p + 1:e], stop] == stop)  # the sentence's full stop
                rest = tokens[p + 1:q + 1].tolist()
                items.append({"factor": f, "gold": int(concepts[p, f]), "context": [eot] + tokens[s:p].tolist(),
                              "continuations": [[w] + rest for w in alts]})
    return items
