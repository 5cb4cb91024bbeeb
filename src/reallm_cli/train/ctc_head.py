"""The CTC alignment teacher over cached (frozen) encoder frames: a small head trained with CTC loss.

Its only job is to say *when* each word piece is spoken, so it can be small; the BLANK of the tokenizer
doubles as the CTC blank.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CTCHead(nn.Module):
    def __init__(self, in_dim: int, vocab_size: int, hidden: int = 512, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, vocab_size),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> log-posteriors (B, T, V)."""
        return F.log_softmax(self.net(frames), dim=-1)


def ctc_loss(logp: torch.Tensor, frame_lengths: torch.Tensor, tokens: list[list[int]], blank: int) -> torch.Tensor:
    """Mean CTC loss per target token over a batch; impossible utterances contribute zero."""
    targets = torch.tensor([t for seq in tokens for t in seq], dtype=torch.long, device=logp.device)
    target_lengths = torch.tensor([len(seq) for seq in tokens], dtype=torch.long, device=logp.device)
    loss = F.ctc_loss(
        logp.transpose(0, 1), targets, frame_lengths, target_lengths,
        blank=blank, reduction="sum", zero_infinity=True,
    )
    return loss / target_lengths.sum().clamp(min=1)
