"""The errors aevb reports to a user as one line (``aevb: error: ...``, exit code 2).

At the bottom of the import graph: every module may raise them, and this one imports nothing of aevb's.
"""


class UsageError(Exception):
    """A problem with the user's input (flags, files, data, a model reference): one line, exit code 2."""


class DataError(UsageError):
    """Missing, unreadable, corrupt or ill-shaped data."""


class Diverged(UsageError):
    """Training went non-finite: which step and epoch, and what (a term of the ELBO, or an evaluated metric)."""

    def __init__(self, step: int, epoch: int, what: str) -> None:
        self.step, self.epoch, self.what = step, epoch, what
        super().__init__(f"{what} is not finite at step {step} (epoch {epoch})")


class Interrupted(Exception):
    """Training stopped at a step boundary on a signal (SIGINT, SIGTERM), after a checkpoint."""

    def __init__(self, signal: int, step: int) -> None:
        self.signal, self.step = signal, step
        super().__init__(f"interrupted by signal {signal} after step {step}")


class Terminated(BaseException):
    """SIGTERM outside training, which stops at a step boundary instead (``Interrupted``): the ``aevb`` command
    raises it, as Python raises KeyboardInterrupt on SIGINT, so that it ends with one line. Not an Exception:
    no ``except Exception`` on the way may swallow it."""


class OtherRankFailed(RuntimeError):
    """Under torch.distributed, what the other ranks raise when one fails with an error that is not the user's
    (``aevb.distributed.together``): that rank reports its own, and rank 0 names it in one line."""
