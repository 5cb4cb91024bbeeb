"""Worker processes for ``reallm transcribe --jobs N``: each loads the model once, with its own torch
threads, takes inputs from a shared queue and reports back what ``stream_file`` hands out.

Messages on the results queue, all tuples starting with a kind:

* ``("ready", worker)`` the model is loaded; ``("fatal", worker, message)`` it could not be (nothing ran);
* ``("start", worker, index)`` input ``index`` begins;
* ``("segment", index, Segment)`` a segment closed, as it closed;
* ``("progress", index, done_s, total_s)`` at most a few times a second;
* ``("done", index, duration_s, damage)`` the input ended (``damage``: why it stopped early, or None);
* ``("error", index, message)`` the input could not be transcribed.

Workers ignore SIGINT (the parent decides what an interrupt keeps and ends them), and stop when the
parent is gone.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerConfig:
    model: str | None
    precision: str
    right_context_ms: int | None
    threads: int
    block_s: float
    parent_pid: int


def worker_main(worker: int, config: WorkerConfig, tasks, results) -> None:
    """Entry point of one worker process (spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from reallm_cli.engine import Recognizer
    from reallm_cli.errors import ReallmError
    from reallm_cli.transcribe import file_options, stream_file

    torch.set_num_threads(config.threads)
    try:
        recognizer = Recognizer.load(config.model, precision=config.precision, right_context_ms=config.right_context_ms)
    except ReallmError as exc:
        results.put(("fatal", worker, str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - said in one line by the parent
        results.put(("fatal", worker, f"a worker could not load the model: {type(exc).__name__}: {exc}"))
        return
    results.put(("ready", worker))
    options = file_options(config.block_s)
    while True:
        task = tasks.get()
        if task is None:
            return
        index, path, label = task
        results.put(("start", worker, index))
        last = [0.0]

        def on_progress(done_s: float, total_s: float, _i=index) -> None:
            if os.getppid() != config.parent_pid:
                os._exit(1)  # the parent is gone: nobody reads what this worker would say
            now = time.monotonic()
            if now - last[0] >= 0.25:
                last[0] = now
                results.put(("progress", _i, done_s, total_s))

        try:
            result = stream_file(recognizer, path, lambda s, _i=index: results.put(("segment", _i, s)), options,
                                 on_progress)
        except ReallmError as exc:
            results.put(("error", index, str(exc).replace(path, label)))
            continue
        except Exception as exc:  # noqa: BLE001 - one input's failure must not end the others
            results.put(("error", index, f"{label}: {type(exc).__name__}: {exc}"))
            continue
        damage = None if result.damage is None else result.damage.replace(path, label)
        results.put(("done", index, result.duration_s, damage))
