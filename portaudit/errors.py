"""Error types that the CLI turns into one clear line and a documented exit code.

Exit codes: 0 clean, 1 findings over the gate, 2 usage or manifest error, 3 upstream resolution or
internal error.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_UPSTREAM = 3


class PortauditError(Exception):
    """Base class: carries the exit code the CLI should use."""

    exit_code = EXIT_UPSTREAM


class UsageError(PortauditError):
    """Bad command-line input or a bad manifest/fixture file (exit 2)."""

    exit_code = EXIT_USAGE


class UpstreamError(PortauditError):
    """The upstream could not be resolved, fetched or unpacked (exit 3)."""

    exit_code = EXIT_UPSTREAM
