"""A sample's fields found valid where they were made: the typed seam that spares a request
the field table's check (``CoordinatorEnd.send_checked``).

The field table (``messages.FIELDS``) is applied to every ``sample`` a coordinator sends
(``messages.field_problem``), unless its fields were checked by the same rules where
they were made. A run makes its chunks once and sends each as a request, so checking
again per request costs CPU on the hot path for nothing. Which fields were checked is a
type, not a flag a caller sets: ``CoordinatorEnd.send_checked`` takes only a
``CheckedSampleFields``, so mypy rejects anything else, and a type makes that claim
only by subclassing this one, in the open.

A subclass promises that its constructor refuses (raises) any fields that
``admission.sample_problem`` finds fault with (the field table's rules and a range's last
stream), and that its instances never change. The one subclass is the pool's ``Chunk``
(``mcpi_coordinator.pool.chunks``, whose tests hold its check equal to
``sample_problem``); tests/protocol/test_checked.py holds the list of subclasses to it.
"""

from __future__ import annotations

__all__ = ["CheckedSampleFields"]


class CheckedSampleFields:
    """The fields of a ``sample``, checked where they were made (see the module): ``streams``
    consecutive streams from ``stream`` of ``seed``, ``points`` each, with ``kernel``. Sent
    as one plain sample when ``streams`` is 1, else as a range counted stream by stream."""

    __slots__ = ()

    seed: int
    stream: int
    points: int
    kernel: str
    streams: int
