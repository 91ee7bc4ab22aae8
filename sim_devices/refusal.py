"""Refusing a Channel Access put cleanly: the WRITE_NOTIFY reply carries ``ECA_PUTFAIL``.

A caproto putter that raises makes the server answer a put-with-callback with a CA
*error* message; caproto's client (the one ophyd uses here) has no handler for it: the
put never completes and the channel is closed (a client then times out and
reconnects). A real IOC refusing a put answers the WRITE_NOTIFY itself with a failure
status. A PV of one of the ``Refusable*`` classes below (``pvproperty(dtype=...)``)
does the same when its putter raises :class:`RefusedError`: the value is not written,
a put-with-callback completes at once with ``ECA_PUTFAIL`` (``response.status`` of a
caproto ``PV.write(wait=True)``), a plain put is dropped. Any other exception behaves
as before, except a soft-limit refusal (caproto's ``CannotExceedLimits``) of a PV whose
group has a ``report_refusal`` coroutine: it is answered the same way and reported to it.
Clients that ignore the status (ophyd's put-completion does) read the IOC's reason PV.
"""

from __future__ import annotations

import logging

from caproto import CAStatus
from caproto.server import (
    PvpropertyChar,
    PvpropertyDouble,
    PvpropertyEnum,
    PvpropertyInteger,
    PvpropertyString,
)

from multiscope.compat import limit_violation_type

__all__ = [
    "MessageRefusals",
    "RefusableChar",
    "RefusableDouble",
    "RefusableEnum",
    "RefusableInteger",
    "RefusableString",
    "RefusedError",
]

logger = logging.getLogger(__name__)


class RefusedError(Exception):
    """A request the IOC refuses (its message says why)."""


class _Refusable:
    """Answer a put whose putter raised :class:`RefusedError` with ``ECA_PUTFAIL``."""

    async def auth_write(self, *args, **kwargs):
        limit_violation = limit_violation_type()  # caproto does not export it
        try:
            return await super().auth_write(*args, **kwargs)
        except RefusedError as ex:
            logger.info("put to %s refused: %s", getattr(self, "pvname", "?"), ex)
        except limit_violation as ex:
            report = getattr(getattr(self, "group", None), "report_refusal", None)
            if report is None:
                raise
            await report(f"{self.pvname}: {ex}")
        return CAStatus.ECA_PUTFAIL


class RefusableChar(_Refusable, PvpropertyChar):
    """A char-array (long string) PV whose putter may refuse."""


class RefusableDouble(_Refusable, PvpropertyDouble):
    """A float PV whose putter may refuse."""


class RefusableEnum(_Refusable, PvpropertyEnum):
    """An enum PV whose putter may refuse."""


class RefusableInteger(_Refusable, PvpropertyInteger):
    """A long PV whose putter may refuse."""


class RefusableString(_Refusable, PvpropertyString):
    """A string PV whose putter may refuse."""


class MessageRefusals:
    """An IOC's refusals published in its reason PV, ``self.message`` (a mixin).

    ``refuse`` publishes the reason and fails the put (:class:`RefusedError`),
    ``report_refusal`` publishes a reason a put met before its putter (a soft limit;
    the ``Refusable*`` PVs call it), ``accepted`` clears the reason once a request
    passes the checks. Shared by the simulated PFIB-SEM, laser mill and lab XRM.
    """

    async def refuse(self, reason: str) -> None:
        """Publish why a request is refused and fail its put."""
        logger.warning("refused: %s", reason)
        await self.message.write(reason[:255])
        raise RefusedError(reason)

    async def report_refusal(self, reason: str) -> None:
        """A put refused before its putter (a soft limit): publish why."""
        logger.warning("refused: %s", reason)
        await self.message.write(reason[:255])

    async def accepted(self) -> None:
        """A request passed the checks: clear the message."""
        if self.message.value:
            await self.message.write("")
