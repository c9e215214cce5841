"""The pool layer: the pool's lifecycle and public calls (``worker_pool``), one slot's
workers from launch to reaping (``slot``), who gets the next worker with room and a
request from its place in line to its outcome (``dispatch``), many chunks with no task
per chunk (``batch``), the one rule for sending a request again (``retry``), and what
the pool says about itself (``stats``)."""
