"""The libraries' start-up chatter, held back unless `hydra.verbose=true` asks for everything.

By default the terminal shows the runner's lines and Hydra's. TensorFlow's native code writes
two lines to the process's stderr on import, twice (absl's "All log messages before
absl::InitializeLog()" and oneDNN's "custom operations are on"), which no Python logger or
`TF_CPP_MIN_LOG_LEVEL` controls; MLflow logs two INFO lines when it creates a store's tables,
and JAX one when it looks for a TPU. Only these are held back: any other line written meanwhile
(a real warning or error) is written out as it came. Nothing here changes numerics (TensorFlow's
oneDNN stays on).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator, Sequence

# Lines TensorFlow's native code writes to stderr while it is imported.
TENSORFLOW_IMPORT = ("All log messages before absl::InitializeLog() is called are written to STDERR",
                     "oneDNN custom operations are on")


def verbose() -> bool:
    """Whether every library's lines are wanted: `hydra.verbose=true` sets the root logger to DEBUG."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_loggers(*names: str) -> None:
    """Show only warnings and errors of these loggers (start-up INFO lines), unless verbose."""
    if not verbose():
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def held_back(chatter: Sequence[str]) -> Iterator[None]:
    """What native code writes to stderr (file descriptor 2) meanwhile is held, then written out
    but for the lines that contain one of `chatter` (all of it when verbose)."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not any(c in line for c in chatter)))
            sys.stderr.flush()
