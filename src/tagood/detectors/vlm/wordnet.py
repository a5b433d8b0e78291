"""Candidate negative labels: nouns and adjectives read from a WordNet database (Miller, "WordNet:
a lexical database for English", CACM 1995), e.g. the Debian package ``wordnet-base``
(/usr/share/wordnet/index.noun, index.adj), or from a user word-list file.

NegLabel (Jiang et al., ICLR 2024) and KR-NFT (Zhu et al., ACM MM 2025) mine their negative labels
from this corpus.
"""

from __future__ import annotations

import os
from pathlib import Path

from tagood.errors import InputError

#: Where Debian's ``wordnet-base`` puts the database (override with $TAGOOD_WORDNET or ``root=``).
WORDNET_DEFAULT_DIR = "/usr/share/wordnet"


class WordNetError(InputError):
    """The WordNet database or word list could not be read; the message says what to do."""


def wordnet_dir(root: str | Path | None = None) -> Path:
    d = Path(root or os.environ.get("TAGOOD_WORDNET") or WORDNET_DEFAULT_DIR)
    if not (d / "index.noun").is_file():
        raise WordNetError(f"WordNet index {d / 'index.noun'} not found; install it (`apt-get install wordnet-base`), "
                           "set $TAGOOD_WORDNET to the folder holding index.noun / index.adj, or pass a word-list file")
    return d


def read_index(path: str | Path) -> list[str]:
    """Lemmas of one WordNet ``index.<pos>`` file, in file order, underscores turned into spaces.

    Each data line starts with ``lemma pos synset_cnt ...``; licence lines start with spaces.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise WordNetError(f"cannot read WordNet index {p}: {e}") from e
    out = []
    for line in lines:
        if not line or line[0] == " ":
            continue
        parts = line.split(" ", 2)
        if len(parts) < 2 or parts[1] not in ("n", "a", "v", "r", "s"):
            raise WordNetError(f"{p}: unexpected line {line[:60]!r}; is this a WordNet index.<pos> file?")
        out.append(parts[0].replace("_", " "))
    return out


def wordnet_words(pos: tuple[str, ...] = ("noun", "adj"), root: str | Path | None = None) -> list[str]:
    """Unique lemmas (first occurrence order) of the WordNet indexes ``pos`` (``noun``, ``adj``, ``verb``, ``adv``)."""
    d = wordnet_dir(root)
    seen: dict[str, None] = {}
    for name in pos:
        for w in read_index(d / f"index.{name}"):
            seen.setdefault(w, None)
    return list(seen)


def read_word_list(path: str | Path) -> list[str]:
    """Unique non-empty lines of a UTF-8 word-list file (``#`` starts a comment line)."""
    p = Path(path)
    try:
        words = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except OSError as e:
        raise WordNetError(f"cannot read the word list {p}: {e}; give a UTF-8 text file with one label per line") from e
    out = list(dict.fromkeys(w for w in words if w and not w.startswith("#")))
    if not out:
        raise WordNetError(f"word list {p} holds no labels; give one label per line")
    return out


#: WordNet's lexicographer files by number (``lexnames(5WN)``); the second field of a ``data.<pos>`` line.
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)


def read_data_lexfiles(path: str | Path) -> list[tuple[str, str]]:
    """``(lemma, lexicographer file)`` for every word of every synset of a WordNet ``data.<pos>`` file,
    in file order; underscores become spaces and adjective markers such as ``(a)``/``(ip)`` are dropped.

    A data line is ``offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id ...] p_cnt ...``.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise WordNetError(f"cannot read WordNet data file {p}: {e}") from e
    out: list[tuple[str, str]] = []
    for line in lines:
        if not line or line[0] == " ":
            continue
        parts = line.split(" ", 4 + 2 * 256)
        try:
            lex, n = int(parts[1]), int(parts[3], 16)
            words = [parts[4 + 2 * i] for i in range(n)]
        except (IndexError, ValueError) as e:
            raise WordNetError(f"{p}: unexpected line {line[:60]!r}; is this a WordNet data.<pos> file?") from e
        name = LEXNAMES[lex] if 0 <= lex < len(LEXNAMES) else str(lex)
        for w in words:
            w = w.split("(", 1)[0] if w.endswith(")") else w
            out.append((w.replace("_", " "), name))
    return out


def wordnet_words_by_lexfile(pos: str, exclude: tuple[str, ...] = (), root: str | Path | None = None) -> list[str]:
    """Unique lemmas (first occurrence order) of ``data.<pos>`` (``noun``, ``adj``, ...) that occur in at
    least one synset whose lexicographer file is not in ``exclude`` (e.g. ``("noun.person",)``)."""
    d = wordnet_dir(root)
    bad = set(exclude)
    seen: dict[str, None] = {}
    for w, lex in read_data_lexfiles(d / f"data.{pos}"):
        if lex not in bad:
            seen.setdefault(w, None)
    return list(seen)
