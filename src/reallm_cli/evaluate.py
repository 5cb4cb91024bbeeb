"""Evaluation through the streaming engine: WER per group, real-time factor, and emission delay.

Every utterance is streamed through a fresh ``Session`` exactly as ``reallm transcribe`` does; the
hypothesis and the reference are both normalised with ``reallm_cli.text.normalize_text``.
Emission delay of a word = the stream time by which its text was shown minus the time the word ended
in a reference alignment (JSONL: ``{"id", "words": [{"word", "end_s"}, ...]}``), over matched words.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jiwer
import numpy as np

from reallm_cli.engine import Recognizer
from reallm_cli.errors import ReallmError
from reallm_cli.text import normalize_text
from reallm_cli.train.manifest import ManifestEntry, read_manifest
from reallm_cli.transcribe import transcribe_file


@dataclass(frozen=True)
class GroupScore:
    group: str
    utterances: int
    words: int
    wer: float
    substitutions: int
    deletions: int
    insertions: int


@dataclass(frozen=True)
class EvalReport:
    manifest: str
    model: str
    utterances: int
    audio_s: float
    compute_s: float
    rtf: float
    wer: float
    groups: tuple[GroupScore, ...]
    delay_p50_s: float | None
    delay_p95_s: float | None
    delay_words: int
    results: tuple[dict, ...] = field(default=(), repr=False)
    precision: str = "fp32"  # what the model's linear layers ran in
    # median |start error| and |end error| of matched words against reference times that have both
    word_start_err_p50_s: float | None = None
    word_end_err_p50_s: float | None = None
    word_time_words: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def group_of(entry: ManifestEntry, manifest_dir: Path, key: str) -> str:
    """``dir``: the first folder of the audio path under the manifest's folder (else the file's stem)."""
    if key == "none":
        return "all"
    if key == "id":
        return entry.id
    try:
        rel = entry.audio.relative_to(manifest_dir)
    except ValueError:
        rel = Path(entry.audio.name)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _score(refs: list[str], hyps: list[str]) -> tuple[float, int, int, int, int]:
    out = jiwer.process_words(refs, [h if h else "" for h in hyps])
    n = out.hits + out.substitutions + out.deletions
    return ((out.substitutions + out.deletions + out.insertions) / max(1, n), n,
            out.substitutions, out.deletions, out.insertions)


def _spread(texts: list[str]) -> tuple[list[str], list[int]]:
    """Normalised words of ``texts`` and, for each, the index of the text it came from ("1990" gives two)."""
    words, origin = [], []
    for i, t in enumerate(texts):
        parts = normalize_text(t).split()
        words += parts
        origin += [i] * len(parts)
    return words, origin


def _matched_delays(ref_words: list[dict], hyp_words) -> list[float]:
    """Emission delays of hypothesis words that match a reference word (by a word-level alignment). A word
    that normalises to several ("1990", "twenty-one") is matched through them, and shown when its last one is."""
    ref, ref_owner = _spread([w["word"] for w in ref_words])
    hyp, hyp_owner = _spread([w.text for w in hyp_words])
    if not ref or not hyp:
        return []
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    shown: dict[int, float] = {}  # reference word -> when the last hypothesis word matching it was shown
    for chunk in out.alignments[0]:
        if chunk.type != "equal":
            continue
        for k in range(chunk.ref_end_idx - chunk.ref_start_idx):
            i, j = ref_owner[chunk.ref_start_idx + k], hyp_owner[chunk.hyp_start_idx + k]
            shown[i] = max(shown.get(i, hyp_words[j].emit_s), hyp_words[j].emit_s)
    return [shown[i] - float(ref_words[i]["end_s"]) for i in sorted(shown)]


def word_time_errors(ref_words: list[dict], hyp_words) -> list[tuple[float, float]]:
    """(start error, end error) in seconds, hypothesis minus reference, of every hypothesis word that
    matches a reference word with both times (a word-level alignment of the normalised texts; a word
    that normalises into several, "1990", matches only whole)."""
    ref, r_of = _spread([w["word"] for w in ref_words])
    hyp, h_of = _spread([w.text for w in hyp_words])
    if not ref or not hyp:
        return []
    r_n, h_n = np.bincount(r_of), np.bincount(h_of)
    errors = []
    for chunk in jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0]:
        if chunk.type != "equal":
            continue
        for k in range(chunk.ref_end_idx - chunk.ref_start_idx):
            i, j = r_of[chunk.ref_start_idx + k], h_of[chunk.hyp_start_idx + k]
            r, h = ref_words[i], hyp_words[j]
            if r_n[i] == 1 and h_n[j] == 1 and "start_s" in r and "end_s" in r:
                errors.append((h.start_s - float(r["start_s"]), h.end_s - float(r["end_s"])))
    return errors


def evaluate(
    recognizer: Recognizer,
    manifest: str | Path,
    model_name: str = "",
    group_by: str = "dir",
    alignments: str | Path | None = None,
    limit: int | None = None,
    on_utterance: Callable[[int, int, dict], None] | None = None,
) -> EvalReport:
    m = read_manifest(manifest, on_error="skip", probe_duration=True)
    if not m.entries:
        raise ReallmError(f"{manifest}: no usable utterances")
    ref_align: dict[str, list[dict]] = {}
    if alignments:
        for line in Path(alignments).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                ref_align[r["id"]] = r["words"]
    entries = m.entries[:limit] if limit else m.entries
    base = Path(manifest).resolve().parent
    results, delays, time_errors = [], [], []
    audio_s = compute_s = 0.0
    for i, e in enumerate(entries):
        tr = transcribe_file(recognizer, str(e.audio))
        words = tr.words
        hyp = normalize_text(" ".join(w.text for w in words))
        ref = normalize_text(e.text)
        audio_s += tr.duration_s
        compute_s += tr.compute_s
        if e.id in ref_align:
            delays.extend(_matched_delays(ref_align[e.id], words))
            time_errors.extend(word_time_errors(ref_align[e.id], words))
        row = {"id": e.id, "group": group_of(e, base, group_by), "ref": ref, "hyp": hyp,
               "duration_s": round(tr.duration_s, 3)}
        results.append(row)
        if on_utterance:
            on_utterance(i + 1, len(entries), row)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_group[r["group"]].append(r)
    groups = []
    for g, rows in sorted(by_group.items()):
        wer, n, s, d, ins = _score([r["ref"] for r in rows], [r["hyp"] for r in rows])
        groups.append(GroupScore(g, len(rows), n, round(wer, 4), s, d, ins))
    wer, *_ = _score([r["ref"] for r in results], [r["hyp"] for r in results])
    return EvalReport(
        manifest=str(manifest), model=model_name, utterances=len(results), audio_s=round(audio_s, 2),
        compute_s=round(compute_s, 2), rtf=round(compute_s / max(audio_s, 1e-9), 4), wer=round(wer, 4),
        groups=tuple(groups),
        delay_p50_s=round(float(np.percentile(delays, 50)), 3) if delays else None,
        delay_p95_s=round(float(np.percentile(delays, 95)), 3) if delays else None,
        delay_words=len(delays), results=tuple(results), precision=recognizer.precision,
        word_start_err_p50_s=_median_abs([e[0] for e in time_errors]),
        word_end_err_p50_s=_median_abs([e[1] for e in time_errors]), word_time_words=len(time_errors),
    )


def _median_abs(values: list[float]) -> float | None:
    return round(float(np.median(np.abs(values))), 3) if values else None
