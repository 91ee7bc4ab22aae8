"""The queueserver client's reply race (tests/queueserver_client.py), made to happen."""

from __future__ import annotations

import threading

import pytest
import zmq
from bluesky_queueserver.manager.comms import CommTimeoutError, ZMQCommSendThreads
from queueserver_client import without_reply_race

from multiscope.ports import free_port


@pytest.fixture
def reply_server():
    """A REP socket answering every request with its running number (as the manager does:
    a plain message, no JSON-RPC envelope)."""
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    port = free_port()
    socket.bind(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()

    def serve() -> None:
        n = 0
        while not stop.is_set():
            if socket.poll(50):
                socket.recv_json()
                n += 1
                socket.send_json({"n": n})

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{port}"
    stop.set()
    thread.join(5)
    socket.close(linger=0)
    context.term()


class _CountingEvent(threading.Event):
    """``_event_msg_received``, counting its sets (each wakes the caller)."""

    sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


class _FirstClearComesLate(threading.Event):
    """``_event_wait_for_msg``: the receive thread's clear after the first reply comes only
    once the caller has sent its next request, if the caller was woken before that
    clear. That is the interleaving a loaded machine produces at random, made certain.
    """

    def __init__(self, comm: ZMQCommSendThreads) -> None:
        super().__init__()
        self._comm = comm
        self._requests = 0
        self._receive_thread_clears = 0
        self._sent = threading.Condition()

    def _in_receive_thread(self) -> bool:
        return threading.current_thread().name == self._comm._thread_name

    def set(self) -> None:
        if not self._in_receive_thread():  # the caller: a request went out
            with self._sent:
                self._requests += 1
                self._sent.notify_all()
        super().set()

    def clear(self) -> None:
        if self._in_receive_thread():
            self._receive_thread_clears += 1
            woken = self._comm._event_msg_received.sets >= 1
            if self._receive_thread_clears == 1 and woken:
                with self._sent:
                    self._sent.wait_for(lambda: self._requests >= 2, timeout=10)
        super().clear()


def _two_requests_in_a_row(address: str) -> list:
    comm = ZMQCommSendThreads(zmq_server_address=address, timeout_recv=10_000)
    comm._event_msg_received = _CountingEvent()
    comm._event_wait_for_msg = _FirstClearComesLate(comm)
    try:
        return [comm.send_message(method="status")["n"] for _ in range(2)]
    finally:
        comm.close()


def test_the_client_as_installed_loses_the_second_reply(reply_server, monkeypatch):
    """The race is real: without the patch the second request fails at once."""
    callback = ZMQCommSendThreads._zmq_receive_blocking_cb
    # The library's own callback, even where test_queueserver.py patched it before.
    monkeypatch.setattr(ZMQCommSendThreads, "_zmq_receive_blocking_cb",
                        getattr(callback, "original", callback))  # fmt: skip
    with pytest.raises(CommTimeoutError, match="No received data was found"):
        _two_requests_in_a_row(reply_server)


def test_patched_each_request_gets_its_own_reply(reply_server, monkeypatch):
    monkeypatch.setattr(ZMQCommSendThreads, "_zmq_receive_blocking_cb",
                        ZMQCommSendThreads._zmq_receive_blocking_cb)  # restored after  # fmt: skip
    without_reply_race()
    assert _two_requests_in_a_row(reply_server) == [1, 2]
