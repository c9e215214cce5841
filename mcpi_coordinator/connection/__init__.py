"""The Trio driver of one worker: its pipes (``pipes``), its protocol state
(``worker_connection``), its log lines (``stderr_relay``), and how its low-level
failures become a ``WorkerFailure`` (``failures``)."""
