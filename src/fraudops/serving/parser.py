"""The parser process: large request bodies are parsed and checked in a child process of each worker.

Parsing a large JSON body is one C call that keeps the GIL for its whole length (orjson: ~100 ms for a
5 MB object of 300,000 keys), and no thread can interrupt it: the event loop, and /ping with it, would
wait. So the bodies above ``app.PROCESS_BODY_BYTES`` are handed to a child, ``python -m
fraudops.serving.parser``, which imports only the protocol module (numpy, orjson) and runs
:func:`protocol.invocations_matrix` or :func:`protocol.predict_records` on them; the worker gets back the
float32 matrix (or the ClientError) and only scores. The two speak on the child's stdin and stdout: a
length-prefixed pickle of (job, feature names, arguments) in, one of (ok, result or error) out. A child
whose job was cancelled at its deadline, or that died, is killed and started again for the next body.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import struct
import sys
import traceback
from typing import Any

from fraudops.serving.protocol import ClientError, invocations_matrix, predict_records, schema_of

JOBS: dict[str, Any] = {"invocations": invocations_matrix, "predict": predict_records}
_LENGTH = struct.Struct("<Q")
READY = b"R"


class ParserProcess:
    """The worker's end: one child, one job at a time, started again when it is gone."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the child and wait until it has imported what it needs."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fraudops.serving.parser",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        if await asyncio.wait_for(self.proc.stdout.read(1), 120) != READY:
            self.kill()
            raise RuntimeError("the parser process exited at start (its error is in the log above)")

    async def run(self, job: str, features: tuple[str, ...], *args: Any) -> Any:
        """``JOBS[job](schema of features, *args)`` in the child: its result, or its ClientError raised.
        A child found gone (killed since its last job) is replaced once."""
        data = pickle.dumps((job, features, args), protocol=pickle.HIGHEST_PROTOCOL)
        async with self.lock:
            for attempt in (1, 2):
                if self.proc is None or self.proc.returncode is not None:
                    await self.start()
                try:
                    ok, value = await self._exchange(data)
                    break
                except (OSError, asyncio.IncompleteReadError):
                    self.kill()
                    if attempt == 2:
                        raise
                except BaseException:  # cancelled at a deadline: the child's state is unknown
                    self.kill()
                    raise
        if ok:
            return value
        raise value

    async def _exchange(self, data: bytes) -> tuple[bool, Any]:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(_LENGTH.pack(len(data)))
        proc.stdin.write(data)
        await proc.stdin.drain()
        (size,) = _LENGTH.unpack(await proc.stdout.readexactly(_LENGTH.size))
        answer: tuple[bool, Any] = pickle.loads(await proc.stdout.readexactly(size))
        return answer

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc = None

    async def stop(self) -> None:
        """Kill the child and wait for it (its pipes are closed before the event loop is)."""
        proc = self.proc
        self.kill()
        if proc is not None:
            await proc.wait()


def main() -> None:
    """The child: answer jobs until stdin closes."""
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    out.write(READY)
    out.flush()
    while len(head := inp.read(_LENGTH.size)) == _LENGTH.size:
        (size,) = _LENGTH.unpack(head)
        job, features, args = pickle.loads(inp.read(size))
        answer: tuple[bool, Any]
        try:
            answer = (True, JOBS[job](schema_of(features), *args))
        except ClientError as e:
            answer = (False, e)
        except Exception as e:  # a bug of ours: the worker logs it and answers 500
            traceback.print_exc()
            answer = (False, RuntimeError(f"parser process: {type(e).__name__}: {e}"))
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(_LENGTH.pack(len(data)))
        out.write(data)
        out.flush()


if __name__ == "__main__":
    main()
