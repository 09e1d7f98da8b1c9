"""Seeded synthetic corpus for the demo model.

Three patterns, so that different features and layers matter for different prompts:

- indirect-object identification (IOI), generated compositionally: an intro clause that names two
  people, optional filler sentences, and an action clause whose subject repeats one name and ends in
  "to"; the answer is the other name ("When Mary and John went to the store, John gave a drink to"
  -> " Mary"). Intro shapes (frame x predicate) and action shapes (adverb x verb phrase) combine
  freely, and the two names appear in either order and at varying distances.
- repeated random word sequences (induction): the second copy is predictable only by copying.
- simple facts about countries (capital, language): memorised look-ups.

A held-out split exists so that generalisation can be measured rather than assumed: some intro
shapes, some action shapes and 10% of the unordered name pairs never occur in training (every
single name, and every word, does). `heldout_ioi_examples` draws prompts whose intro shape, action
shape and name pair are all held out. Everything is driven by an explicit `random.Random`, so a
seed fixes the corpus.
"""

from __future__ import annotations

import itertools
import random
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from training.lexicon import FACTS, NAMES, OBJECTS, PLACES, SEQUENCE_WORDS

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class Frame:
    """An intro clause naming both people; `kind` says whether it ends in "," or "."."""

    text: str
    kind: Literal["sub", "main"]


# {A} and {B} are the two names (in either order), {pl}/{sg} a plural/singular predicate.
INTRO_FRAMES: dict[str, Frame] = {
    "when": Frame("When {A} and {B} {pl} the {place},", "sub"),
    "after": Frame("After {A} and {B} {pl} the {place},", "sub"),
    "while": Frame("While {A} and {B} {pl} the {place},", "sub"),
    "once": Frame("Once {A} and {B} {pl} the {place},", "sub"),
    "before": Frame("Before {A} and {B} {pl} the {place},", "sub"),
    "when_with": Frame("When {A} {sg} the {place} with {B},", "sub"),
    "after_with": Frame("After {A} {sg} the {place} with {B},", "sub"),
    "while_with": Frame("While {A} {sg} the {place} with {B},", "sub"),
    "time": Frame("{time}, {A} and {B} {pl} the {place}.", "main"),
    "time_with": Frame("{time}, {A} {sg} the {place} with {B}.", "main"),
    "then": Frame("Then, {A} and {B} {pl} the {place}.", "main"),
    "then_with": Frame("Then, {A} {sg} the {place} with {B}.", "main"),
    "plain": Frame("{A} and {B} {pl} the {place}.", "main"),
    "plain_with": Frame("{A} {sg} the {place} with {B}.", "main"),
    "met": Frame("{A} met {B} at the {place}.", "main"),
    "time_met": Frame("{time}, {A} met {B} at the {place}.", "main"),
    "time_visited": Frame("{time}, {A} visited {B} at the {place}.", "main"),
}

# (plural, singular) forms; each is followed by "the {place}".
PREDICATES: dict[str, tuple[str, str]] = {
    "went": ("went to", "went to"),
    "arrived": ("arrived at", "arrived at"),
    "were": ("were at", "was at"),
    "walked": ("walked to", "walked to"),
    "got": ("got to", "got to"),
    "stayed": ("stayed at", "stayed at"),
    "lunch": ("had lunch at", "had lunch at"),
    "spent": ("spent the day at", "spent the day at"),
    "drove": ("drove to", "drove to"),
    "working": ("were working at", "was working at"),
    "ran": ("ran to", "ran to"),
    "left": ("left", "left"),
}

TIMES = ("Yesterday", "Today", "Later", "Last week", "On Monday", "In the morning", "That evening")

# Sentences without names. A setting opens the text when the intro itself would start with a name
# (text-initial words get a different, space-less token, which IOI sentences never need).
SETTINGS = ("It was a {weather} day.", "The {place} was {state}.", "It was {hour}.")
FILLERS = (
    "They were {mood}.",
    "It was {hour}.",
    "The {place} was {state}.",
    "They talked for a while.",
    "Everyone was {mood}.",
)
WEATHER = ("sunny", "cold", "rainy", "warm", "long")
STATES = ("busy", "crowded", "quiet", "empty")
MOODS = ("tired", "happy", "hungry", "busy")
HOURS = ("late", "early")

# How the action sentence may open after an intro that ended with ".".
LEADS = ("", "Then ", "Then, ", "Later, ", "After that, ", "Afterwards, ")
ADVERBS = ("", "quickly ", "happily ", "finally ", "later ")

