"""Review text -> token ids: HTML stripping, the tokenizer, the vocabulary (tutorial 04).

Written once and used by the ``tfrecords_imdb`` stage and by anything that
scores new text, so a model always sees text prepared exactly as in training.

Tokenizer (no data to download, unlike NLTK's punkt): HTML tags such as
``<br />`` become spaces, entities are unescaped (``&amp;`` -> ``&``), the text
is lower-cased, and a compiled regular expression splits it the Penn Treebank
way, roughly:

- words keep inner hyphens (``well-made``) and are split from punctuation;
- contractions split before the clitic: ``didn't`` -> ``did n't``,
  ``can't`` -> ``ca n't`` (the Treebank convention), ``it's`` -> ``it 's``,
  ``they'll`` -> ``they 'll``; curly apostrophes count as straight ones;
- numbers keep their decimal point and thousands separators (``3.5``, ``1,000``);
- an ellipsis (two or more dots) is one token; every other symbol is a token
  of its own (``!!`` -> ``! !``).

Vocabulary: built from the training split only; tokens seen at least
``min_word_frequency`` times, most frequent first, ties broken by the token
(so the same reviews always give the same ids). Ids 0, 1, 2 are reserved for
padding, unknown and end of review; the file is plain UTF-8 text, one token
per line, the line number (from 0) being the id.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2
RESERVED = (PAD, UNK, EOS)  # ids 0, 1, 2, in this order

_TAG = re.compile(r"<[^>]*>")
# Alternatives are tried in order at each position; the first that matches wins.
_TOKEN = re.compile(
    r"""
      n't\b                      # negation clitic, split off by the pre-pass in tokenize()
    | '(?:s|m|d|ll|re|ve)\b      # other clitics: 's 'm 'd 'll 're 've
    | \d+(?:[.,]\d+)+            # 3.5, 1,000
    | \w+(?:-\w+)*               # words, numbers, hyphenated words
    | \.{2,}                     # ellipsis
    | [^\w\s]                    # any other symbol, one per token
    """,
    re.VERBOSE,
)


def strip_tags(text: str) -> str:
    """Text with HTML tags such as ``<br />`` replaced by spaces."""
    return _TAG.sub(" ", text)


def clean_html(text: str) -> str:
    """Text with HTML tags replaced by spaces and entities unescaped."""
    text = strip_tags(text)
    return html.unescape(text) if "&" in text else text  # most reviews have no entity


def tokenize(text: str) -> list[str]:
    """The tokens of a raw review (HTML and all), lower-cased; see the module docstring."""
    # Chained str.replace, not str.translate: several times faster on these texts.
    text = clean_html(text).lower().replace("\u2019", "'").replace("\u2018", "'")
    # "didn't" -> "did n't": one C-level replace is cheaper than a look-ahead
    # alternative the regex would try at every word.
    return _TOKEN.findall(text.replace("n't", " n't"))


@dataclass(frozen=True)
class Vocabulary:
    """Tokens by id (``tokens[i]`` has id ``i``) and the reverse mapping."""

    tokens: tuple[str, ...]
    ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.tokens[: len(RESERVED)]) != RESERVED:
            raise ValueError(f"a vocabulary starts with the reserved tokens {RESERVED}")
        ids = {token: i for i, token in enumerate(self.tokens)}
        if len(ids) != len(self.tokens):
            duplicates = sorted(t for t, n in Counter(self.tokens).items() if n > 1)
            raise ValueError(f"duplicate tokens in the vocabulary: {duplicates[:5]}")
        object.__setattr__(self, "ids", ids)

    def __len__(self) -> int:
        return len(self.tokens)


def build_vocabulary(token_counts: Counter[str], min_word_frequency: int = 5) -> Vocabulary:
    """The reserved tokens, then every token counted at least ``min_word_frequency`` times,
    by count (descending), ties by token (ascending)."""
    if min_word_frequency < 1:
        raise ValueError(f"min_word_frequency must be >= 1 (got {min_word_frequency})")
    kept = [(-n, t) for t, n in token_counts.items() if n >= min_word_frequency and t not in RESERVED]
    kept.sort()
    return Vocabulary(RESERVED + tuple(t for _, t in kept))


def count_tokens(texts: Iterable[str]) -> Counter[str]:
    """Token counts over raw reviews (the input of :func:`build_vocabulary`)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokenize(text))
    return counts


def save_vocabulary(vocab: Vocabulary, path: Path) -> None:
    """Write one token per line (UTF-8, ``\\n`` line ends): line ``i`` holds id ``i``."""
    for token in vocab.tokens:
        # The tokenizer never yields whitespace; a caller-made vocabulary might.
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"token {token!r}: empty or contains whitespace, cannot be saved one per line")
    path.write_text("".join(f"{t}\n" for t in vocab.tokens), encoding="utf-8")


def load_vocabulary(path: Path) -> Vocabulary:
    """Read a file written by :func:`save_vocabulary`."""
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        raise ValueError(f"{path}: not a vocabulary file (expected one token per line)")
    # split("\n"), not splitlines(): the latter also breaks at \x1c, \u2028, ...
    try:
        return Vocabulary(tuple(text[:-1].split("\n")))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


class LocalIds(dict):
    """token -> a local id, the next one for each new token, in first-seen order (one dict lookup a token).

    A converter tokenizes before the vocabulary exists: it keeps local ids and maps
    them to the vocabulary's later through :func:`lookup_table`.
    """

    def __missing__(self, token: str) -> int:
        self[token] = index = len(self)
        return index


def lookup_table(types: Iterable[str], vocab: Vocabulary) -> np.ndarray:
    """The vocabulary id of each token type in order (``UNK_ID`` if absent), int32: local id -> id."""
    get = vocab.ids.get
    return np.array([get(t, UNK_ID) for t in types], dtype=np.int32)


def table_ids(local_ids: np.ndarray, table: np.ndarray, max_words: int = 700) -> list[int]:
    """The one id step of TFRecords and predict: the last ``max_words`` local ids, mapped through
    ``table`` (:func:`lookup_table`), then ``EOS_ID``.

    The last words are kept because reviews tend to end with the verdict.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1 (got {max_words})")
    ids = table[np.asarray(local_ids, dtype=np.int64)[-max_words:]].tolist()
    ids.append(EOS_ID)
    return ids


def token_ids(tokens: Sequence[str], vocab: Vocabulary, max_words: int = 700) -> list[int]:
    """Ids of the last ``max_words`` tokens (unknown ones -> ``UNK_ID``), then ``EOS_ID``."""
    local = LocalIds()
    local_ids = np.fromiter(map(local.__getitem__, tokens), dtype=np.int32, count=len(tokens))
    return table_ids(local_ids, lookup_table(local, vocab), max_words)


def encode(text: str, vocab: Vocabulary, max_words: int = 700) -> list[int]:
    """A raw review as model input: :func:`tokenize`, then :func:`token_ids`."""
    return token_ids(tokenize(text), vocab, max_words)


def length_stats(values: Iterable[int]) -> dict[str, float]:
    """min, median, mean, 95th percentile and max of review lengths (in tokens), for the reports."""
    array = np.asarray(list(values))
    return {
        "min": array.min(),
        "median": np.median(array),
        "mean": array.mean(),
        "p95": np.percentile(array, 95),
        "max": array.max(),
    }


def decode(ids: Iterable[int], vocab: Vocabulary) -> list[str]:
    """Tokens of ``ids`` (for looking at records); padding is dropped."""
    return [vocab.tokens[i] for i in ids if i != PAD_ID]
