"""The embedded IMDB sample: synthetic movie reviews in the real ``aclImdb`` layout.

``write_sample`` writes ``aclImdb/{train,test}/{pos,neg}/{id}_{rating}.txt``
(ratings 1-4 neg, 7-10 pos, in IMDB's proportions), and ``train/unsup/{id}_0.txt``
when asked, so the real parsing code is what runs on it. Reviews mix neutral
sentences (plot, cast, viewing circumstances; invented names give a long tail
of rare words) with sentiment units, and the units are built so that word
order matters:

- plain: "The acting was great." expresses the adjective's polarity;
- negated: "The acting was not great." expresses the opposite, and a negated
  negative ("not bad") is the mild praise of 4 and 7 ratings;
- contrast: "The plot was dull, but the acting was superb." and "Although ...,
  ..." express the later clause only, so both polarities appear in the words.

Negated and contrast units put the sentiment words of the other class into a
review, so a bag of words sees a much weaker signal than a model that reads
"not" and "but" in place; a few units disagree with the rating and a few
reviews (``label_noise``) are written for the other class, so nothing reaches
100 %. Lengths are log-normal like IMDB's (median ~200 tokens, mean ~265, a
tail past 1,000), with ``<br /><br />`` between some sentences.

Deterministic: a seed gives the same bytes. numpy draws each review's plan
(rating, length, noise); Python's ``random``, seeded from numpy, picks the
words, because per-call numpy scalars would make the full preset ~10x slower.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

PRESETS = {"small": 1_250, "full": 12_500}  # reviews per class and split; full = the real 25,000 + 25,000

# IMDB's rating mix (train split counts), by class.
RATINGS = {"neg": {1: 5100, 2: 2284, 3: 2420, 4: 2696}, "pos": {7: 2496, 8: 3009, 9: 2263, 10: 4732}}
LENGTH_MEDIAN, LENGTH_SIGMA = 200, 0.75  # log-normal tokens: mean = 200 * e^(0.75^2/2) ~ 265
MIN_TOKENS, MAX_TOKENS = 10, 2_700
SENTIMENT_SHARE = 0.35  # of sentences
PARAGRAPH_BREAK = 0.12  # chance of <br /><br /> between two sentences

POSITIVE = [
    "good",
    "great",
    "excellent",
    "wonderful",
    "brilliant",
    "superb",
    "enjoyable",
    "moving",
    "charming",
    "delightful",
    "gripping",
    "beautiful",
    "clever",
    "memorable",
    "funny",
    "touching",
    "solid",
    "impressive",
    "fantastic",
    "engaging",
    "stunning",
    "witty",
]
NEGATIVE = [
    "bad",
    "awful",
    "terrible",
    "boring",
    "dull",
    "dreadful",
    "weak",
    "poor",
    "tedious",
    "clumsy",
    "predictable",
    "silly",
    "forgettable",
    "painful",
    "lazy",
    "confusing",
    "flat",
    "bland",
    "annoying",
    "disappointing",
    "pointless",
    "messy",
]
ASPECTS = [
    "acting",
    "plot",
    "script",
    "story",
    "direction",
    "dialogue",
    "soundtrack",
    "ending",
    "cinematography",
    "pacing",
    "editing",
    "score",
    "cast",
    "lead performance",
    "humour",
    "camera work",
    "screenplay",
    "premise",
    "final act",
    "special effects",
    "villain",
    "first half",
    "romance",
    "photography",
]
FILM = ["film", "movie", "picture", "story", "production"]
INTENSIFIERS = ["", "", "", "really ", "very ", "truly ", "quite ", "rather ", "so "]
LINK = ["was", "is", "felt", "seemed"]
VERDICT = {
    1: [
        "Overall, I would recommend it.",
        "I would not hesitate to recommend it.",
        "Do not miss it.",
        "I will watch it again.",
        "Highly recommended.",
    ],
    -1: [
        "Overall, I would not recommend it.",
        "I can not recommend it.",
        "Do not waste your time.",
        "I will not watch it again.",
        "Avoid it.",
    ],
}

ROLES = [
    "detective",
    "teacher",
    "soldier",
    "widow",
    "farmer",
    "journalist",
    "nurse",
    "lawyer",
    "priest",
    "boxer",
    "pilot",
    "student",
    "painter",
    "singer",
    "thief",
    "doctor",
    "mechanic",
    "waitress",
    "sailor",
    "banker",
    "scientist",
    "cowboy",
    "spy",
    "chef",
    "miner",
    "dancer",
]
ACTIONS = [
    "moves to a small town",
    "returns home",
    "loses a job",
    "meets an old friend",
    "inherits a house",
    "joins the army",
    "travels across the country",
    "opens a restaurant",
    "investigates a murder",
    "falls in love",
    "runs away",
    "starts a band",
    "buys a boat",
    "writes a novel",
    "hides a secret",
    "searches for a brother",
    "takes over the family farm",
    "witnesses a robbery",
    "gets lost in the woods",
    "trains for a fight",
]
PLACES = [
    "Paris",
    "Chicago",
    "a small village",
    "the desert",
    "New York",
    "London",
    "a coastal town",
    "Texas",
    "Tokyo",
    "the mountains",
    "a café in Montréal",
    "Berlin",
    "a prison",
    "a hospital",
    "a ranch",
    "an island",
    "the suburbs",
    "Rome",
    "a mining town",
    "São Paulo",
]
WHEN = [
    "last night",
    "on a plane",
    "at a festival",
    "on late night television",
    "years ago",
    "on a rainy Sunday",
    "at the cinema",
    "on video",
    "with some friends",
    "after work",
]
RELATIVES = [
    "wife",
    "husband",
    "brother",
    "sister",
    "father",
    "mother",
    "son",
    "daughter",
    "friend",
    "roommate",
    "grandmother",
    "uncle",
]
SOURCES = ["novel", "play", "comic book", "short story", "true story", "earlier version"]
SYLLABLES = [
    "ka",
    "lo",
    "mar",
    "vin",
    "te",
    "sa",
    "ro",
    "bel",
    "dan",
    "el",
    "mi",
    "no",
    "ra",
    "tor",
    "an",
    "li",
    "go",
    "ver",
    "su",
    "win",
    "ha",
    "del",
    "cor",
    "ny",
    "pe",
    "ist",
    "wen",
    "ol",
]


def _name(rnd: random.Random) -> str:
    """An invented name: the long tail of rare words real reviews have."""
    return "".join(rnd.choice(SYLLABLES) for _ in range(rnd.randint(2, 3))).capitalize()


def _neutral(rnd: random.Random) -> str:
    n, film, role = _name, rnd.choice(FILM), rnd.choice(ROLES)
    a = "an" if role[0] in "aeiou" else "a"
    templates = (
        lambda: f"I saw this {film} {rnd.choice(WHEN)}.",
        lambda: f"{n(rnd)} {n(rnd)} plays {a} {role} who {rnd.choice(ACTIONS)}.",
        lambda: f"The {film} is set in {rnd.choice(PLACES)} in the {rnd.randint(3, 9)}0s.",
        lambda: f"It was directed by {n(rnd)} {n(rnd)} and written by {n(rnd)} {n(rnd)}.",
        lambda: f"The running time is about {rnd.randint(80, 180)} minutes.",
        lambda: f"{n(rnd)} also appears as {a} {role} from {rnd.choice(PLACES)}.",
        lambda: f"The story follows {a} {role} who {rnd.choice(ACTIONS)} after the war.",
        lambda: f"There is a long scene where {n(rnd)} {rnd.choice(ACTIONS)} in {rnd.choice(PLACES)}.",
        lambda: f"I had read the {rnd.choice(SOURCES)} before I saw the {film}.",
        lambda: f"My {rnd.choice(RELATIVES)} wanted to see it because of {n(rnd)} {n(rnd)}.",
        lambda: f"It came out in {rnd.randint(1950, 2009)} and was shown on cable a few times.",
        lambda: f"Later the {role} {rnd.choice(ACTIONS)}, and {n(rnd)} has to decide what to do.",
        lambda: f"Most of it was filmed in {rnd.choice(PLACES)} over {rnd.randint(2, 12)} weeks.",
        lambda: f"The {film} has {rnd.randint(2, 9)} main characters and a narrator.",
    )
    return rnd.choice(templates)()


def _adjective(rnd: random.Random, polarity: int) -> str:
    words = POSITIVE if polarity > 0 else NEGATIVE
    # Zipf-like: a few adjectives are common, most are rare, as in real text.
    return words[min(int(rnd.paretovariate(1.2)) - 1, len(words) - 1)]


def _sentiment(rnd: random.Random, polarity: int, negation_share: float) -> str:
    """One sentence that expresses ``polarity`` (+1 / -1)."""
    aspect, link, film = rnd.choice(ASPECTS), rnd.choice(LINK), rnd.choice(FILM)
    kind = rnd.random()
    if kind < 0.18:  # contrast: only the later clause counts
        other = rnd.choice([a for a in ASPECTS if a != aspect])
        first, second = _adjective(rnd, -polarity), _adjective(rnd, polarity)
        if rnd.random() < 0.5:
            return f"The {other} {link} {first}, but the {aspect} {link} {rnd.choice(INTENSIFIERS)}{second}."
        return f"Although the {other} {link} {first}, the {aspect} {link} {second}."
    if kind < 0.18 + negation_share:  # negation flips the adjective
        word = _adjective(rnd, -polarity)
        return rnd.choice(
            (
                f"The {aspect} {link} not {word}.",
                f"I did not find the {aspect} {word} at all.",
                f"This is not a {word} {film}.",
                f"The {aspect} was never {word}.",
                f"Nobody could call the {aspect} {word}.",
            )
        )
    word = _adjective(rnd, polarity)
    return rnd.choice(
        (
            f"The {aspect} {link} {rnd.choice(INTENSIFIERS)}{word}.",
            f"I found the {aspect} {word}.",
            f"This is a {word} {film}.",
            f"What a {word} {film}!",
            f"The {aspect} is {word} from start to finish.",
        )
    )


def compose_review(rnd: random.Random, polarity: int, n_tokens: int, strength: float) -> str:
    """A review of about ``n_tokens`` whitespace tokens leaning to ``polarity`` (+1 / -1).

    ``strength`` in [0, 1] (0 for ratings 4/7, 1 for 1/10): stronger reviews
    have fewer units that disagree with the rating and fewer negations.
    """
    agree = 0.74 + 0.16 * strength
    negation_share = 0.30 - 0.08 * strength
    sentences: list[str] = []
    count = 0
    while count < n_tokens:
        if rnd.random() < SENTIMENT_SHARE:
            sentence = _sentiment(rnd, polarity if rnd.random() < agree else -polarity, negation_share)
        else:
            sentence = _neutral(rnd)
        sentences.append(sentence)
        count += sentence.count(" ") + 1
    if rnd.random() < 0.5:
        sentences.append(rnd.choice(VERDICT[polarity]))
    parts = [sentences[0]]
    for sentence in sentences[1:]:
        parts.append("<br /><br />" if rnd.random() < PARAGRAPH_BREAK else " ")
        parts.append(sentence)
    return "".join(parts)


def review_plan(rng: np.random.Generator, label: str, n: int, label_noise: float) -> dict[str, np.ndarray]:
    """Ratings, token counts and which reviews are written for the other class.

    Unlabelled (``unsup``) reviews get a hidden rating of either class.
    """
    mix = RATINGS[label] if label != "unsup" else {**RATINGS["neg"], **RATINGS["pos"]}
    ratings = np.array(list(mix))
    weights = np.array(list(mix.values()), dtype=float)
    lengths = rng.lognormal(np.log(LENGTH_MEDIAN), LENGTH_SIGMA, size=n)
    return {
        "rating": rng.choice(ratings, size=n, p=weights / weights.sum()),
        "tokens": np.clip(np.rint(lengths), MIN_TOKENS, MAX_TOKENS).astype(int),
        "flipped": rng.random(n) < label_noise,
    }


def write_sample(destination: Path, seed: int, *, per_class: int, unsup: int = 0, label_noise: float = 0.03) -> None:
    """Write the ``aclImdb`` folder tree at ``destination``: ``{train,test}/{pos,neg}`` (``per_class``
    reviews each) and ``unsup`` unlabelled ``train/unsup`` reviews."""
    _write_tree(destination, seed, per_class, unsup, label_noise)


def generate(root: Path, seed: int, per_class: int, *, unsup: int = 0, label_noise: float = 0.03) -> int:
    """``write_sample`` into ``root/aclImdb``; return the number of files written."""
    return _write_tree(root / "aclImdb", seed, per_class, unsup, label_noise)


def _write_tree(tree: Path, seed: int, per_class: int, unsup: int, label_noise: float) -> int:
    written = 0
    for split_index, split in enumerate(("train", "test")):
        # One stream per split: changing the test size leaves the training reviews alone.
        rng = np.random.default_rng([seed, split_index])
        rnd = random.Random(int(rng.integers(2**63)))
        folders = [("neg", per_class), ("pos", per_class)] + ([("unsup", unsup)] if split == "train" else [])
        for label, n in folders:
            if n == 0:
                continue
            folder = tree / split / label
            folder.mkdir(parents=True, exist_ok=True)
            plan = review_plan(rng, label, n, label_noise)
            for i in range(n):
                rating = int(plan["rating"][i])
                polarity = (1 if rating > 5 else -1) * (-1 if plan["flipped"][i] else 1)
                strength = (abs(rating - 5.5) - 1.5) / 3  # 4/7 -> 0, 1/10 -> 1
                text = compose_review(rnd, polarity, int(plan["tokens"][i]), strength)
                name = f"{i}_{0 if label == 'unsup' else rating}.txt"
                (folder / name).write_bytes(text.encode("utf-8"))
                written += 1
    return written
