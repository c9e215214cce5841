"""How a worker process is started and stopped: what the pool needs of one
(``transport``), local processes (``local``), ssh hosts (``remote``), Slurm
allocations and their worker steps (``slurm``)."""
