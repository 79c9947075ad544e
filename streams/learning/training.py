"""Replay's decoding and learning of each fetch, in this process or in a process of its own.

Decoding a result costs about as much as learning it (a JSON parse that builds Python objects:
2.4-3.4 µs, whether pydantic, orjson or msgspec does it), and reading the fetch from Kafka about
as much again. With two cores or more, `ChildTraining` decodes and learns in a spawned process
while this one reads the next fetch: 113-124k -> 145-163k results/s on the bench's topic (a
2-core machine that also runs the broker). With one core the pipe would only add work, so
`InProcessTraining` does both here.

Either way the results are learnt in the order the fetches arrive, by agents.learning.trainer.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError

from agents.learning.results import Results
from schemas.codec import MAX_VALUE_BYTES
from schemas.errors import OmnistreamError
from schemas.events import GenerationResultFields

if TYPE_CHECKING:  # the trainer compiles its loops (numba): imported where they run
    from agents.learning.hierarchy import HierarchicalModel
    from agents.learning.trainer import NodeReport


class TrainingError(OmnistreamError, RuntimeError):
    """The training process failed or ended without handing its model back (not the input's
    fault: bad records are left out, never raised)."""


_RESULT = TypeAdapter(GenerationResultFields)
_RESULTS = TypeAdapter(list[GenerationResultFields])


def _columns(fields: list[GenerationResultFields]) -> Results:
    return Results([f["node_type"] for f in fields], [f["mixins"] for f in fields],
                   [f["success"] for f in fields],
                   [None if (i := f.get("id")) is None else i.int >> 64 for f in fields])


def decode_results(values: list[bytes | None]) -> Results:
    """The values that are results (with GenerationResult's checks, no model or envelope built
    per record), in order; the others are left out: the workers dead-lettered them. One parse
    for the whole fetch; only a fetch holding a bad record is parsed again one by one."""
    if all(v is not None and len(v) <= MAX_VALUE_BYTES for v in values):
        try:
            return _columns(_RESULTS.validate_json(b"[" + b",".join(values) + b"]"))  # type: ignore[arg-type]
        except ValidationError:
            pass
    valid: list[GenerationResultFields] = []
    for raw in values:
        if raw is None or len(raw) > MAX_VALUE_BYTES:
            continue
        try:
            valid.append(_RESULT.validate_json(raw))
        except ValidationError:
            continue
    return _columns(valid)


@contextmanager
def short_lived_garbage() -> Iterator[None]:
    """Replay makes about ten objects per record (parsed fields, ids, lists) that reference
    counting frees, and every few hundred of them Python's cycle collector ran; its older
    generations walked the models' and the consumer's long-lived objects again each time. Those
    are frozen (left out of collections) while the replay reads: 50-74k -> 88-129k results/s
    on the bench's 50,000 results (raising the youngest generation's threshold as well gained
    nothing more)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass
class Trained:
    """What a replay's training hands back."""
    invalid: int                  # records that are not results (left out)
    duplicates: int               # results sent twice (same id), learnt once
    nodes: dict[str, NodeReport]
    model: HierarchicalModel      # the new shared model
    old_version: int              # of the shared model in use (0: none yet)


class InProcessTraining:
    """Decodes and learns each fetch in this process."""

    def __init__(self) -> None:
        self.invalid = 0

    async def start(self, old_models: dict[str, HierarchicalModel]) -> None:
        self.begin(old_models)

    def begin(self, old_models: dict[str, HierarchicalModel]) -> None:
        from agents.learning.trainer import Trainer

        self.trainer = Trainer(old_models)  # compiles its loops now

    async def learn(self, values: list[bytes | None]) -> None:
        self.learn_now(values)

    def learn_now(self, values: list[bytes | None]) -> None:
        results = decode_results(values)
        self.invalid += len(values) - len(results)
        self.trainer.learn(results)

    async def finish(self) -> Trained:
        return self.finish_now()

    def finish_now(self) -> Trained:
        t = self.trainer
        return Trained(self.invalid, t.duplicates, t.nodes, t.finish(), t.old_version)

    def close(self) -> None:
        pass


class ChildTraining:
    """Decodes and learns each fetch in a process of its own (`python -m
    streams.learning.training`: a fresh interpreter, so no fork of a process running threads,
    and no re-import of the caller's main script as multiprocessing's spawn does); `learn`
    returns once the fetch is handed over (a socket buffer holds about one fetch, so memory
    stays bounded)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        # its imports run while the caller reads the models in use
        # (its stdout is not the caller's: `replay --json` prints there)
        self._process = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),), stdout=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())

    async def start(self, old_models: dict[str, HierarchicalModel]) -> None:
        await self._send(pickle.dumps(old_models, protocol=pickle.HIGHEST_PROTOCOL))
        await self._receive()  # ready: its loops are compiled

    async def learn(self, values: list[bytes | None]) -> None:
        await self._send(pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL))

    async def finish(self) -> Trained:
        await self._send(b"")
        trained = await self._receive()
        assert isinstance(trained, Trained)
        return trained

    def close(self) -> None:
        self._conn.close()
        if self._process.poll() is None:
            self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    async def _send(self, payload: bytes) -> None:
        try:
            await asyncio.to_thread(self._conn.send_bytes, payload)
        except OSError:  # broken pipe, reset: the process failed
            await self._receive()  # its error, if it sent one
            raise self._died() from None

    async def _receive(self) -> object:
        try:
            kind, value = pickle.loads(await asyncio.to_thread(self._conn.recv_bytes))
        except (EOFError, OSError):
            raise self._died() from None
        if kind == "error":
            raise TrainingError(f"replay's training process failed:\n{value}")
        return value

    def _died(self) -> TrainingError:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        return TrainingError(f"replay's training process ended without its result (exit code {code}); "
                             "nothing was changed")


def _serve(conn: Connection) -> None:
    """The training process: old models, then fetches (an empty message ends them), then the
    trained model back; an error is sent back with its traceback."""
    try:
        local = InProcessTraining()
        local.begin(pickle.loads(conn.recv_bytes()))
        conn.send_bytes(pickle.dumps(("ready", None)))
        with short_lived_garbage():
            while payload := conn.recv_bytes():
                local.learn_now(pickle.loads(payload))
        conn.send_bytes(pickle.dumps(("done", local.finish_now()), protocol=pickle.HIGHEST_PROTOCOL))
    except EOFError:  # the replay stopped (interrupted or failed): nothing to hand back
        pass
    except BaseException:
        conn.send_bytes(pickle.dumps(("error", traceback.format_exc())))


def training() -> InProcessTraining | ChildTraining:
    """A process of its own for the training when this one may use two cores or more."""
    return ChildTraining() if len(os.sched_getaffinity(0)) >= 2 else InProcessTraining()


if __name__ == "__main__":  # run as a script: serve from the module by its own name, so what
    # it sends back unpickles as streams.learning.training's classes, not __main__'s
    import signal

    from streams.learning import training as module

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle: it ends us
    module._serve(Connection(int(sys.argv[1])))
