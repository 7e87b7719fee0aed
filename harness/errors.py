"""User-facing errors: one line that names the problem; the CLI turns them into a non-zero exit."""


class HarnessError(Exception):
    """An error caused by the user's input (config, data, checkpoint, flag), not by a bug."""

    exit_code = 2


class MissingDataError(HarnessError):
    """A dataset (or a split of it) is not where the harness looked."""


class DivergenceError(HarnessError):
    """Training produced NaN/Inf or stayed at chance; the run is recorded as failed."""


class JobDiedError(HarnessError):
    """A launcher's job died (its process, node or scheduler): nothing was measured, as in a crashed run (exit 1)."""

    exit_code = 1


class NotApplicableError(HarnessError):
    """The method cannot run on this suite's models (e.g. DFQ-style on a teacher without BatchNorm):
    the run is recorded failed and unavailable, so tables show n/a rather than a number."""


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (for one-line errors that quote one)."""
    return (str(e).strip().splitlines() or [""])[0]
