"""A file on two threads: while the decoder reads one block, a second thread reads and encodes the next.

Streaming a file is two stages in turn, the encoder (three quarters of the time) and the decoder; a
decoder step is too small for two threads to share it well, so on two cores each stage gets a thread
of its own instead. The arithmetic is the same, on the same frames in the same order: the same words
as ``Session.push`` block by block.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from reallm_cli.engine import Session
from reallm_cli.results import Event

_END = object()


def pipelined_events(session: Session, blocks: Iterable[np.ndarray], ahead: int = 2) -> Iterator[Event]:
    """``session.push(b)`` for each of ``blocks``, encoded up to ``ahead`` blocks ahead in a second thread.

    Torch's threads are split between the two stages (at least one each) while it runs. An error raised
    while reading the blocks (a damaged file) comes out here after the events of the blocks before it.
    Closing the iterator early (an interrupt, say) stops the second thread before it returns."""
    done = threading.Event()
    q: queue.Queue = queue.Queue(maxsize=ahead)

    def put(item) -> bool:
        while not done.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def encode_all() -> None:
        try:
            for audio in blocks:
                if not put(session.encode(audio)):
                    return
            put(_END)
        except BaseException as exc:  # raised again in the reading thread, in its place in the stream
            put(exc)

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    worker = threading.Thread(target=encode_all, name="reallm-encode", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield session.decode(item)
    finally:
        done.set()
        worker.join()
        torch.set_num_threads(threads)