# Verb phrases ending in "to"; {obj} is an article plus an object.
ACTIONS: dict[str, str] = {
    "gave": "gave {obj} to",
    "handed": "handed {obj} to",
    "passed": "passed {obj} to",
    "threw": "threw {obj} to",
    "sent": "sent {obj} to",
    "brought": "brought {obj} to",
    "showed": "showed {obj} to",
    "sold": "sold {obj} to",
    "lent": "lent {obj} to",
    "offered": "offered {obj} to",
    "goodbye": "said goodbye to",
    "hello": "said hello to",
    "waved": "waved to",
    "talked": "talked to",
    "wrote": "wrote a letter to",
    "decided": "decided to give {obj} to",
    "wanted": "wanted to give {obj} to",
    "read": "read a story to",
}

FACT_TEMPLATES = (
    "The capital of {country} is {capital}.",
    "The city of {capital} is in {country}.",
    "The people of {country} speak {language}.",
    "In {country}, people speak {language}.",
)

# Mixture of the training stream: mostly IOI, the rest split between the two other patterns.
PATTERN_WEIGHTS: dict[str, float] = {"ioi": 0.7, "induction": 0.2, "fact": 0.1}

HELD_OUT_PERCENT_SHAPES = 15
HELD_OUT_PERCENT_PAIRS = 10
# A whole intro frame that training never sees (all its words occur in other frames).
HELD_OUT_FRAMES = ("time_with",)


def _stable_percentile(key: str) -> int:
    """A value in [0, 100) fixed by `key` alone (Python's `hash` is salted per process)."""
    return zlib.crc32(key.encode()) % 100


def _intro_shapes() -> list[tuple[str, str]]:
    """All (frame, predicate) combinations; frames without a predicate slot use predicate ""."""
    shapes = []
    for frame_key, frame in INTRO_FRAMES.items():
        has_predicate = "{pl}" in frame.text or "{sg}" in frame.text
        preds = list(PREDICATES) if has_predicate else [""]
        shapes.extend((frame_key, pred) for pred in preds)
    return shapes


def _action_shapes() -> list[tuple[str, str]]:
    """All (adverb, verb phrase) combinations."""
    return [(adverb, action) for adverb in ADVERBS for action in ACTIONS]


def _intro_is_held_out(shape: tuple[str, str]) -> bool:
    """Held out: the frames in `HELD_OUT_FRAMES`, and some (frame, predicate) combinations (never
    the only shape of a frame, so that each frame's own words occur in training)."""
    frame, pred = shape
    if frame in HELD_OUT_FRAMES:
        return True
    return pred != "" and _stable_percentile(f"intro/{frame}/{pred}") < HELD_OUT_PERCENT_SHAPES


def _action_is_held_out(shape: tuple[str, str]) -> bool:
    adverb, action = shape
    return _stable_percentile(f"action/{adverb}/{action}") < HELD_OUT_PERCENT_SHAPES


def pair_is_held_out(name_a: str, name_b: str) -> bool:
    """Whether this unordered name pair is reserved for evaluation."""
    first, second = sorted((name_a, name_b))
    return _stable_percentile(f"pair/{first}/{second}") < HELD_OUT_PERCENT_PAIRS


def intro_shapes(split: Split) -> list[tuple[str, str]]:
    """Intro (frame, predicate) shapes of one split."""
    return [s for s in _intro_shapes() if _intro_is_held_out(s) == (split == "heldout")]


def action_shapes(split: Split) -> list[tuple[str, str]]:
    """Action (adverb, verb phrase) shapes of one split."""
    return [s for s in _action_shapes() if _action_is_held_out(s) == (split == "heldout")]


@dataclass(frozen=True)
class IOIExample:
    """One IOI prompt: `prompt` ends with "to", the answer is " " + `io_name`."""

    prompt: str
    io_name: str
    s_name: str
    intro_shape: tuple[str, str]
    action_shape: tuple[str, str]

    @property
    def answer(self) -> str:
        return " " + self.io_name

    @property
    def text(self) -> str:
        """The full training sentence, answer included."""
        return f"{self.prompt}{self.answer}."


def _with_article(rng: random.Random, noun: str) -> str:
    article = rng.choice(("a", "the"))
    if article == "a" and noun[0] in "aeiou":
        article = "an"
    return f"{article} {noun}"


def _fill(rng: random.Random, template: str) -> str:
    """Fill the non-name slots of a filler or setting sentence."""
    return template.format(
        weather=rng.choice(WEATHER),
        place=rng.choice(PLACES),
        state=rng.choice(STATES),
        mood=rng.choice(MOODS),
        hour=rng.choice(HOURS),
    )


def _name_pair(rng: random.Random, split: Split) -> tuple[str, str]:
    while True:
        io_name, s_name = rng.sample(NAMES, 2)
        if pair_is_held_out(io_name, s_name) == (split == "heldout"):
            return io_name, s_name


