"""`worker` and `python -m worker`: the worker's command line, after a check for its extra.

`pip install spotsweep` is the submitter alone; TensorFlow and Keras come with the `worker`
extra. Without them every worker command would end in an ImportError traceback deep in training
(or, for `submit predict`, which runs `python -m worker predict`, in the submitter's output), so
the entry point says what to install, in one line, before the CLI loads. `find_spec` only looks
the packages up: nothing is imported, `worker --help` stays fast.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec

WORKER_PACKAGES = ("tensorflow", "keras")
EXIT_MISSING_EXTRA = 1  # the environment is incomplete: not bad input (2)


def missing_packages() -> list[str]:
    """The worker extra's packages that this Python cannot import."""
    return [name for name in WORKER_PACKAGES if find_spec(name) is None]


def main() -> None:
    missing = missing_packages()
    if missing:
        print(
            f"error: the worker needs {' and '.join(missing)}, which this Python lacks: "
            "install the worker extra, pip install 'spotsweep[worker]' (from a checkout: pip install '.[worker]')",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_MISSING_EXTRA)
    from worker.cli import app

    app(prog_name="worker")


if __name__ == "__main__":
    main()
