"""The one interface every streaming encoder offers, so engine, recipe and CLI need not care which runs.

Contract (both encoders, the Conformer and the chunk-causal Whisper, keep it):
- input is normalised log-mel, (B, T_mel, 80), 10 ms frames (see ``reallm_cli.audio.features``);
- output is frame-level features, (B, T_out, out_dim), one frame every ``frame_ms``;
  ``frames_per_chunk = chunk_ms // frame_ms`` output frames make one speech embedding;
- output frames of chunk c depend on mel up to the end of chunk c plus ``wait_ms`` only, and are final
  once that much audio past the chunk's end has arrived (the engine waits for it);
- ``hop_chunks`` chunks become final together (1, or a hop of a Whisper encoder): chunk c's frames are
  ready at the end of its hop plus ``wait_ms - (hop_chunks - 1) * chunk_ms``;
- ``forward`` runs whole utterances (the Conformer in parallel with chunk-causal masks, the Whisper
  encoder on its streaming schedule); ``init_state``/``step``/``flush`` stream them; the frames that ``step`` and ``flush`` return, concatenated, equal ``forward``'s.
  ``step`` returns only frames that are final (whole chunks whose wait is over).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class StreamingEncoder(Protocol):
    out_dim: int
    frame_ms: int
    chunk_ms: int
    wait_ms: int
    hop_chunks: int

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_mel, 80), (B,) -> frames (B, T_out, out_dim), lengths (B,)."""
        ...

    def init_state(self, batch_size: int = 1) -> Any: ...

    def step(self, mel: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Push (B, t, 80) mel frames; return the newly final output frames (B, t', out_dim)."""
        ...

    def flush(self, state: Any) -> tuple[torch.Tensor, Any]:
        """End of stream: return the remaining output frames."""
        ...
