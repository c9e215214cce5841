"""The ``mcpi`` command: the entry point (``main``), one module per subcommand
(``estimate``, ``scatter``, ``bench``), and their shared pieces: argument types
(``args``), progress, plots, exit codes and logging set-up."""
