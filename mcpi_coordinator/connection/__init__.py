"""The Trio driver of one worker: its pipes (``pipes``), its protocol state
(``worker_connection``) and its log lines (``stderr_relay``)."""
