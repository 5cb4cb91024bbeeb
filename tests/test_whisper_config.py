"""The Whisper encoder's config: windows that tile the stream, and every inconsistency a one-line error."""

from __future__ import annotations

import pytest

from reallm_cli.errors import ConfigError, ReallmError
from reallm_cli.model.whisper_config import (
    WhisperConfigError,
    WhisperEncoderConfig,
    window_emit_range,
    window_start_frame,
)


@pytest.mark.parametrize("chunk_ms,right_context_ms,hop_ms", [(240, 0, 240), (240, 720, 480), (480, 480, 480)])
def test_windows_tile_the_stream_in_whole_hops_with_their_right_context(chunk_ms, right_context_ms, hop_ms):
    cfg = WhisperEncoderConfig(chunk_ms=chunk_ms, right_context_ms=right_context_ms, hop_ms=hop_ms)
    hop, rc = hop_ms // 20, right_context_ms // 20
    assert window_emit_range(cfg, 0)[0] == 0
    for k in range(5):
        start, end = window_emit_range(cfg, k)
        assert end == window_emit_range(cfg, k + 1)[0]  # each frame emitted by exactly one window
        first = window_start_frame(cfg, k)
        assert start >= first and (start - first) % hop == 0 and (end - first) % hop == 0
        assert end + rc <= first + cfg.window_frames  # the right context inside the window
    assert cfg.window_frames <= cfg.n_ctx
    assert 20_000 <= cfg.stride_frames * cfg.frame_ms <= 30_000  # a restart every ~24 s


def test_the_wait_is_the_right_context_and_the_rest_of_the_hop():
    assert WhisperEncoderConfig(right_context_ms=720, hop_ms=480).wait_ms == 960
    assert WhisperEncoderConfig().wait_ms == 0  # chunk-causal


def test_a_hop_of_zero_is_one_chunk():
    assert WhisperEncoderConfig(chunk_ms=480).hop_ms == 480
    assert WhisperEncoderConfig(chunk_ms=480).hop_chunks == 1


@pytest.mark.parametrize("kw,msg", [
    ({"chunk_ms": 250}, "chunk_ms 250 must be a positive multiple of 20"),
    ({"right_context_ms": 700}, "right_context_ms 700 must be 0 or a multiple of chunk_ms 240"),
    ({"right_context_ms": 720, "hop_ms": 500}, "hop_ms 500"),
    ({"window_ms": 31_200}, "positions"),
    ({"window_ms": 1000}, "window_ms"),
    ({"overlap_ms": 28_800}, "exceed"),
    ({"right_context_ms": 720, "hop_ms": 960, "overlap_ms": 4800 - 240}, "overlap_ms"),
    ({"d_model": 30}, "n_heads"),
])
def test_bad_config_is_a_clear_error(kw, msg):
    with pytest.raises(WhisperConfigError, match=msg):
        WhisperEncoderConfig(**kw)
    assert issubclass(WhisperConfigError, ConfigError) and issubclass(ConfigError, ReallmError)


def test_a_stored_config_reads_back_and_an_old_file_without_look_ahead_too():
    cfg = WhisperEncoderConfig(right_context_ms=720, hop_ms=480, source="whisper-base")
    assert WhisperEncoderConfig.from_dict(cfg.to_dict()) == cfg
    assert WhisperEncoderConfig.from_dict(cfg.to_dict() | {"lookahead_ms": 0}) == cfg  # the shipped file's key
    old = cfg.to_dict() | {"right_context_ms": 0, "hop_ms": 0}  # as an import wrote it
    assert WhisperEncoderConfig.from_dict(old).hop_ms == 240


@pytest.mark.parametrize("change,msg", [
    ({"lookahead_ms": 240}, "layer-wise look-ahead"),
    ({"right_context": 720}, "unknown key.* right_context"),
    ({"chunk_ms": "240"}, "chunk_ms must be int"),
    ({"chunk_ms": 240.0}, "chunk_ms must be int"),
    ({"n_layers": True}, "n_layers must be int"),
    ({"chunk_ms": 250}, "chunk_ms 250"),
])
def test_a_stored_config_that_does_not_fit_is_refused(change, msg):
    with pytest.raises(ConfigError, match=msg):
        WhisperEncoderConfig.from_dict(WhisperEncoderConfig().to_dict() | change)


def test_a_stored_config_missing_a_key_is_refused():
    d = WhisperEncoderConfig().to_dict()
    del d["d_model"]
    with pytest.raises(ConfigError, match="missing key.* d_model"):
        WhisperEncoderConfig.from_dict(d)
