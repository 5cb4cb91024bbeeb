"""Live loop, live view and `reallm listen`: scripted sources in-process, and a real (virtual) microphone.

The `audio` tests need the PulseAudio virtual microphone from .ci/pulse.sh; they are skipped when no
PulseAudio server is reachable.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fake_recognizer import LevelRecognizer, ScriptedRecognizer
from reallm_cli.errors import ReallmError
from reallm_cli.live import StdoutLines, run_live
from reallm_cli.results import Word
from reallm_cli.view import LiveStats, TranscriptView, level_meter, status_line, summary_line
from reallm_cli.writers import open_stream_writer

SR = 16_000
TESTS = Path(__file__).resolve().parent


class FakeSource:
    """A microphone double: blocks of ``audio``; capture runs ``lead_blocks`` ahead of reading."""

    def __init__(self, audio: np.ndarray, block: int = 1600, lead_blocks: int = 3, infinite: bool = False) -> None:
        self.audio = audio.astype(np.float32)
        self.block = block
        self.lead = lead_blocks
        self.infinite = infinite
        self.pos = 0
        self.frozen: int | None = None  # capture position when stopped
        self.overflows = 2
        self.dropped_blocks = 1
        self.stop_calls = 0

    def _end(self) -> float:
        return float("inf") if self.infinite else len(self.audio)

    @property
    def captured_samples(self) -> float:
        if self.frozen is not None:
            return self.frozen
        return min(self.pos + self.lead * self.block, self._end())

    @property
    def captured_s(self) -> float:
        return self.captured_samples / SR

    @property
    def finished(self) -> bool:
        return self.pos >= self.captured_samples and (self.frozen is not None or self.pos >= self._end())

    def stop(self) -> None:
        self.stop_calls += 1
        if self.frozen is None:
            self.frozen = int(self.captured_samples)

    def start(self):
        return self

    def read(self, timeout_s: float = 0.1):
        if self.pos >= self.captured_samples:
            return None
        n = int(min(self.block, self.captured_samples - self.pos))
        if self.infinite:
            out = np.zeros(n, np.float32)
        else:
            out = self.audio[self.pos : self.pos + n]
        self.pos += n
        return out


def bursts(pattern: list[tuple[float, bool]]) -> np.ndarray:
    """Concatenate (seconds, loud?) pieces: loud = a 440 Hz tone at -10 dBFS, else silence."""
    parts = []
    for sec, loud in pattern:
        t = np.arange(int(sec * SR)) / SR
        parts.append((0.45 * np.sin(2 * np.pi * 440 * t)) if loud else np.zeros_like(t))
    return np.concatenate(parts).astype(np.float32)


SCRIPT = [Word("good", 0.2, 0.5, 0), Word("morning", 0.5, 1.0, 0), Word("next", 3.0, 3.3, 0), Word("line", 3.3, 3.9, 0)]


def test_run_live_writes_segments_and_flushes_last_words(tmp_path, capsys):
    session = ScriptedRecognizer(SCRIPT).session()
    out = tmp_path / "o.srt"
    src = FakeSource(np.zeros(int(4.0 * SR)))  # "line" ends at 3.9 s: only the final flush can emit it
    stats = run_live(src, session, sinks=[StdoutLines(), open_stream_writer(out)], stop=threading.Event())
    assert capsys.readouterr().out == "good morning\nnext line\n"
    assert out.read_text() == (
        "1\n00:00:00,200 --> 00:00:01,000\ngood morning\n\n2\n00:00:03,000 --> 00:00:03,900\nnext line\n\n"
    )
    assert (stats.words, stats.segments) == (4, 2)
    assert stats.decoded_s == pytest.approx(4.0) and stats.rtf == pytest.approx(0.25)
    assert stats.overflows == 3 and stats.lag_s == 0


def test_duration_stops_at_exactly_that_much_audio():
    session = ScriptedRecognizer([]).session()
    src = FakeSource(np.zeros(0), block=1000, infinite=True)
    stats = run_live(src, session, sinks=[], stop=threading.Event(), duration_s=1.25)
    assert session.audio_s == 1.25 and stats.decoded_s == 1.25 and src.stop_calls >= 1


def test_stop_decodes_what_was_already_captured(tmp_path):
    """Ctrl-C: capture stops, but the queued blocks are still decoded and the open words flushed."""
    stop = threading.Event()

    class StopAfterFirstWord:
        def event(self, event):
            if event.final:
                stop.set()

        def segment(self, segment):
            pass

        def close(self, duration_s):
            pass

    out = tmp_path / "o.txt"
    src = FakeSource(np.zeros(int(10 * SR)), lead_blocks=5)
    session = ScriptedRecognizer(SCRIPT, delay_s=0.0).session()
    run_live(src, session, sinks=[StopAfterFirstWord(), open_stream_writer(out)], stop=stop)
    # The first word became final at 0.5 s; by then 5 more blocks (0.5 s) were captured and queued.
    assert session.audio_s == pytest.approx(1.0)
    assert out.read_text() == "good morning\n"  # "morning" (0.5-1.0 s) came from the queued audio


def test_broken_pipe_stops_listening():
    class Closed:
        def event(self, e):
            pass

        def segment(self, s):
            raise BrokenPipeError

        def close(self, d):
            pass

    src = FakeSource(np.zeros(0), infinite=True)
    stats = run_live(src, ScriptedRecognizer(SCRIPT, delay_s=0).session(), sinks=[Closed()], stop=threading.Event())
    assert src.frozen is not None and stats.decoded_s < 10


def test_view_memory_is_flat_and_partials_are_dim():
    view = TranscriptView(history_lines=4)
    for i in range(10_000):
        view.add_line(f"line {i}")
    assert list(view.lines) == [f"line {i}" for i in range(9996, 10_000)]
    view.open_text, view.partial = "hello", "wor"
    group = view.render()
    current = group.renderables[-2]
    assert current.plain == "hello wor"
    assert [(current.plain[s.start : s.end], str(s.style)) for s in current.spans] == [(" wor", "dim")]
    assert len(TranscriptView(history_lines=0).render().renderables) == 2  # no history kept at all


def test_status_and_meter():
    assert level_meter(0.0, width=4) == "████" and level_meter(-60.0, width=4) == "    "
    assert level_meter(-30.0, width=4) == "██  " and level_meter(float("-inf"), width=4) == "    "
    s = LiveStats(captured_s=75.0, decoded_s=74.0, compute_s=37.0, level_db=-20, overflows=3, words=12)
    line = status_line(s).plain
    assert "01:15" in line and "RTF 0.50" in line and "lag 1.0 s" in line and "overflows 3" in line and "12 words" in line
    assert summary_line(s, "a.srt").startswith("reallm: listened 01:14 (74.0 s), 12 words in 0 segments")
    assert "1 word in 1 segment," in summary_line(LiveStats(words=1, segments=1))


# ---------------------------------------------------------------------------------------------
# The command, in-process with a fake microphone


@pytest.fixture()
def fake_mic(monkeypatch):
    from reallm_cli.audio import microphone

    audio = bursts([(0.5, False), (0.6, True), (1.5, False), (0.6, True), (1.0, False)])
    made = []

    def make(device=None, **kw):
        src = FakeSource(audio)
        made.append(src)
        return src

    monkeypatch.setattr(microphone, "Microphone", make)
    monkeypatch.setattr(microphone, "find_input_device", lambda spec: None)
    monkeypatch.setenv("REALLM_TEST_RECOGNIZER", "fake_recognizer:LevelRecognizer")
    return made


def test_listen_command_stdout_is_only_the_transcript(fake_mic, tmp_path):
    from reallm_cli.cli.app import app

    out = tmp_path / "live.vtt"
    res = CliRunner().invoke(app, ["listen", "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout == "speech0\nspeech1\n"
    assert "listened 00:04" in res.stderr and "2 words in 2 segments" in res.stderr
    assert out.read_text().startswith("WEBVTT\n\n00:00:00.480 --> 00:00:01.200\nspeech0\n")


def test_listen_bad_options_fail_before_loading(fake_mic, tmp_path):
    from reallm_cli.cli.app import app

    runner = CliRunner()
    for args, msg in [
        (["listen", "--output", str(tmp_path / "a.docx")], "unknown output format"),
        (["listen", "--duration", "0"], "--duration"),
        (["listen", "--format", "srt"], "--output"),
        (["listen", "--model", "missing-model"], "not found"),
    ]:
        res = runner.invoke(app, args)
        assert isinstance(res.exception, ReallmError) and msg in str(res.exception), (args, res.exception)
    assert fake_mic == []  # the microphone was never opened


def test_busy_device_is_a_clear_error(monkeypatch):
    from reallm_cli.audio import microphone

    sd = pytest.importorskip("sounddevice")
    dev = microphone.InputDevice(0, "busy mic", "ALSA", 1, 16000.0, True)
    monkeypatch.setattr(microphone, "find_input_device", lambda spec: dev)

    def busy(*a, **k):
        raise sd.PortAudioError("Device unavailable", -9985)

    monkeypatch.setattr(sd, "InputStream", busy)
    monkeypatch.setattr(microphone.Microphone, "_pick_rate", lambda self: 16000)
    with pytest.raises(microphone.DeviceError, match="cannot open input device 0 \\(busy mic\\): Device unavailable"):
        microphone.Microphone("busy").start()


def test_device_lookup(monkeypatch):
    from reallm_cli.audio import microphone

    devs = [
        microphone.InputDevice(0, "pulse", "ALSA", 32, 44100.0, False),
        microphone.InputDevice(3, "USB Mic (hw:1,0)", "ALSA", 1, 48000.0, False),
        microphone.InputDevice(4, "default", "ALSA", 32, 44100.0, True),
    ]
    monkeypatch.setattr(microphone, "list_input_devices", lambda: devs)
    find = microphone.find_input_device
    assert find(None).index == 4 and find("3").index == 3 and find("usb").index == 3 and find("PULSE").index == 0
    with pytest.raises(microphone.DeviceError, match="no input device matches 'nosuch'.*--list-devices"):
        find("nosuch")
    with pytest.raises(microphone.DeviceError, match="index 9"):
        find("9")
    with pytest.raises(microphone.DeviceError, match="ambiguous"):
        find("ul")  # pulse, default
    monkeypatch.setattr(microphone, "list_input_devices", lambda: [])
    with pytest.raises(microphone.DeviceError, match="no audio input device"):
        find(None)


# ---------------------------------------------------------------------------------------------
# The real thing: PulseAudio virtual microphone, `reallm listen` as a subprocess


def _pulse_env() -> dict[str, str] | None:
    if not (shutil.which("pactl") and shutil.which("paplay")):
        return None
    env = dict(os.environ)
    if "PULSE_SERVER" not in env:
        for d in (os.environ.get("XDG_RUNTIME_DIR"), f"/tmp/reallm-pulse-{os.getuid()}"):
            if d and Path(d, "pulse", "native").exists():
                env["PULSE_SERVER"] = f"unix:{d}/pulse/native"
                break
    try:
        ok = subprocess.run(["pactl", "list", "short", "sinks"], env=env, capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return None
    if ok.returncode != 0 or "vmic" not in ok.stdout:
        return None
    env["PULSE_SOURCE"] = "vmic.monitor"
    env["REALLM_TEST_RECOGNIZER"] = "fake_recognizer:LevelRecognizer"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


needs_pulse = pytest.mark.skipif(_pulse_env() is None, reason="no PulseAudio server with the 'vmic' null sink (run: eval \"$(.ci/pulse.sh)\")")
LISTEN = [sys.executable, "-m", "reallm_cli", "listen", "--device", "pulse"]


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng not installed")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Hello there. This is a test of the virtual microphone."], check=True)
    return path


class Player:
    """Plays a file into the virtual microphone over and over until stopped."""

    def __init__(self, wav: Path, env: dict) -> None:
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(wav, env), daemon=True)

    def _run(self, wav, env) -> None:
        while not self.done.is_set():
            subprocess.run(["paplay", "--device=vmic", str(wav)], env=env, timeout=30)
            self.done.wait(0.8)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(timeout=30)


@pytest.mark.audio
@needs_pulse
def test_listen_hears_speech_from_the_virtual_microphone(tmp_path, speech_wav):
    env = _pulse_env()
    out = tmp_path / "out.srt"
    with Player(speech_wav, env):
        proc = subprocess.run([*LISTEN, "--duration", "6", "--output", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cues = [c for c in out.read_text().split("\n\n") if c.strip()]
    assert cues, f"no speech heard; stderr: {proc.stderr}"
    assert cues[0].startswith("1\n00:00:0")
    assert proc.stdout.split() and all(w.startswith("speech") for w in proc.stdout.split())
    assert "listened 00:06 (6.0 s)" in proc.stderr


@pytest.mark.audio
@needs_pulse
def test_listen_silence_gives_no_words(tmp_path):
    """The control for the test above: the same command with nothing playing hears nothing."""
    out = tmp_path / "out.srt"
    proc = subprocess.run([*LISTEN, "--duration", "2", "--output", str(out)], env=_pulse_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "" and proc.stdout == "" and "0 words" in proc.stderr


@pytest.mark.audio
@needs_pulse
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_ends_cleanly_with_last_words_written(tmp_path, speech_wav, sig):
    env = _pulse_env()
    out = tmp_path / "out.jsonl"
    with Player(speech_wav, env):
        proc = subprocess.Popen([*LISTEN, "--output", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out.exists() and '"partial"' in out.read_text()):
            time.sleep(0.1)
        proc.send_signal(sig)  # mid-word: a partial is open
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[-1]["type"] == "end"
    assert any(x["type"] == "segment" for x in lines), "the word in progress at SIGTERM was not flushed"
    assert "reallm: listened" in stderr and stdout.split()


@pytest.mark.audio
@needs_pulse
def test_device_without_16khz_is_resampled(monkeypatch):
    """A device that only records at 48 kHz still yields 16 kHz blocks, as much audio as was captured."""
    from reallm_cli.audio import microphone

    for key in ("PULSE_SERVER", "PULSE_SOURCE"):
        monkeypatch.setenv(key, _pulse_env()[key])
    # PortAudio lists devices once, when first loaded: an earlier test may have loaded it without the
    # server in this process's environment (the subprocess tests get it in theirs), so list them again
    import sounddevice as sd

    sd._terminate()
    sd._initialize()
    monkeypatch.setattr(microphone.Microphone, "_pick_rate", lambda self: 48000)
    mic = microphone.Microphone("pulse")
    got = 0
    with mic:
        deadline = time.monotonic() + 30
        while mic.captured_s < 1.0 and time.monotonic() < deadline:
            block = mic.read(0.2)
            got += 0 if block is None else len(block)
    while (block := mic.read(0)) is not None:
        got += len(block)
    assert mic.device_rate == 48000 and mic.captured_s >= 1.0
    assert abs(got - mic.captured_s * SR) <= 2  # including the tail soxr held until the end
    assert mic.finished


@pytest.mark.audio
@needs_pulse
def test_list_devices_shows_pulse():
    proc = subprocess.run([*LISTEN[:4], "--list-devices"], env=_pulse_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "pulse" in proc.stdout


def test_missing_device_is_one_line_and_nonzero():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), REALLM_TEST_RECOGNIZER="fake_recognizer:LevelRecognizer")
    proc = subprocess.run([sys.executable, "-m", "reallm_cli", "listen", "--device", "no-such-device-xyz"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reallm: error: ") and "no-such-device-xyz" not in proc.stdout
    assert "no input device matches 'no-such-device-xyz'" in lines[0] or "no audio input device found" in lines[0]


@pytest.mark.audio
@pytest.mark.slow
@needs_pulse
def test_listen_with_the_real_engine(tmp_path, speech_wav):
    """The real recogniser (a tiny random model) behind the microphone: the loop, flush and writers agree."""
    from conftest import tiny_model
    from reallm_cli.model.checkpoint import save_model
    from reallm_cli.model.presets import placeholder_tokenizer

    tok = placeholder_tokenizer(64)
    model = tmp_path / "tiny.safetensors"
    save_model(model, tiny_model(tok.vocab_size), tok)
    env = _pulse_env()
    del env["REALLM_TEST_RECOGNIZER"]
    out = tmp_path / "out.json"
    with Player(speech_wav, env):
        proc = subprocess.run([*LISTEN, "--model", str(model), "--duration", "3", "--output", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["duration_s"] == 3.0
    assert all(0 <= w["start_s"] <= w["end_s"] <= 3.0 + 0.5 for w in doc["words"])
    assert "listened 00:03 (3.0 s)" in proc.stderr
    assert proc.stdout.split() == doc["text"].split()
