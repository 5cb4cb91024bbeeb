"""Offline voices and augmentation used to make synthetic training data."""

import shutil

import numpy as np
import pytest

from reallm_cli.timebase import SAMPLE_RATE
import synth

SR = SAMPLE_RATE


def tone(freq_hz=440.0, seconds=1.0, amp=0.5):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def band_energy(x, lo_hz, hi_hz):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spec[(f >= lo_hz) & (f < hi_hz)].sum())


# ------------------------------------------------------------------ voices


def test_registry_names_and_engines():
    assert len(synth.VOICES) >= 15
    assert {v.engine for v in synth.VOICES.values()} >= {"espeak", "flite", "festival", "piper", "hibari", "kokoro"}
    for name, v in synth.VOICES.items():
        assert v.name == name
    with pytest.raises(synth.SynthError, match="unknown voice"):
        synth.get_voice("no-such-voice")


@pytest.mark.parametrize("name, tool", [("espeak-us", "espeak-ng"), ("flite-kal16", "flite")])
def test_cheap_voices_speak_16k(name, tool, tmp_path):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    v = synth.get_voice(name)
    a = v.synthesize("Seven eight nine.", out_path=tmp_path / "a.flac")
    assert a.dtype == np.float32 and a.ndim == 1
    assert 0.4 * SR < len(a) < 4 * SR  # a few words, not silence and not garbage
    assert np.max(np.abs(a)) > 0.05
    # speaking rate is honoured
    slow = v.synthesize("Seven eight nine.", rate=0.7)
    assert len(slow) > 1.2 * len(a)
    import soundfile as sf

    info = sf.info(str(tmp_path / "a.flac"))
    assert info.samplerate == SR and info.channels == 1


def test_empty_text_is_a_clear_error():
    with pytest.raises(synth.SynthError, match="empty"):
        synth.get_voice("espeak-us").synthesize("   ")


def test_bad_engine_parameters_fail_loudly():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    bad = synth.Voice("bad", "espeak", {"voice": "no-such-language-xx"})
    with pytest.raises(synth.SynthError):
        bad.synthesize("hello")


def test_hibari_is_seeded():
    pytest.importorskip("hibari")
    v = synth.get_voice("hibari-heart")
    a = v.synthesize("Good morning.", seed=5)
    b = v.synthesize("Good morning.", seed=5)
    assert np.array_equal(a, b)


# ------------------------------------------------------------------ augmentation


def test_augment_is_deterministic_per_seed_and_varies_across_seeds():
    pytest.importorskip("scipy", reason="scipy (a data-making dependency) not installed")
    x = tone(300, 1.0)
    pool = [tone(500, 0.7), tone(700, 0.5)]
    a, ta = synth.augment(x, np.random.default_rng(1), babble_pool=pool)
    b, tb = synth.augment(x, np.random.default_rng(1), babble_pool=pool)
    assert ta == tb and np.array_equal(a, b)
    tags = {synth.augment(x, np.random.default_rng(s), babble_pool=pool)[1] for s in range(30)}
    assert len(tags) > 20
    joined = "+".join(tags)
    for kind in ("clean", "speed", "rir", "noise:", "pad"):
        assert kind in joined


def test_add_noise_hits_the_requested_snr():
    rng = np.random.default_rng(0)
    x = tone(440, 2.0)
    for snr in (0.0, 10.0, 25.0):
        n = synth.coloured_noise(len(x), 1.0, rng)
        y = synth.add_noise(x, n, snr)
        measured = 20 * np.log10(synth.rms(x) / synth.rms(y - x))
        assert abs(measured - snr) < 0.05


def test_coloured_noise_slopes():
    rng = np.random.default_rng(0)
    white = synth.coloured_noise(SR * 2, 0.0, rng)
    brown = synth.coloured_noise(SR * 2, 2.0, rng)
    ratio = lambda x: band_energy(x, 50, 500) / band_energy(x, 4000, 7500)  # noqa: E731
    assert ratio(brown) > 100 * ratio(white)
    assert abs(synth.rms(white) - 1.0) < 1e-3


