"""The pool layer: slots and their supervision (``worker_pool``), who gets the next
worker with room and a request from its place in line to its outcome (``dispatch``), and
many chunks with no task per chunk (``batch``)."""
