"""The hop between a front-end worker process and the model process: messages over a Unix socket.

A message is a tuple of Python values (names, numbers, numpy arrays, the core's dataclasses and
errors), pickled with protocol 5 so that array bytes travel out of band: no copy into the pickle.
Each frame is

    header: payload bytes (u64), pickle bytes (u32), buffers (u32), tensor slot (i32), then
            each buffer's length (u64; top bit set: in shared memory)
    payload: the pickle, then the inline buffers back to back

Tensors skip pickle where they can: a message's dict of numeric arrays (the inputs of a
request, the outputs of its answer) is sent as (name, dtype, shape) triples in the pickle and
the arrays' bytes as buffers ("tensor slot": its place in the message); anything else (string
tensors, control messages) is pickled whole, with pickle's own out-of-band buffers.

A buffer of `SHARED_BYTES` or more does not go through the socket: it is written once into an
anonymous shared-memory file (memfd) whose descriptor goes along with the frame (SCM_RIGHTS), and
the receiver maps it, so a 64 MiB tensor costs one copy on the sending side and none on the other.
Descriptors are queued in the order they arrive and taken by frames in order: the kernel delivers
a descriptor with the first byte of the send that carried it, which is never after its frame's
first byte.

Writes are coalesced: every message sent during one turn of the event loop goes out in one
`sendmsg` (scatter-gather, no joining), which is what keeps the per-message cost low at 32
requests in flight. Trusted peers only: both ends are plexserve processes of one user, and the
socket lives in a directory only that user can enter (pickle runs code of the sender's choosing).
"""

from __future__ import annotations

import array
import asyncio
import collections
import errno
import functools
import logging
import mmap
import os
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SHARED_BYTES = 1 << 20  # buffers at least this large go through shared memory
READ_BYTES = 1 << 18
MAX_FDS = 250  # per sendmsg (the kernel's SCM_MAX_FD is 253)
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_HEAD = struct.Struct("<QIIi")  # payload, pickle, buffers, tensor slot
SHARED = 1 << 63

Message = tuple[Any, ...]


class HopClosed(ConnectionError):
    """The peer went away (or this end was closed)."""


def encode(message: Message) -> tuple[list[bytes | memoryview], list[int]]:
    """The chunks of one frame and the shared-memory descriptors that go with it (the caller
    closes those once they are sent)."""
    slot = _tensor_slot(message)
    views: list[memoryview]
    if slot < 0:  # anything: pickle's own out-of-band buffers
        buffers: list[pickle.PickleBuffer] = []
        body = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
        views = [buffer.raw() for buffer in buffers]
    else:  # the hot path: a dict of numeric arrays, described by (name, dtype, shape)
        tensors: dict[str, np.ndarray] = message[slot]
        described = []
        views = []
        for name, array in tensors.items():
            if not array.flags.c_contiguous:
                array = np.ascontiguousarray(array)
            described.append((name, array.dtype.str, array.shape))
            views.append(memoryview(array.data).cast("B") if array.size else memoryview(b""))
        body = pickle.dumps((*message[:slot], described, *message[slot + 1 :]), protocol=5)
    chunks: list[bytes | memoryview] = [b"", body]
    fds: list[int] = []
    sizes = []
    payload = len(body)
    for view in views:
        nbytes = view.nbytes
        if nbytes >= SHARED_BYTES:
            fds.append(_to_shared_memory(view))
            sizes.append(nbytes | SHARED)
        else:
            chunks.append(view)
            payload += nbytes
            sizes.append(nbytes)
    chunks[0] = _HEAD.pack(payload, len(body), len(views), slot) + _table(len(views)).pack(*sizes)
    return chunks, fds


@functools.cache
def _table(count: int) -> struct.Struct:
    """Each buffer's size (u64), its top bit set when it is in shared memory."""
    return struct.Struct(f"<{count}Q")


def _tensor_slot(message: Message) -> int:
    """Where the message holds its tensors, when they can skip pickle (numeric arrays in a
    dict); -1 otherwise."""
    for i, value in enumerate(message):
        if type(value) is dict and value:
            for array in value.values():
                if type(array) is not np.ndarray or array.dtype.hasobject:
                    return -1
            return i
    return -1


def decode(frame: memoryview, body: int, slot: int, buffers: list[memoryview]) -> Message:
    """The message of a frame whose pickle is `frame[:body]` (the inverse of `encode`)."""
    if slot < 0:
        return pickle.loads(frame[:body], buffers=buffers)  # type: ignore[no-any-return]
    message = pickle.loads(frame[:body])
    tensors = {
        name: np.frombuffer(buffer, _dtype(dtype)).reshape(shape)
        for (name, dtype, shape), buffer in zip(message[slot], buffers, strict=True)
    }
    return (*message[:slot], tensors, *message[slot + 1 :])


@functools.cache
def _dtype(text: str) -> np.dtype:
    return np.dtype(text)


def _to_shared_memory(view: memoryview) -> int:
    fd = os.memfd_create("plexserve-tensor", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, view.nbytes)
        with mmap.mmap(fd, view.nbytes) as shared:
            shared[:] = view
    except BaseException:
        os.close(fd)
        raise
    return fd


