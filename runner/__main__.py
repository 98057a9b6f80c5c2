"""`python -m runner [overrides]`: the article's experiment, configured by Hydra.

Hydra refuses sweep syntax (`lr=0.1,0.3`, `range(...)`, `choice(...)`, ...) without
`--multirun`; the runner adds the flag for you, so a sweep runs exactly as typed.
"""

from __future__ import annotations

if __name__ == "__main__":  # a process of its own: its collector set before the imports below
    from runner import process

    process.own()

import contextlib
import io
import signal
import sys

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser


def hydra_argv(argv: list[str]) -> list[str]:
    """`argv` with `--multirun` prepended when an override sweeps and no mode flag is given.

    >>> hydra_argv(["backend=tf", "lr=0.1,0.3"])
    ['--multirun', 'backend=tf', 'lr=0.1,0.3']
    >>> hydra_argv(["lr=0.3"])
    ['lr=0.3']
    """
    try:  # Hydra's own parser; whatever it rejects, Hydra reports itself
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = get_args_parser().parse_args(argv)
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except (SystemExit, Exception):
        return argv
    asks_for_a_mode = args.multirun or args.run or args.cfg or args.info or args.help or (
        args.hydra_help or args.shell_completion or args.experimental_rerun
    )
    if not asks_for_a_mode and any(override.is_sweep_override() for override in overrides):
        return ["--multirun", *argv]
    return argv


def main() -> None:
    sys.argv = [sys.argv[0], *hydra_argv(sys.argv[1:])]
    from runner.app import main as app
    from runner.errors import Terminated, raise_terminated

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        app()
    except KeyboardInterrupt as stop:
        print("runner: interrupted; its open MLflow runs were ended as KILLED", file=sys.stderr)
        sys.exit(143 if isinstance(stop, Terminated) else 130)


if __name__ == "__main__":
    main()
