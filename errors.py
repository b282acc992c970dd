"""The one exception type that reaches the user as a single line (see :func:`run_cli`)."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input the user can fix: the message names the thing and what to do. Printed as one line, exit 2."""


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a command-line entry point: UserError -> one line on stderr and exit 2; Ctrl-C -> exit 130."""
    try:
        code = main()
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    raise SystemExit(code or 0)