def ioi_example(rng: random.Random, split: Split = "train") -> IOIExample:
    """Draw one IOI prompt whose shapes and name pair all belong to `split`."""
    intro_shape = rng.choice(intro_shapes(split))
    action_shape = rng.choice(action_shapes(split))
    io_name, s_name = _name_pair(rng, split)
    first, second = (io_name, s_name) if rng.random() < 0.5 else (s_name, io_name)

    frame_key, pred_key = intro_shape
    frame = INTRO_FRAMES[frame_key]
    plural, singular = PREDICATES.get(pred_key, ("", ""))
    intro = frame.text.format(
        A=first, B=second, pl=plural, sg=singular, place=rng.choice(PLACES), time=rng.choice(TIMES)
    )
    sentences = [intro]
    if frame.text.startswith("{A}"):
        sentences.insert(0, _fill(rng, rng.choice(SETTINGS)))
    lead = ""
    if frame.kind == "main":
        sentences.extend(_fill(rng, rng.choice(FILLERS)) for _ in range(rng.choice((0, 0, 1, 2))))
        lead = rng.choice(LEADS)

    adverb, action_key = action_shape
    action = ACTIONS[action_key].format(obj=_with_article(rng, rng.choice(OBJECTS)))
    sentences.append(f"{lead}{s_name} {adverb}{action}")
    return IOIExample(" ".join(sentences), io_name, s_name, intro_shape, action_shape)


def induction_text(rng: random.Random) -> str:
    """A random word, then a random word sequence twice: only copying predicts the second copy."""
    words = rng.sample(SEQUENCE_WORDS, rng.randint(5, 13))
    first, sequence = words[0], words[1:]
    return " ".join([first, *sequence, *sequence])


def fact_text(rng: random.Random) -> str:
    country, capital, language = rng.choice(FACTS)
    template = rng.choice(FACT_TEMPLATES)
    return template.format(country=country, capital=capital, language=language)


@dataclass(frozen=True)
class Document:
    """One corpus document; for IOI documents the answer is the token before the final "."."""

    text: str
    pattern: Literal["ioi", "induction", "fact"]


def corpus_document(rng: random.Random, split: Split = "train") -> Document:
    """One document of the mixed corpus (IOI sentences come from `split`)."""
    pattern = rng.choices(list(PATTERN_WEIGHTS), weights=list(PATTERN_WEIGHTS.values()))[0]
    if pattern == "ioi":
        return Document(ioi_example(rng, split).text, "ioi")
    if pattern == "induction":
        return Document(induction_text(rng), "induction")
    return Document(fact_text(rng), "fact")


def corpus_stream(seed: int, split: Split = "train") -> Iterator[str]:
    """An endless stream of mixed-corpus documents, fixed by `seed`."""
    rng = random.Random(seed)
    while True:
        yield corpus_document(rng, split).text


def corpus_texts(n: int, seed: int, split: Split = "train") -> list[str]:
    """`n` documents of the mixed corpus, fixed by `seed`."""
    return list(itertools.islice(corpus_stream(seed, split), n))


def heldout_ioi_examples(n: int, seed: int = 1234) -> list[IOIExample]:
    """IOI prompts whose intro shape, action shape and name pair never occur in training."""
    rng = random.Random(seed)
    return [ioi_example(rng, "heldout") for _ in range(n)]


def fact_prompts() -> list[tuple[str, str]]:
    """(prompt, answer) for every capital fact, e.g. ("The capital of France is", " Paris")."""
    return [(f"The capital of {country} is", f" {capital}") for country, capital, _ in FACTS]


def induction_prompts(n: int, seed: int = 4321) -> list[tuple[str, str]]:
    """(prompt, answer) pairs that stop inside the second copy of a fresh repeated sequence."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        words = induction_text(rng).split(" ")
        length = (len(words) - 1) // 2
        stop = 1 + length + rng.randint(1, length - 1)
        prompts.append((" ".join(words[:stop]), " " + words[stop]))
    return prompts


def _template_words(template: str) -> Iterator[str]:
    yield from re.findall(r"[A-Za-z]+|[^\sA-Za-z]", re.sub(r"\{\w+\}", " ", template))


def vocabulary() -> list[str]:
    """Every word and punctuation mark the corpus can produce, sorted."""
    templates = [
        *(frame.text for frame in INTRO_FRAMES.values()),
        *(form for forms in PREDICATES.values() for form in forms),
        *TIMES,
        *SETTINGS,
        *FILLERS,
        *LEADS,
        *ADVERBS,
        *ACTIONS.values(),
        *FACT_TEMPLATES,
        "a an the",
    ]
    words = {word for template in templates for word in _template_words(template)}
    facts = {word for fact in FACTS for word in fact}
    lowercase = {*WEATHER, *STATES, *MOODS, *HOURS, *PLACES, *OBJECTS, *SEQUENCE_WORDS}
    names = set(NAMES)
    clashes = names & (words | facts | lowercase)
    assert not clashes, f"names that are also other words: {sorted(clashes)}"
    return sorted(words | facts | lowercase | names)
