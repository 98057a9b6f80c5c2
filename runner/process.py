"""What a process of the runner's own (`python -m runner`, `runner.reproduce`, `runner.report`,
a launcher's job process) sets for itself, first thing: how Python's garbage collector treats it.

Such a process imports Hydra, MLflow, SQLAlchemy, Matplotlib and often a framework: about a
million objects, next to no garbage. With Python's default thresholds the collector scans the
young ones every 700 allocations and, as they age, the older ones again and again; and as the
interpreter exits it scans everything once more before freeing it. Measured here (2 cores,
`python -m runner epochs=3`, about 0.003 s of descent): 4.0-4.8 s, of which 0.3-0.6 s is
collecting while importing (against the collector off) and 0.6-0.9 s collecting at exit (against
`os._exit`); `bench/startup.py` times the command with and without `own`.
"""

from __future__ import annotations

import atexit
import gc

YOUNG_COLLECTION_EVERY = 10_000  # allocations (Python's default: 700); the older generations as before
_owned = False  # own() has run in this process


def own() -> None:
    """Collect young objects every `YOUNG_COLLECTION_EVERY` allocations, and leave what is still
    alive at exit to the operating system: `gc.freeze` as an exit handler takes it out of the
    interpreter's last scans, and stops no other handler (logging's flush, MLflow's, ...). Once a
    process; never in a process of the user's (the Python API, a notebook)."""
    global _owned
    if not _owned:
        _owned = True
        gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])
        atexit.register(gc.freeze)
