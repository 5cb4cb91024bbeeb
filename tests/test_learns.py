"""Proof that the model learns: a tiny ReaLLM trained on a few espeak-ng utterances, decoded by the engine."""

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tiny_model
from reallm_cli.audio.features import whisper_log_mel
from reallm_cli.audio.source import load_audio
from reallm_cli.engine import Recognizer
from reallm_cli.model.interleave import even_alignment
from reallm_cli.tokenizer import train_tokenizer
from reallm_cli.train.reallm_loss import reallm_loss

SENTENCES = ["open the door", "seven green apples", "call me tomorrow"]


def speak(text: str, path) -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True)
    return load_audio(path)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_tiny_model_learns_and_streams(tmp_path):
    torch.manual_seed(0)
    audios = [speak(s, tmp_path / f"{i}.wav") for i, s in enumerate(SENTENCES)]
    tok = train_tokenizer(SENTENCES * 20, vocab_size=30)
    model = tiny_model(tok.vocab_size, d=96)
    mels = [whisper_log_mel(a, floor="running") for a in audios]
    tokens = [tok.encode(s) for s in SENTENCES]
    k = model.frames_per_chunk
    n_chunks = [-(-(m.shape[0] // 4) // k) for m in mels]
    # Rough alignment: pieces spread over the voiced part of the audio, emitted one chunk late.
    chunks = []
    for a, t, n in zip(audios, tokens, n_chunks):
        energy = np.convolve(a**2, np.ones(1600) / 1600, mode="same")
        voiced = np.flatnonzero(energy > 0.05 * energy.max())
        first, last = (int(v / 16000 / 0.24) for v in (voiced[0], voiced[-1]))
        chunks.append(even_alignment(len(t), last - first + 1, first_chunk=first, n_chunks=n, delay_chunks=1))

    def loss_all():
        total = 0.0
        for m, t, c in zip(mels, tokens, chunks):
            frames, lengths = model.encoder.forward(m[None], torch.tensor([m.shape[0]]))
            loss, _ = reallm_loss(model, frames, lengths, [t], [c], tok.blank)
            total = total + loss
        return total / len(mels)

    recognizer = Recognizer(model, tok)
    untrained = [" ".join(w.text for w in recognizer.transcribe_array(a)) for a in audios]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(400):
        loss = loss_all()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    model.eval()
    assert loss.item() < 0.05, f"training loss stayed at {loss.item():.3f}"
    # decode through the streaming engine, in awkward block sizes
    for audio, sentence, before in zip(audios, SENTENCES, untrained):
        words = recognizer.transcribe_array(audio, block_samples=1234)
        assert " ".join(w.text for w in words) == sentence
        assert before != sentence
