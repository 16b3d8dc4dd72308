"""The hop's framing (service/hop.py) over a real Unix socket pair: what goes in comes out, in
order, tensors intact, large ones through shared memory, and a closed peer is noticed."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from plexserve.errors import InvalidInput
from plexserve.hop import SHARED_BYTES, Connection, HopClosed, Message, encode
from plexserve.signature import Signature, TensorSpec


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def exchange(
    messages: list[Message], expect: int | None = None
) -> tuple[list[Message], list[BaseException | None]]:
    """Send `messages` from one end of a socket pair in one loop turn; what the other end got."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    loop = asyncio.get_running_loop()
    received: list[Message] = []
    closed: list[BaseException | None] = []
    done = loop.create_future()
    wanted = len(messages) if expect is None else expect

    def on_message(message: Message) -> None:
        received.append(message)
        if len(received) == wanted and not done.done():
            done.set_result(None)

    sender = Connection(left, lambda m: None, closed.append)
    receiver = Connection(right, on_message, closed.append)
    for message in messages:
        sender.send(message)
    await asyncio.wait_for(done, 60)
    sender.close()
    receiver.close()
    return received, closed


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_tensors_and_other_values_arrive_as_sent_and_in_order() -> None:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    strided = rng.standard_normal((6, 4))[:, ::2]  # not contiguous
    words = np.array([b"a", b"bc", b""], dtype=object)
    signature = Signature({"x": TensorSpec("x", np.dtype(np.float32), (None, 4))}, {})
    messages: list[Message] = [
        ("infer", 1, "m", 3, {"image": image, "ids": np.arange(5, dtype=np.int64)}, 2.5),
        ("infer", 2, "m", 3, {"strided": strided, "empty": np.zeros((0, 4), np.float16)}, None),
        ("ok", 3, {"words": words, "y": np.ones(2, np.float32)}),  # strings: pickled whole
        ("error", 4, InvalidInput("input 'x': expected shape [-1, 4]")),
        ("state", signature),
        *[("ok", 10 + i, {"y": np.full((1, 3), i, np.int32)}) for i in range(200)],
    ]
    received, closed = run(exchange(messages))
    assert [m[:2] for m in received] == [m[:2] for m in messages]
    first, second, third, error, state = received[:5]
    np.testing.assert_array_equal(first[4]["image"], image)
    assert first[4]["image"].dtype == np.float32 and first[4]["image"].flags.writeable
    np.testing.assert_array_equal(first[4]["ids"], np.arange(5))
    assert first[2:4] == ("m", 3) and first[5] == 2.5
    np.testing.assert_array_equal(second[4]["strided"], strided)
    assert second[4]["empty"].shape == (0, 4) and second[4]["empty"].dtype == np.float16
    assert second[5] is None
    assert third[2]["words"].tolist() == [b"a", b"bc", b""]
    assert isinstance(error[2], InvalidInput) and error[2].message.startswith("input 'x'")
    assert state[1] == signature
    assert [int(m[2]["y"][0, 0]) for m in received[5:]] == list(range(200))
    assert closed == [None, None]


def test_a_large_tensor_goes_through_shared_memory_not_the_socket() -> None:
    big = np.random.default_rng(1).standard_normal(SHARED_BYTES // 4 * 3).astype(np.float32)
    chunks, fds = encode(("ok", 1, {"y": big, "small": np.ones(3, np.float32)}))
    try:
        assert len(fds) == 1
        assert sum(len(chunk) for chunk in chunks) < 1024  # only the small tensor and headers
        assert os.fstat(fds[0]).st_size == big.nbytes
    finally:
        for fd in fds:
            os.close(fd)
    before = open_fds()
    received, _ = run(exchange([("ok", 1, {"y": big}), ("ok", 2, {"y": big[:10]})]))
    np.testing.assert_array_equal(received[0][2]["y"], big)
    np.testing.assert_array_equal(received[1][2]["y"], big[:10])
    received[0][2]["y"][0] = 7.0  # the mapping is the receiver's own, writable
    del received
    assert open_fds() == before  # no descriptor left behind on either side


def test_more_than_the_socket_buffer_holds_arrives_whole() -> None:
    """Frames bigger than the kernel's buffer: the sender waits for the socket to drain."""
    block = np.arange(SHARED_BYTES // 8 - 1, dtype=np.int64)  # just under shared memory
    messages: list[Message] = [("ok", i, {"y": block + i}) for i in range(40)]
    received, _ = run(exchange(messages))
    for i, message in enumerate(received):
        assert message[1] == i
        np.testing.assert_array_equal(message[2]["y"], block + i)


def test_a_peer_that_goes_away_is_noticed_and_sending_then_fails() -> None:
    async def scenario() -> tuple[list[BaseException | None], Callable[[], None]]:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        connection = Connection(left, lambda m: None, ended.set_result)
        right.close()
        error = await asyncio.wait_for(ended, 10)
        assert connection.closed
        return [error], lambda: connection.send(("ok", 1, {}))

    errors, send = run(scenario())
    assert isinstance(errors[0], HopClosed)
    with pytest.raises(HopClosed):
        send()