def test_speed_perturb_changes_duration():
    x = tone(440, 1.0)
    assert abs(len(synth.speed_perturb(x, 1.1)) - SR / 1.1) < 5
    assert abs(len(synth.speed_perturb(x, 0.9)) - SR / 0.9) < 5


def test_pitch_shift_keeps_duration_and_moves_pitch():
    if shutil.which("sox") is None:
        pytest.skip("sox not installed")
    x = tone(400, 1.0)
    y = synth.pitch_shift(x, 12.0)  # one octave up
    assert len(y) == len(x)
    assert band_energy(y, 750, 850) > 5 * band_energy(y, 350, 450)


def test_telephone_removes_out_of_band_energy():
    pytest.importorskip("scipy", reason="scipy (a data-making dependency) not installed")
    rng = np.random.default_rng(0)
    x = 0.1 * synth.coloured_noise(SR, 0.0, rng)
    y = synth.telephone(x)
    assert len(y) == len(x)
    in_band = band_energy(y, 500, 3000) / band_energy(x, 500, 3000)
    high = band_energy(y, 4500, 7900) / band_energy(x, 4500, 7900)
    low = band_energy(y, 20, 150) / band_energy(x, 20, 150)
    assert in_band > 0.5 and high < 1e-3 and low < 0.05


def test_mu_law_is_a_fine_quantiser():
    x = np.linspace(-1, 1, 1001, dtype=np.float32)
    y = synth.mu_law(x)
    # 8-bit mu-law: error a couple of percent of the amplitude, tiny near zero
    assert np.all(np.abs(y - x) <= 0.025 * np.abs(x) + 5e-4)
    assert len(np.unique(y)) <= 256


