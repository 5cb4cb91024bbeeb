"""A pretrained Whisper encoder made streaming, Emformer-style, with a parallel ``forward`` and a ``step``.

Pipeline (Whisper's, unchanged): log-mel (10 ms frames) -> conv1 (k3, pad 1) + GELU -> conv2 (k3, stride 2,
pad 1) + GELU -> + sinusoidal position -> pre-norm transformer layers -> final layer norm; one output frame
every 20 ms. What we change is only *what each frame may attend to* (``WhisperEncoderConfig``):

- **Hops with a right context.** Each step finishes one hop of ``hop_ms`` (whole chunks of ``chunk_ms``),
  running every layer over the hop plus the ``right_context_ms`` of frames after it, with the keys and
  values kept from earlier hops. The hop's keys and values are kept; the right context's are thrown away
  and recomputed at the next step, from inputs that have then seen further ahead themselves. Every layer
  sees the same span ahead, for (hop + right context) / hop times the compute; a pretrained encoder needs
  no adaptation to it (the default model). Right context 0 with a hop of one chunk is chunk-causal. A block
  that brings several hops (a file's) has them finished ``hops_per_pass`` at a time in one masked pass, the
  same arithmetic with more rows per product (``_finish_hops``).
- **Conv stem.** The convolutions are kept as trained; conv2's output frame j reads mel frames 2j-2 .. 2j+2,
  so a chunk also needs the first mel frame (10 ms) of the next one (``stem_lookahead_ms``), on top of
  ``wait_ms``. The stream
  starts with zero padding, like the offline convolution.
- **Windows (restarts).** Whisper only knows positions 0 .. 1499 (30 s). Endless audio is cut into windows
  of ``window_ms``; window k starts at frame ``k * stride`` and re-encodes ``overlap_ms`` of audio from
  position 0 as left context. Every output frame is emitted by exactly one window, one whose input holds
  the frame's right context. The conv stem is position-free and runs continuously.

``forward`` runs this very schedule on each utterance (so forward == step on any length), or with
``full_attention=True`` the original Whisper (no mask, one window), to check an import against the
original's outputs. Streaming cost is bounded: per window and layer a preallocated KV cache of ``window``
frames; at most two windows are open at once (the new one is encoded alongside the old one during the
overlap, so there is no burst of re-encoding at a restart).

Numerics: forward and step agree to ~1e-6 on random weights; with Whisper's weights the residual stream
reaches ~500, so in float32 a reordering of the same sums differs by up to ~1e-3 (float64: 1e-13).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from reallm_cli.errors import ReallmError
from reallm_cli.timebase import MEL_FRAME_MS
from reallm_cli.model.whisper_blocks import ResidualAttentionBlock, padding_mask, sinusoids
from reallm_cli.model.whisper_config import FRAME_MS, WhisperEncoderConfig, window_emit_range, window_start_frame


class EncoderInputError(ReallmError):
    """Mel input of the wrong shape, or a stream used after its end."""


# ----------------------------------------------------------------------------------------- streaming state


@dataclass
class LayerCache:
    """One layer of one window."""

    k: torch.Tensor  # (B, H, window_frames, dh), valid [:, :, :n_keys]
    v: torch.Tensor  # (B, H, window_frames, dh)
    n_keys: int = 0  # frames of finished hops whose keys/values are cached


@dataclass
class WindowState:
    start_frame: int  # global output frame at position 0
    emit_start: int  # global output frames [emit_start, emit_end) are this window's to emit
    emit_end: int
    layers: list[LayerCache]
    todo: torch.Tensor  # (B, t, D) inputs fed and not yet finished (the current hop and its right context)
    n_fed: int = 0  # frames fed (positions 0 .. n_fed-1)
    overlap: list[torch.Tensor] = field(default_factory=list)  # final frames before emit_start, not emitted


@dataclass
class WhisperStreamState:
    mel_tail: torch.Tensor  # (B, <= 2, n_mels) last mel frames conv1 still needs; starts as one zero pad frame
    h1_tail: torch.Tensor  # (B, <= 2, D) conv1 outputs conv2 still needs; starts as one zero pad frame
    pending: torch.Tensor  # (B, < frames_per_chunk, D) conv frames not yet a whole chunk
    windows: list[WindowState] = field(default_factory=list)  # open windows, oldest first (at most 2)
    next_window: int = 0  # index of the next window to open
    n_fed: int = 0  # conv frames fed to the transformer windows (global)
    n_emitted: int = 0  # output frames returned so far
    n_mel: int = 0  # mel frames pushed
    finished: bool = False
    # A window's own final frames of the audio it re-encodes before it emits (positions 0 ..), by the global
    # frame it emits from: a decoder that reads frames by their positions restarts on them (cross_context).
    overlaps: dict[int, torch.Tensor] = field(default_factory=dict)  # (B, overlap frames, D); the last two


# ----------------------------------------------------------------------------------------- the encoder


class WhisperStreamingEncoder(nn.Module):
    """Whisper's encoder on a streaming schedule; keeps the StreamingEncoder contract (model/encoder.py)."""

    def __init__(self, config: WhisperEncoderConfig):
        super().__init__()
        self.config = config
        self.out_dim = config.d_model
        self.frame_ms = FRAME_MS
        self.chunk_ms = config.chunk_ms
        self.wait_ms = config.wait_ms  # what the engine waits for past a chunk's end (at most)
        self.hop_chunks = config.hop_chunks  # chunks a step finishes together
        self.stem_lookahead_ms = MEL_FRAME_MS  # conv2 frame j reads mel frame 2j + 2, one past its own two
        # Hops finished together when a block brings several (a file's): 4 hops of 480 ms with 720 ms of right
        # context are 240 rows per product, and attention wastes little on the keys a hop may not see.
        self.hops_per_pass = 4
        self.conv1 = nn.Conv1d(config.n_mels, config.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.d_model, config.d_model, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(config.n_ctx, config.d_model))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(config) for _ in range(config.n_layers))
        self.ln_post = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def _check_mel(self, mel: torch.Tensor) -> None:
        if mel.dim() != 3 or mel.shape[-1] != self.config.n_mels:
            raise EncoderInputError(f"expected log-mel of shape (batch, frames, {self.config.n_mels}), "
                                    f"got {tuple(mel.shape)}")

    def conv_stem(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_mel, n_mels) -> (B, ceil(T_mel / 2), D), lengths; padding frames act as the stream's end."""
        b, t, _ = mel.shape
        if t == 0:
            return mel.new_zeros(b, 0, self.config.d_model), torch.zeros_like(mel_lengths)
        valid = torch.arange(t, device=mel.device)[None, :] < mel_lengths[:, None]  # (B, T_mel)
        x = (mel * valid[..., None]).transpose(1, 2)  # (B, n_mels, T_mel)
        h1 = F.gelu(self.conv1(x)) * valid[:, None, :]  # conv2 must see zeros past the end, as when streaming
        h2 = F.gelu(self.conv2(h1)).transpose(1, 2)  # (B, T_out, D)
        return h2, (mel_lengths + 1) // 2

    # ---- parallel

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor, *,
                full_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_mel, n_mels), (B,) -> frames (B, T_out, D), lengths (B,); T_out = ceil(T_mel / 2); padding
        frames are zero.

        ``full_attention=True`` is the original Whisper (no mask, one window, positions from 0); it exists to
        check an import against the original's outputs.
        """
        self._check_mel(mel)
        if mel_lengths.shape != (mel.shape[0],):
            raise EncoderInputError(f"mel_lengths must have shape ({mel.shape[0]},), got {tuple(mel_lengths.shape)}")
        mel_lengths = mel_lengths.to(mel.device)
        x, lengths = self.conv_stem(mel, mel_lengths)  # (B, T, D)
        if full_attention:
            return self._full_attention(x, lengths), lengths
        y = torch.zeros_like(x)
        for i in range(x.shape[0]):  # the streaming schedule itself, one utterance at a time: forward == step
            n = int(lengths[i])
            y[i, :n] = self._feed(x[i:i + 1, :n], self.init_state(1), final=True)[0]
        return y, lengths

    def _full_attention(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Conv frames (B, T, D) -> final frames (B, T, D), every frame attending to every valid frame."""
        t = x.shape[1]
        if t > self.config.n_ctx:
            raise EncoderInputError(f"full attention covers {self.config.n_ctx} frames "
                                    f"({self.config.n_ctx * FRAME_MS} ms) at most, got {t}")
        mask = None if bool((lengths == t).all()) else padding_mask(lengths, t)
        x = x + self.positional_embedding[:t].to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        keep = torch.arange(t, device=x.device)[None, :] < lengths[:, None]  # (B, T)
        return self.ln_post(x) * keep[..., None]

    # ---- streaming

    def init_state(self, batch_size: int = 1) -> WhisperStreamState:
        p = self.conv1.weight
        d = self.config.d_model
        return WhisperStreamState(
            mel_tail=p.new_zeros(batch_size, 1, self.config.n_mels),
            h1_tail=p.new_zeros(batch_size, 1, d),
            pending=p.new_zeros(batch_size, 0, d),
        )

    @torch.no_grad()
    def step(self, mel: torch.Tensor, state: WhisperStreamState) -> tuple[torch.Tensor, WhisperStreamState]:
        """Push (B, t, n_mels) mel frames (any t >= 0); return the newly final frames (B, t', D)."""
        self._check_mel(mel)
        if state.finished:
            raise EncoderInputError("step() after flush(): start a new stream with init_state()")
        if mel.shape[0] != state.mel_tail.shape[0]:
            raise EncoderInputError(f"stream has batch size {state.mel_tail.shape[0]}, got {mel.shape[0]}")
        state.n_mel += mel.shape[1]
        frames = self._stem_step(mel.to(state.mel_tail.dtype), state, end=False)
        pending = torch.cat([state.pending, frames], dim=1)
        whole = pending.shape[1] // self.config.frames_per_chunk * self.config.frames_per_chunk
        state.pending = pending[:, whole:].clone()  # not a view that keeps this whole push alive
        return self._feed(pending[:, :whole], state, final=False), state

    @torch.no_grad()
    def flush(self, state: WhisperStreamState) -> tuple[torch.Tensor, WhisperStreamState]:
        """End of stream: zero-pad the convolutions, finish the open hops, return the remaining frames."""
        if state.finished:
            raise EncoderInputError("flush() called twice on one stream")
        b = state.mel_tail.shape[0]
        frames = self._stem_step(state.mel_tail.new_zeros(b, 0, self.config.n_mels), state, end=True)
        pending = torch.cat([state.pending, frames], dim=1)
        state.pending = pending[:, :0]
        out = self._feed(pending, state, final=True)
        state.finished = True
        return out, state

    def _stem_step(self, mel: torch.Tensor, state: WhisperStreamState, end: bool) -> torch.Tensor:
        """Incremental conv stem (padding done here, not by the layers): a zero frame at the start of each
        convolution's input, and at the end one more for its right padding."""
        buf = torch.cat([state.mel_tail, mel], dim=1)  # (B, n, n_mels)
        if end and state.n_mel > 0:
            buf = F.pad(buf, (0, 0, 0, 1))
        h1 = buf.new_zeros(buf.shape[0], 0, self.config.d_model)
        if buf.shape[1] >= 3:
            h1 = F.conv1d(buf.transpose(1, 2), self.conv1.weight, self.conv1.bias)
            h1 = F.gelu(h1).transpose(1, 2)  # (B, n - 2, D)
        state.mel_tail = buf[:, -2:].clone() if buf.shape[1] >= 3 else buf
        buf2 = torch.cat([state.h1_tail, h1], dim=1)  # (B, m, D)
        if end and state.n_mel > 0:
            buf2 = F.pad(buf2, (0, 0, 0, 1))
        n_out = (buf2.shape[1] - 3) // 2 + 1 if buf2.shape[1] >= 3 else 0
        if n_out == 0:
            state.h1_tail = buf2
            return buf2.new_zeros(buf2.shape[0], 0, self.config.d_model)
        y = F.conv1d(buf2[:, : 2 * n_out + 1].transpose(1, 2), self.conv2.weight, self.conv2.bias, stride=2)
        y = F.gelu(y).transpose(1, 2)  # (B, n_out, D)
        state.h1_tail = buf2[:, 2 * n_out:].clone()
        return y

    def _open_window(self, state: WhisperStreamState) -> None:
        cfg = self.config
        k = state.next_window
        p = state.h1_tail
        b, dh = p.shape[0], cfg.d_model // cfg.n_heads
        layers = [LayerCache(k=p.new_empty(b, cfg.n_heads, cfg.window_frames, dh),
                             v=p.new_empty(b, cfg.n_heads, cfg.window_frames, dh)) for _ in range(cfg.n_layers)]
        emit_start, emit_end = window_emit_range(cfg, k)
        state.windows.append(WindowState(window_start_frame(cfg, k), emit_start, emit_end, layers,
                                         todo=p.new_zeros(b, 0, cfg.d_model)))
        state.next_window += 1

    def _feed(self, x: torch.Tensor, state: WhisperStreamState, final: bool) -> torch.Tensor:
        """Feed conv frames (B, n, D) (whole chunks unless final) to the open windows; return emitted frames."""
        cfg = self.config
        first, last = state.n_fed, state.n_fed + x.shape[1]
        pieces: list[tuple[int, torch.Tensor]] = []  # (global start, frames)
        a = first
        while a < last:
            if window_start_frame(cfg, state.next_window) == a:
                self._open_window(state)
            cut = min([last, window_start_frame(cfg, state.next_window)]
                      + [w.start_frame + cfg.window_frames for w in state.windows])
            for w in state.windows:
                pieces.append(self._window_push(w, x[:, a - first:cut - first], final=False, state=state))
            state.windows = [w for w in state.windows if w.n_fed < cfg.window_frames]
            a = cut
        state.n_fed = last
        if final:
            for w in state.windows:
                pieces.append(self._window_push(w, x[:, :0], final=True, state=state))
            state.windows = []
        out = [state.pending.new_zeros(state.pending.shape[0], 0, cfg.d_model)]
        for start, y in pieces:
            if y.shape[1] == 0:
                continue
            if start != state.n_emitted:  # a window emitted out of turn: the schedule above is broken
                raise RuntimeError(f"internal error: frame {start} emitted, expected {state.n_emitted}")
            out.append(y)
            state.n_emitted += y.shape[1]
        return torch.cat(out, dim=1)

    def _window_push(self, w: WindowState, x: torch.Tensor, final: bool,
                     state: WhisperStreamState) -> tuple[int, torch.Tensor]:
        """New frames (B, n, D) into one window; finish every hop whose right context is in (all of them
        once no more frames come); return (global start, the emitted frames among those finished). The
        finished frames before the window's emit range are kept in ``state.overlaps`` once all are in."""
        cfg = self.config
        hop, rc = cfg.hop_ms // FRAME_MS, cfg.right_context_ms // FRAME_MS
        x = x + self.positional_embedding[w.n_fed:w.n_fed + x.shape[1]].to(x.dtype)
        w.n_fed += x.shape[1]
        complete = final or w.n_fed == cfg.window_frames  # no more frames come: finish with what is there
        todo = torch.cat([w.todo, x], dim=1)
        g0 = w.start_frame + w.layers[0].n_keys  # the first frame this call finishes
        spans = hop_spans(todo.shape[1], hop, rc, complete)
        w.todo = todo[:, sum(n for _, n, _ in spans):]
        if not spans:
            return g0, x[:, :0]
        outs = []
        for i in range(0, len(spans), self.hops_per_pass):
            group = spans[i:i + self.hops_per_pass]
            a0 = group[0][0]
            outs.append(self._finish_hops(w, todo[:, a0:], [(a - a0, n, r) for a, n, r in group]))
        y = torch.cat(outs, dim=1)
        if g0 < w.emit_start:
            w.overlap.append(self.ln_post(y[:, :w.emit_start - g0]))
            if g0 + y.shape[1] >= w.emit_start:
                state.overlaps = {k: v for k, v in state.overlaps.items() if k > w.emit_start - 2 * cfg.stride_frames}
                state.overlaps[w.emit_start], w.overlap = torch.cat(w.overlap, dim=1), []
        lo, hi = max(w.emit_start, g0), min(w.emit_end, g0 + y.shape[1])
        if hi <= lo:
            return lo, y[:, :0]
        return lo, self.ln_post(y[:, lo - g0:hi - g0])

    def _finish_hops(self, w: WindowState, todo: torch.Tensor, spans: list[tuple[int, int, int]]) -> torch.Tensor:
        """Finish the hops ``spans`` ((start, length, right context) in ``todo``, back to back from 0) in one
        pass through the layers; returns their outputs (B, sum of lengths, D) before the final norm.

        This is the same computation as finishing them one step at a time (the live schedule), laid out
        Emformer-style: the hops' frames once, then a copy of each hop's right context. A hop's frames and
        its right context's copy see the cached keys, the hops up to its own and its own right context,
        never a later hop's (``hops_mask``). A file's blocks finish many hops at once, so the matrix products
        take many rows per call; a live stream's 240 ms blocks finish one hop at a time, with no mask."""
        n_center = sum(n for _, n, _ in spans)
        x = torch.cat([todo[:, :n_center]] + [todo[:, a + n:a + n + r] for a, n, r in spans if r], dim=1)
        n_keys = w.layers[0].n_keys
        mask = hops_mask(spans, n_keys, x.device)  # None for one hop: it sees every key
        top = len(self.blocks) - 1
        for layer, (c, block) in enumerate(zip(w.layers, self.blocks)):
            h = block.attn_ln(x)
            k, v = block.attn.keys_values(h)
            end, n_all = n_keys + n_center, n_keys + x.shape[1]
            if n_all <= c.k.shape[2]:  # in place: the right contexts' keys are overwritten by later hops'
                c.k[:, :, n_keys:n_all], c.v[:, :, n_keys:n_all] = k, v
                keys, values = c.k[:, :, :n_all], c.v[:, :, :n_all]
            else:  # the copies of many right contexts do not fit behind the window's frames
                c.k[:, :, n_keys:end], c.v[:, :, n_keys:end] = k[:, :, :n_center], v[:, :, :n_center]
                keys = torch.cat([c.k[:, :, :end], k[:, :, n_center:]], dim=2)
                values = torch.cat([c.v[:, :, :end], v[:, :, n_center:]], dim=2)
            if layer == top:  # the top layer's right-context outputs are never used
                x, h = x[:, :n_center], h[:, :n_center]
                mask = None if mask is None else mask[:n_center]
            x = block.finish(x, h, keys, values, mask)
            c.n_keys = end
        return x


