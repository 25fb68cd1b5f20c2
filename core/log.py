"""Logging for the entry points, set up as alignment-handbook's scripts do: indictune's messages at INFO on
the main process and at WARNING on the others, so that a run on N processes says each thing once.

Messages go to stdout as plain lines, where the scripts print their results, so a run's output reads the
same on one process as on many. transformers and datasets keep their own handlers and formats; only their
verbosity is set, per process.
"""

from __future__ import annotations

import logging
import sys

ROOT = "indictune"
_HANDLER = "indictune-stdout"


def get_logger(name: str) -> logging.Logger:
    """The logger for `name` (a module's ``__name__``, or a script's name), under indictune's."""
    return logging.getLogger(name if name == ROOT or name.startswith(f"{ROOT}.") else f"{ROOT}.{name}")


def setup_logging(main_process: bool, level: int = logging.INFO, library_level: int | None = None) -> None:
    """indictune's loggers at `level` on the main process and at WARNING on the others, as plain lines on
    stdout; transformers and datasets at `library_level` on this process (None: as they are on the main
    process, WARNING on the others). Calling it again replaces what an earlier call set up."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if h.get_name() == _HANDLER]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)  # this call's stdout, which a test may have replaced
    handler.set_name(_HANDLER)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False  # a handler on the root logger (the user's, a launcher's) would repeat each line
    logger.setLevel(level if main_process else max(level, logging.WARNING))
    if library_level is None and main_process:
        return
    # Imported here: the foundation does not need them to log, only to quiet them.
    import datasets
    import transformers

    library_level = logging.WARNING if library_level is None else library_level
    transformers.utils.logging.set_verbosity(library_level)
    datasets.utils.logging.set_verbosity(library_level)
