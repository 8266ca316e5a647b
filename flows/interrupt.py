"""Ctrl-C (SIGINT) and SIGTERM during a run: one line, a non-zero exit at once, nothing lost.

Without this, Ctrl-C in a terminal also reaches Prefect's temporary API server (same process group): the
stage stopped, then the flow engine retried the dead server for minutes and ended in an httpx traceback.
Stopping here the way `kill -9` would is safe by construction: every artifact, checkpoint and LLM answer is
written atomically (lagcl/artifacts.py, the SQLite cache), and `make chaos` kills every stage at random points
and checks the next run resumes to the uninterrupted result. The next run of the same command resumes: finished
stages are Cached, training continues from its last epoch ("resumed at epoch N"), answered LLM requests come
from the cache.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

import psutil

# the stage running in this process (flows/runner.py sets it), for the line printed on a signal
current = {"stage": None}


def interrupted_line(signum: int, stage: str | None) -> str:
    name = signal.Signals(signum).name
    where = f"during stage '{stage}'" if stage else "during the run"
    return (f"interrupted ({name}) {where}: finished stages, training checkpoints and answered LLM requests are "
            "kept; run the same command again to resume")


def _stop(signum: int, frame) -> None:  # signal handler signature
    print(f"\n{interrupted_line(signum, current['stage'])}", file=sys.stderr, flush=True)
    # the temporary Prefect server, Dask workers, data loaders: none outlives the run
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=3)
    os._exit(128 + signum)


@contextmanager
def stop_cleanly_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM end the process as described above while the block runs (main thread only: Python
    delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
