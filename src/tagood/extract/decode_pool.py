"""Decoding in worker processes, batches handed to the model in shared memory: :func:`process_batches`.

The extraction's decode stage (open, decode, resize, normalise) is Python code around PIL and numpy calls; with
threads in one process the interpreter lock serialises the Python part of every image, and the model's own Python
code (output selection, the cache writer) competes for it too, so the pipeline runs below its slowest stage. Here
each batch is split into contiguous parts, one per worker process; a worker writes its preprocessed images straight
into a slot of one shared anonymous memory map (``mmap``, ``MAP_SHARED``, created before the workers are forked:
no named segment to leak) and sends back only the per-sample outcome (failed or not, why, the file's stat). The
consumer gets the slot as a numpy view, with no copy (a batch with failed samples is compacted, one copy). Three
slots: the consumer holds one, the workers fill the next two.

Workers are forked (``fork`` start method: the source and the backbone's ``preprocess`` are inherited, never
pickled); they ignore SIGINT (Ctrl-C reaches the parent, which stops them), exit when their pipe closes (a killed
parent leaves no worker behind), and are stopped (sentinel, then terminate, then kill) when the consumer stops
early, raises or finishes. A worker that dies is an error naming its exit code; an exception raised by
``preprocess`` in a worker is raised again in the consumer. Results are bit-identical to decoding in threads: the
same ``preprocess`` runs on the same file, and batches come in source order.
"""

from __future__ import annotations

import gc
import logging
import mmap
import multiprocessing as mp
import signal
import traceback
from collections.abc import Callable, Generator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from tagood.cache import file_stat
from tagood.data.source import ImageDecodeError, ImageSource

log = logging.getLogger(__name__)

#: one sample's outcome: ``(index, preprocessed image or None, why it failed or None, file stat)``
Decoded = tuple[int, np.ndarray | None, str | None, list[int] | None]
#: one decoded batch: ``(decoded indices, their batch or None, failures [(index, reason)], {index: file stat})``
Batch = tuple[list[int], np.ndarray | None, list[tuple[int, str]], dict[int, list[int] | None]]

#: batches in shared memory at once: one held by the consumer, two being decoded
SLOTS = 3


class DecodeWorkerError(RuntimeError):
    """A decode worker process died (killed by the system, out of memory) before returning its part of a batch."""


def decode_one(source: ImageSource, preprocess: Callable[[Any], np.ndarray], i: int) -> Decoded:
    """Decode and preprocess sample ``i`` of ``source``.

    Args:
        source: the images.
        preprocess: image -> float32 ``(3, H, W)``.
        i: the source index.

    Returns:
        ``(i, preprocessed image or None, why it failed or None, file stat)``; the stat is taken before the file is
        read, so a file changed meanwhile is re-extracted later.
    """
    stat = file_stat(source.samples[i].ident)
    try:
        return i, preprocess(source.load(i)), None, stat
    except ImageDecodeError as e:
        return i, None, e.reason, stat
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for damaged files
        return i, None, f"{type(e).__name__}: {e}", stat


def fork_available() -> bool:
    """Whether worker processes can be forked here: Linux, macOS (not Windows), and not inside a daemonic
    ``multiprocessing`` worker (which may not have children)."""
    return "fork" in mp.get_all_start_methods() and not mp.current_process().daemon


def as_batch(results: Sequence[Decoded]) -> Batch:
    """A batch of decoded samples (stacked, one copy) from their outcomes, in the order given.

    Args:
        results: the outcomes of one batch's samples.

    Returns:
        ``(decoded indices, their batch (b, 3, H, W) or None, failures [(index, reason)], {index: file stat})``.
    """
    ok = [(i, x) for i, x, _, _ in results if x is not None]
    failed = [(i, err or "") for i, x, err, _ in results if x is None]
    batch = np.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], batch, failed, {i: st for i, _, _, st in results}


