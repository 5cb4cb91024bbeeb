"""recipes/default/reference_score.py: the reference and the greedy output scored teacher-forced."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import DATA, REPO

SCRIPT = REPO / "recipes" / "default" / "reference_score.py"
sys.path.insert(0, str(SCRIPT.parent))
from reference_score import place_reference  # noqa: E402  (a recipe script, not a package module)


class Pieces:
    """A tokenizer of five words; "book" is two pieces."""

    PIECES = ["<blank>", " a", " bo", "ok", " c", " d", " x"]
    SPELLING = {"a": [1], "book": [2, 3], "c": [4], "d": [5], "x": [6]}

    def decode(self, ids):
        return "".join(self.PIECES[i] for i in ids)

    def encode(self, text):
        return [i for w in text.split() for i in self.SPELLING[w]]


def test_reference_follows_the_output_words_it_aligns_with():
    tok = Pieces()
    # output "a book c": a in chunk 1, book over chunks 3 and 4 (two pieces), c in chunk 6
    words = [([1], [1]), ([2, 3], [3, 4]), ([4], [6])]
    pieces, chunks = place_reference(["a", "x", "c", "d"], words, tok, last_chunk=9)
    assert pieces == [1, 6, 4, 5]
    # a and c stay exactly where they were written; x takes book's first chunk; d, missed at the end, the last
    assert chunks == [1, 3, 6, 9]
    # a word the output lacks in the middle goes where the next output word began
    pieces, chunks = place_reference(["a", "d", "book", "c"], words, tok, last_chunk=9)
    assert (pieces, chunks) == ([1, 5, 2, 3, 4], [1, 3, 3, 4, 6])
    # output identical to the reference: its own pieces and chunks, unchanged
    assert place_reference(["a", "book", "c"], words, tok, last_chunk=9) == ([1, 2, 3, 4], [1, 3, 4, 6])


@pytest.mark.skipif(not (DATA / "dev-real" / "jfk.flac").exists(), reason="shared speech data not found")
def test_scores_the_reference_and_the_output_on_real_speech(tmp_path):
    from reallm_cli.audio.source import load_audio
    from reallm_cli.engine import Recognizer

    jfk = DATA / "dev-real" / "jfk.flac"
    rec = Recognizer.load(None, precision="fp32")
    own = " ".join(w.text for w in rec.transcribe_array(load_audio(jfk)))
    truth = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
    if own == truth:  # the model is right: score a sentence one word off it instead, which must differ
        truth = truth.replace("ask not", "ask north")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": i, "audio": str(jfk), "text": t}) + "\n"
                                for i, t in (("truth", truth), ("own", own))))
    r = subprocess.run([sys.executable, str(SCRIPT), str(manifest)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    line = {m[0]: m[1:] for m in re.findall(r"^(\w+): ([\w ]+): -log p\(output\) ([\d.]+), -log p\(reference\) "
                                             r"([\d.]+), output pieces re-derived (\d+) %$", r.stdout, re.M)}
    assert set(line) == {"truth", "own"}, r.stdout
    # scored the way the engine decoded, every output piece is the decoder's own argmax again
    assert line["truth"][3] == line["own"][3] == "100"
    # its own output as the reference: the same sequence, the same score
    assert line["own"][0] == "right" and line["own"][1] == line["own"][2]
    # the true text is a different sequence over the same frames, with its own finite score
    kind, out_nll, ref_nll = line["truth"][:3]
    assert out_nll == line["own"][1] and ref_nll != out_nll
    assert (kind == "SEARCH ERROR") == (float(ref_nll) < float(out_nll))
    assert "2 utterances:" in r.stdout


def test_a_missing_manifest_is_one_line_and_status_2(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "none.jsonl")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