def test_rir_decays_at_rt60():
    pytest.importorskip("scipy", reason="scipy (a data-making dependency) not installed")
    rir = synth.synthetic_rir(0.5, np.random.default_rng(0))
    assert rir[0] >= 1.0  # the direct path leads
    tail = rir[1:]
    early = np.sqrt(np.mean(tail[: SR // 20] ** 2))
    late = np.sqrt(np.mean(tail[int(0.45 * SR) : int(0.5 * SR)] ** 2))
    assert 20 * np.log10(early / late) > 40  # ~-55 dB between 0-50 ms and 450-500 ms
    y = synth.reverberate(tone(300, 1.0), rir)
    assert len(y) == SR


def test_pad_silence_lengths_and_floor():
    x = tone(440, 0.5)
    y = synth.pad_silence(x, 0.25, 0.5, np.random.default_rng(0))
    assert len(y) == len(x) + SR // 4 + SR // 2
    lead = y[: SR // 4]
    assert 0 < np.max(np.abs(lead)) < 1e-2  # a faint floor, never digital zero, never speech-loud


def test_babble_needs_a_pool():
    with pytest.raises(synth.SynthError):
        synth.babble([], 100, 3, np.random.default_rng(0))


# ------------------------------------------------------------------ the default data recipe's plan

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
LJ = REPO.parent / "shared" / "text" / "ljspeech-sentences.tsv"


def _recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_data", REPO / "recipes" / "default" / "make_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def planner():
    """The recipe module, for tests of its plan (which reads the shared LJ Speech sentences)."""
    if not LJ.exists():
        pytest.skip(f"{LJ} absent (shared data not mounted)")
    return _recipe()


def test_recipe_plan_is_deterministic_and_holds_out_text_and_voice(tmp_path, planner):
    md = planner
    held_a, train_a = md.make_plan(tmp_path, hours=1.0, real_s=0.0)
    held_b, train_b = md.make_plan(tmp_path, hours=1.0, real_s=0.0)
    assert held_a == held_b and train_a == train_b
    held_texts = {j["raw_text"] for j in held_a}
    assert len(held_texts) == md.N_HELDOUT_TEXT
    assert not held_texts & {j["raw_text"] for j in train_a}
    assert md.HELDOUT_VOICE not in {j["voice"] for j in train_a}
    assert {j["voice"] for j in held_a if j["split"] == "heldout_voice"} == {md.HELDOUT_VOICE}
    # the planned hours follow the request, and every voice in the mix gets some audio
    planned_h = sum(md.estimate_s(j["raw_text"]) * md.ESTIMATE_RATIO["short" if j["id"].startswith("short") else "lj"]
                    for j in train_a) / 3600
    assert 0.95 < planned_h < 1.1
    assert {j["voice"] for j in train_a} == set(md.VOICE_SHARE)
    # digits are spoken as the words of the label
    assert md.tts_input("Call 911") == "Call nine hundred eleven."


def test_recipe_plan_grows_without_changing_what_was_made(tmp_path, planner):
    """A larger --hours adds utterances; every one a smaller run made keeps its id (text and voice)."""
    md = planner
    _, small = md.make_plan(tmp_path, hours=0.5, real_s=0.0)
    _, large = md.make_plan(tmp_path, hours=1.0, real_s=0.0)
    assert len(large) > len(small)
    assert {j["id"] for j in small} <= {j["id"] for j in large}
    # real copies take their share out of the synthetic budget
    _, with_real = md.make_plan(tmp_path, hours=1.0, real_s=600.0, real_copies=4)
    assert len(with_real) < len(large)


def test_recipe_real_copies(tmp_path):
    import json

    md = _recipe()
    (tmp_path / "real").mkdir()
    rec = {"file": "a/19-198-0001.flac", "path": "/x/19-198-0001.flac", "raw_text": " Hello there.",
           "avg_logprob": -0.2, "no_speech_prob": 0.01, "settings": {}}
    unsure = dict(rec, file="a/19-198-0002.flac", avg_logprob=-1.5)
    (tmp_path / "real" / md.RAW_LABELS_NAME).write_text(json.dumps(rec) + "\n" + json.dumps(unsure) + "\n")
    jobs = md.real_jobs(tmp_path, copies=3)
    assert [j["id"] for j in jobs] == ["real_19-198-0001"] + [f"real_19-198-0001_aug{c}" for c in range(3)]
    assert jobs[0]["aug"] == "none" and jobs[0]["audio"] == rec["path"]
    assert {j["raw_text"] for j in jobs} == {rec["raw_text"]}


def _fake_wordnet(folder):
    """Four WordNet data files in the database's own line format, with a licence header line."""
    header = "  1 This software and database is being provided to you, the LICENSEE, by Princeton\n"
    lines = {
        "noun": ['00001740 03 n 01 entity 0 000 | that which exists; "the entity was clear today"; '
                 '"a short one"; "to be or not to be"--Shakespeare  \n',
                 '00002137 03 n 01 sum 0 000 | an amount; "he paid 5 dollars"; "two words"; '
                 '"She Sold (some) shells"  \n'],
        "verb": ['00001740 29 v 01 breathe 0 000 | draw air; "She breathes deeply after a run"  \n'],
        "adj": ['00001740 00 a 01 able 0 000 | having means; "able to swim"; "The entity was clear today"  \n'],
        "adv": ['00001837 02 r 01 barely 0 000 | only just; "we barely made the train"  \n'],
    }
    for pos, rows in lines.items():
        (folder / f"data.{pos}").write_text(header + "".join(rows), encoding="latin-1")


def test_recipe_reads_wordnet_usage_examples(tmp_path):
    md = _recipe()
    _fake_wordnet(tmp_path)
    rows = md.read_wordnet_examples(tmp_path)
    # quoted examples only; no glosses, no signed quotation, no digits or brackets, nothing under three words,
    # and one copy of a sentence that two synsets share (the adjective's comes first)
    assert rows == sorted([("wna00001740_1", "able to swim"), ("wna00001740_2", "The entity was clear today"),
                           ("wnn00001740_2", "a short one"), ("wnr00001837_1", "we barely made the train"),
                           ("wnv00001740_1", "She breathes deeply after a run")])
    pairs = md.wordnet_texts(tmp_path)
    assert len(pairs) == 2 and pairs == md.wordnet_texts(tmp_path)
    for pid, text in pairs:
        assert pid.startswith("wn") and "+" in pid
        first, second = text.split(". ")
        assert first[0].isupper() and second[0].isupper() and text.endswith(".")


def test_recipe_wordnet_hours_come_on_top_of_the_plan(tmp_path, planner):
    md = planner
    _fake_wordnet(tmp_path)
    held, base = md.make_plan(tmp_path, hours=0.2, real_s=0.0)
    held_wn, with_wn = md.make_plan(tmp_path, hours=0.2, real_s=0.0, wordnet_hours=1.0, wordnet_dir=tmp_path)
    added = [j for j in with_wn if j["id"].startswith("wn")]
    assert held_wn == held and sorted(base, key=lambda j: j["id"]) == sorted(
        [j for j in with_wn if not j["id"].startswith("wn")], key=lambda j: j["id"])
    assert {j["raw_text"] for j in added} == {t for _, t in md.wordnet_texts(tmp_path)}
    assert all(j["voice"] in md.VOICE_SHARE for j in added)


def _fake_chat(folder):
    """Two chatterbot-corpus YAML files in the corpus' own layout."""
    (folder / "greetings.yml").write_text(
        "categories:\n- greetings\nconversations:\n"
        "- - Good morning, how are you?\n  - I am doing well, how about you\n  - I'm also good.\n"
        "- - Hello\n  - Hi\n"
        "- - What is 2 + 2?\n  - Four\n", encoding="utf-8")
    (folder / "food.yml").write_text(
        "categories:\n- food\nconversations:\n- - hello\n  - hi\n- - Do you like tea?\n  - Yes, with milk.\n",
        encoding="utf-8")


def test_recipe_reads_chat_conversations_two_turns_an_utterance(tmp_path):
    pytest.importorskip("yaml")
    md = _recipe()
    _fake_chat(tmp_path)
    rows = md.chat_texts(tmp_path)
    assert rows == md.chat_texts(tmp_path)  # seeded: the same every run
    texts = sorted({t for _, t in rows})
    # pairs of turns, each ending in a stop and starting upper-case; an odd last turn alone; a pair with a
    # symbol the engines would not say as written ("+") is left out; a pair already seen (any case) once
    assert texts == sorted(["Good morning, how are you? I am doing well, how about you.", "I'm also good.",
                            "Hello. Hi.", "Do you like tea? Yes, with milk."])
    assert len(rows) == 2 * len(texts)  # every pair twice, for two voices
    assert all(i.startswith("chat_") and i[-1] in "ab" for i, _ in rows)


def test_recipe_chat_hours_come_on_top_of_the_plan(tmp_path, planner):
    pytest.importorskip("yaml")
    md = planner
    _fake_chat(tmp_path)
    _, base = md.make_plan(tmp_path, hours=0.2, real_s=0.0)
    _, with_chat = md.make_plan(tmp_path, hours=0.2, real_s=0.0, chat_hours=1.0, chat_dir=tmp_path)
    added = [j for j in with_chat if j["id"].startswith("chat_")]
    assert sorted(base, key=lambda j: j["id"]) == sorted(
        [j for j in with_chat if not j["id"].startswith("chat_")], key=lambda j: j["id"])
    assert sorted(j["raw_text"] for j in added) == sorted(t for _, t in md.chat_texts(tmp_path))
    assert all(j["voice"] in md.VOICE_SHARE for j in added)
    assert len({j["voice"] for j in added if j["raw_text"] == "Hello. Hi."}) == 2  # two voices say a pair