def _from_shared_memory(fd: int, nbytes: int) -> memoryview:
    try:
        return memoryview(mmap.mmap(fd, nbytes))  # the mapping lives as long as the view
    finally:
        os.close(fd)


class Connection:
    """One end of a hop socket, driven by the event loop: `send` queues a message, and every
    message received is handed to `on_message`; `on_close(error)` runs once when the connection
    ends (error None: closed by this end)."""

    def __init__(
        self,
        sock: socket.socket,
        on_message: Callable[[Message], None],
        on_close: Callable[[BaseException | None], None],
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._on_close = on_close
        self._in = bytearray()
        self._fds: collections.deque[int] = collections.deque()
        self._frame: tuple[int, int, int, tuple[int, ...]] | None = None  # the head read
        self._out: list[bytes | memoryview] = []
        self._out_fds: list[int] = []
        self._out_bytes = 0
        self._flushing = False
        self._writing = False  # waiting for the socket to take more
        self.closed = False
        self._loop.add_reader(sock.fileno(), self._readable)

    # --- sending ---

    @property
    def sending(self) -> bool:
        """Frames are queued that the socket has not taken yet."""
        return bool(self._out)

    def send(self, message: Message) -> None:
        if self.closed:
            raise HopClosed("the hop is closed")
        chunks, fds = encode(message)
        self._out += chunks
        self._out_bytes += sum(map(len, chunks))  # (every chunk is a view of bytes)
        self._out_fds += fds
        if not self._flushing and not self._writing:
            self._flushing = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if self.closed:
            return
        try:
            while self._out:
                fds, self._out_fds = self._out_fds[:MAX_FDS], self._out_fds[MAX_FDS:]
                ancillary = (
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
                )
                try:
                    sent = self._sock.sendmsg(self._out[:512], ancillary)
                except BlockingIOError:
                    self._out_fds[:0] = fds
                    self._wait_writable()
                    return
                for fd in fds:  # the kernel holds them now
                    os.close(fd)
                self._consume(sent)
        except OSError as error:
            self._close(error)
            return
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._sock.fileno())

    def _consume(self, sent: int) -> None:
        """Drop `sent` bytes from the front of the chunks to write."""
        out = self._out
        self._out_bytes -= sent
        if not self._out_bytes:  # (the usual case: the socket took everything)
            out.clear()
            return
        i = 0
        while i < len(out) and sent >= len(out[i]):
            sent -= len(out[i])
            i += 1
        del out[:i]
        if sent:
            out[0] = memoryview(out[0])[sent:]

    def _wait_writable(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._sock.fileno(), self._flush)

    # --- receiving ---

    def _readable(self) -> None:
        try:
            data, ancillary, flags, _ = self._sock.recvmsg(READ_BYTES, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._close(error)
            return
        for level, kind, fds in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(fds[: len(fds) - len(fds) % received.itemsize])
                self._fds.extend(received)
        if flags & socket.MSG_CTRUNC:
            self._close(HopClosed("the hop lost shared-memory descriptors (MSG_CTRUNC)"))
            return
        if not data:
            self._close(HopClosed("the peer closed the hop"))
            return
        self._in += data
        try:
            self._parse()
        except Exception as error:  # noqa: BLE001 - a broken frame ends the connection
            log.exception("hop: a frame could not be read")
            self._close(error)

    def _parse(self) -> None:
        data = self._in
        start = 0
        while not self.closed:
            if self._frame is None:
                if len(data) - start < _HEAD.size:
                    break
                payload, body, count, slot = _HEAD.unpack_from(data, start)
                table_struct = _table(count)
                need = _HEAD.size + table_struct.size
                if len(data) - start < need:
                    break
                table = table_struct.unpack_from(data, start + _HEAD.size)
                start += need
                self._frame = (payload, body, slot, table)
            payload, body, slot, table = self._frame
            if len(data) - start < payload:
                break
            # a copy of its own (`data` takes the next bytes read): writable arrays
            frame = memoryview(data[start : start + payload])
            start += payload
            self._frame = None
            buffers: list[memoryview] = []
            offset = body
            for nbytes in table:
                if nbytes & SHARED:
                    buffers.append(_from_shared_memory(self._fds.popleft(), nbytes ^ SHARED))
                else:
                    buffers.append(frame[offset : offset + nbytes])
                    offset += nbytes
            self._on_message(decode(frame, body, slot, buffers))
        del data[:start]

    # --- ending ---

    def close(self) -> None:
        self._close(None)

    def _close(self, error: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        fileno = self._sock.fileno()
        if fileno >= 0:
            self._loop.remove_reader(fileno)
            if self._writing:
                self._loop.remove_writer(fileno)
        for fd in [*self._out_fds, *self._fds]:
            os.close(fd)
        self._out_fds.clear()
        self._fds.clear()
        self._sock.close()
        self._on_close(error)


async def connect(path: str) -> socket.socket:
    """A connected socket to the hop server at `path` (a Unix socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock


def is_refused(error: OSError) -> bool:
    """The hop server is not there (yet, or any more)."""
    return error.errno in (errno.ENOENT, errno.ECONNREFUSED)
