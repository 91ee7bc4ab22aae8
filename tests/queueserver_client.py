"""bluesky-queueserver's thread-based ZMQ client, without a race it has under load.

``ZMQCommSendThreads`` (bluesky-queueserver 0.0.25; ``bluesky_queueserver_api``'s
``REManagerAPI`` talks to an RE Manager through it) hands a blocking request its
reply from a receive thread, in two steps: the reply callback stores the reply and sets
``_event_msg_received``; then the thread clears ``_event_wait_for_msg`` and sets
``_event_msg_received`` again. The requester wakes at the first set and may send its
next request before the thread has taken its second step. The thread then clears the
new request's "a reply is awaited" event and sets "received" with no reply stored: the
new request fails at once ("No received data was found"), although the manager goes on
to carry it out (a ``queue_item_add`` adds its item), and its reply is read by nobody.

On the loaded 2-core CI machine this failed ``test_queueserver.py``'s first
``item_add``, and the item it added anyway failed two later tests of the module.

:func:`without_reply_race` makes the callback only store the reply, so the requester
wakes at the thread's own last step, after which the thread does nothing until the next
request. Test processes only: the project's code does not use this client.
"""

from __future__ import annotations

__all__ = ["without_reply_race"]


def without_reply_race() -> None:
    """Patch ``ZMQCommSendThreads`` so a blocking request wakes only once its reply is in.

    Idempotent. Call before sending requests (the class's method is replaced).
    """
    from bluesky_queueserver.manager.comms import ZMQCommSendThreads

    if getattr(ZMQCommSendThreads._zmq_receive_blocking_cb, "_stores_only", False):
        return

    def store_reply(self, msg, msg_err) -> None:
        # The receive thread sets _event_msg_received itself, after its last step.
        self._received_data = {"msg": msg, "msg_err": msg_err}

    store_reply._stores_only = True
    store_reply.original = ZMQCommSendThreads._zmq_receive_blocking_cb
    ZMQCommSendThreads._zmq_receive_blocking_cb = store_reply