def hop_spans(n_frames: int, hop: int, rc: int, complete: bool) -> list[tuple[int, int, int]]:
    """The hops that ``n_frames`` waiting frames let a window finish: (start, length, right context) each.
    A hop is finished once its right context is in; when no more frames come (``complete``), every frame
    left is finished, the last hops with what right context there is and the very last perhaps short."""
    spans, a = [], 0
    while n_frames - a >= hop + rc or (complete and n_frames > a):
        n = min(hop, n_frames - a)
        spans.append((a, n, min(rc, n_frames - a - n)))
        a += n
    return spans


def hops_mask(spans: list[tuple[int, int, int]], n_keys: int, device: torch.device) -> torch.Tensor | None:
    """(queries, keys) bool, True = may attend, for ``_finish_hops``' layout: queries are the hops' frames
    then each hop's right context; keys are the ``n_keys`` cached frames, the hops' frames, then each hop's
    right context. None when there is one hop (it sees them all)."""
    if len(spans) == 1:
        return None
    hop_of_center = torch.cat([torch.full((n,), j) for j, (_, n, _) in enumerate(spans)])
    hop_of_rc = torch.cat([torch.full((r,), j) for j, (_, _, r) in enumerate(spans)])
    q_hop = torch.cat([hop_of_center, hop_of_rc])  # (Q,) the hop each query belongs to
    sees_center = hop_of_center[None, :] <= q_hop[:, None]  # a hop's frames and all earlier hops'
    sees_rc = hop_of_rc[None, :] == q_hop[:, None]  # its own right context only
    cached = torch.ones(q_hop.shape[0], n_keys, dtype=torch.bool)
    return torch.cat([cached, sees_center, sees_rc], dim=1).to(device)
