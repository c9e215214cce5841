"""A frozen copy of the sans-IO protocol core (``mcpi_worker/protocol/``) as it was at
commit 8f387ac, before this session's speed-ups (0501179, 857f947, 4812407 and later):
test-only, never imported by mcpi itself, and never to be edited (except to keep it
importable and lint-clean: its imports name this package instead of
``mcpi_worker.protocol``, and ``MAX_POINTS`` is frozen beside it in ``constants``).

It is the reference of ``tests/protocol/test_core_differential.py``, which feeds the
same byte streams to this core and to the live one, at both ends, and holds every
event, error (its type, code and whether it is fatal), state and byte sent equal: a
speed-up of the live core may change how a rule is checked, never what it decides.
Made with ``git show 8f387ac:mcpi_worker/protocol/<module>.py`` for ``messages``,
``framing``, ``admission``, ``worker_end`` and ``coordinator_end`` (the package's own
``__init__``, a lazy re-export, is left out).

When a rule changes on purpose (protocol.md says something new), the change goes into
this copy too, in its own commit that names the live commit it follows, so that the
differential tests keep comparing like with like.
"""
