"""The project's own exceptions: each message says what went wrong and what to do."""


class LagclError(Exception):
    """Base class for errors a user can cause and fix."""


class ConfigError(LagclError):
    """A configuration file or override is invalid."""


class DataError(LagclError):
    """Raw data is missing, malformed, or empty after filtering."""


class ArtifactError(LagclError):
    """A stored artifact is missing, incomplete or corrupt."""


class ContractError(Exception):
    """Stage code broke its registry entry (reads a table it does not declare, leaves out one it declares): a bug
    in the stage, not the user's to fix."""


class StageLockedError(LagclError):
    """Another process is writing the same stage folder."""


class LLMError(LagclError):
    """An LLM backend cannot be used (missing key, missing package, exhausted budget)."""


class BudgetExceededError(LLMError):
    """The configured spending limit was reached; finished work is kept and the run can resume."""


class BudgetRequiredError(ConfigError):
    """A paid engine was chosen without `llm.budget_usd`: nothing is sent until a budget (or `none`) is set."""


class StorageError(LagclError):
    """A folder the run writes to is read-only, not permitted, or full; what was written stays valid."""


# errno values that mean "this storage cannot take the write", as opposed to a bug
STORAGE_ERRNOS = {30: "read-only file system", 13: "permission denied", 1: "operation not permitted",
                  28: "no space left on the device", 122: "disk quota exceeded"}


def storage_error(exc: BaseException, cache_dir: str | None = None, prefect_home: str | None = None
                  ) -> StorageError | None:
    """The one-line StorageError for an OSError of a storage class (None for any other error): which file, why,
    and the setting that points the run elsewhere. Every artifact is written to a temporary file and renamed,
    so a failed write leaves what was finished intact and the same command resumes once the cause is fixed."""
    if not isinstance(exc, OSError) or exc.errno not in STORAGE_ERRNOS:
        return None
    where = exc.filename or "a file"
    why = STORAGE_ERRNOS[exc.errno]
    full = exc.errno in (28, 122)
    if prefect_home and str(where).startswith(str(prefect_home)):
        todo = (f"Prefect's home {prefect_home} is not writable: set PREFECT_HOME to a writable folder "
                "(e.g. PREFECT_HOME=/tmp/prefect)")
    elif full:
        todo = "free space there (or set cache_dir to a folder on another disk), then run the same command again"
    else:
        todo = (f"point cache_dir at a writable folder (--set cache_dir=DIR, make: OVERRIDES=cache_dir=DIR)"
                f"{f' instead of {cache_dir}' if cache_dir else ''}; status, compare and recommend only read it")
    return StorageError(f"cannot write {where} ({why}): {todo}; finished stages are kept")