def _worker(conn: Connection, others: list[Connection], slots: np.ndarray, source: ImageSource,
            preprocess: Callable[[Any], np.ndarray]) -> None:
    """A decode worker: for each task ``(batch, slot, offset, indices)`` write the images into ``slots[slot]`` from
    row ``offset`` on and send back ``(batch, [(index, ok, reason, stat)])``; ``None`` or a closed pipe ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    for c in others:  # the parent's ends: holding them would keep this worker's own pipe open after the parent dies
        c.close()
    shape = slots.shape[2:]
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        k, slot, offset, indices = task
        reply: tuple[str, int, Any]
        try:
            out: list[tuple[int, bool, str | None, list[int] | None]] = []
            for j, i in enumerate(indices):
                _, x, err, stat = decode_one(source, preprocess, i)
                if x is not None:
                    x = np.asarray(x)
                    if x.shape != shape:
                        raise ValueError(f"preprocess gave an image of shape {x.shape} for sample {i} "
                                         f"({source.samples[i].ident}), others have {shape}; a batch needs one shape")
                    slots[slot, offset + j] = x
                out.append((i, x is not None, err, stat))
            reply = ("ok", k, out)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            reply = ("error", k, e)
        try:
            try:
                conn.send(reply)
            except (BrokenPipeError, ConnectionResetError, EOFError):
                return  # the consumer is gone
            except Exception as e:  # an exception that does not pickle: its text
                bad = reply[2] if isinstance(reply[2], BaseException) else e
                conn.send(("error", k, RuntimeError("".join(traceback.format_exception(bad)))))
        except (OSError, EOFError):
            return


def _parts(chunk: Sequence[int], workers: int) -> list[tuple[int, list[int]]]:
    """``chunk`` cut into at most ``workers`` contiguous parts ``(offset, indices)``."""
    n = len(chunk)
    w = max(1, min(workers, n))
    bounds = [n * p // w for p in range(w + 1)]
    return [(bounds[p], [int(i) for i in chunk[bounds[p]:bounds[p + 1]]]) for p in range(w) if bounds[p + 1] > bounds[p]]


def process_batches(source: ImageSource, preprocess: Callable[[Any], np.ndarray], chunks: Sequence[Sequence[int]],
                    workers: int) -> Generator[Batch, None, None]:
    """Decode ``chunks`` of source indices in ``workers`` forked processes, in order, two batches ahead.

    A batch is a view of shared memory, valid until the next one is asked for (the consumer runs the model on it
    and keeps the outputs, not the batch). The first decodable sample is decoded once in this process to learn the
    batch's shape; chunks before it (every sample failed) are returned without starting workers.

    Args:
        source: the images.
        preprocess: image -> float32 ``(3, H, W)``, the same for every image (numpy / PIL code).
        chunks: the source indices, batch by batch.
        workers: decode processes (at least 1).

    Returns:
        An iterator, in source order, of ``(decoded indices, their batch (b, 3, H, W) or None when every sample of
        the batch failed, failures [(index, reason)], {index: file stat})``.

    Raises:
        DecodeWorkerError: a worker died.
    """
    first = 0
    probe: np.ndarray | None = None
    while first < len(chunks) and probe is None:  # learn the shape from the first image that decodes
        tried: list[Decoded] = []
        for i in chunks[first]:
            tried.append(decode_one(source, preprocess, int(i)))
            if tried[-1][1] is not None:
                probe = np.asarray(tried[-1][1])
                break
        if probe is None:
            yield as_batch(tried)
            first += 1
    if probe is None:
        return
    todo = list(chunks[first:])
    rows = max(len(c) for c in todo)
    nbytes = SLOTS * rows * probe.nbytes
    buf = mmap.mmap(-1, max(1, nbytes))  # anonymous, shared with the forked workers
    slots = np.frombuffer(buf, dtype=probe.dtype, count=SLOTS * rows * probe.size).reshape(SLOTS, rows, *probe.shape)
    ctx = mp.get_context("fork")
    procs: list[Any] = []
    conns: list[Connection] = []
    finished = False
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # no Ctrl-C in a worker before it ignores it
        gc.freeze()  # the workers' garbage collector leaves the inherited objects alone: no copy-on-write of their pages
        try:
            for _ in range(max(1, workers)):
                parent, child = ctx.Pipe()
                conns.append(parent)
                p = ctx.Process(target=_worker, args=(child, list(conns), slots, source, preprocess), daemon=True,
                                name="tagood-decode")
                p.start()
                child.close()
                procs.append(p)
        finally:
            gc.unfreeze()
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        owners: dict[int, list[int]] = {}  # batch -> workers holding a part of it, in offset order

        def submit(k: int) -> None:
            parts = _parts(todo[k], len(procs))
            shift = k % len(procs)  # a short last batch does not always land on the first workers
            owners[k] = [(p + shift) % len(procs) for p in range(len(parts))]
            for w, (off, idx) in zip(owners[k], parts, strict=True):
                consecutive = idx[-1] - idx[0] == len(idx) - 1
                conns[w].send((k, k % SLOTS, off, range(idx[0], idx[-1] + 1) if consecutive else idx))

        def receive(w: int, k: int) -> list[tuple[int, bool, str | None, list[int] | None]]:
            while True:
                ready = wait([conns[w], procs[w].sentinel])
                if conns[w] in ready:
                    try:
                        status, got, payload = conns[w].recv()
                        break
                    except (EOFError, OSError):  # the pipe closed: the worker is gone
                        pass
                elif procs[w].is_alive():
                    continue
                procs[w].join(timeout=2.0)
                raise DecodeWorkerError(f"decode worker process {procs[w].pid} exited with code {procs[w].exitcode} "
                                        "(killed by the system: out of memory?) while decoding a batch; run again "
                                        "(the extraction resumes) with fewer workers or TAGOOD_DECODE=threads")
            assert got == k, f"decode worker sent batch {got}, expected {k}"
            if status == "error":
                raise payload
            return list(payload)

        for k in range(min(SLOTS, len(todo))):
            submit(k)
        for k in range(len(todo)):
            outcome = [r for w in owners.pop(k) for r in receive(w, k)]
            ok_rows = [j for j, r in enumerate(outcome) if r[1]]
            view = slots[k % SLOTS]
            if len(ok_rows) == len(outcome):
                batch: np.ndarray | None = view[: len(outcome)]
            elif ok_rows:
                batch = view[ok_rows]  # a copy without the failed rows
            else:
                batch = None
            yield ([outcome[j][0] for j in ok_rows], batch,
                   [(i, err or "") for i, ok, err, _ in outcome if not ok], {i: st for i, _, _, st in outcome})
            if k + SLOTS < len(todo):
                submit(k + SLOTS)  # into the slot the consumer has just finished with
        finished = True
    finally:  # the map itself is freed when the last view of it (a batch the consumer still holds) goes
        _stop(procs, conns, finished)


def _stop(procs: Sequence[Any], conns: Sequence[Connection], finished: bool) -> None:
    """Stop the workers: idle ones (``finished``) are asked to exit, busy ones (an error, an interrupt, a consumer
    that stopped early) are terminated; any still alive after 2 s is killed. None is left behind."""
    for c in conns:
        try:
            c.send(None)
        except (OSError, ValueError):
            pass
    for p in procs:
        if finished:
            p.join(timeout=2.0)
        elif p.is_alive():
            p.terminate()
    for p in procs:
        if p.is_alive():
            p.terminate()
        p.join(timeout=2.0)
        if p.is_alive():
            p.kill()
            p.join()
    for c in conns:
        c.close()
