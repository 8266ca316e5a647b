"""The project's own exceptions: each message says what went wrong and what to do."""


class LagclError(Exception):
    """Base class for errors a user can cause and fix."""


class ConfigError(LagclError):
    """A configuration file or override is invalid."""


class DataError(LagclError):
    """Raw data is missing, malformed, or empty after filtering."""


class ArtifactError(LagclError):
    """A stored artifact is missing, incomplete or corrupt."""


class StageLockedError(LagclError):
    """Another process is writing the same stage folder."""


class LLMError(LagclError):
    """An LLM backend cannot be used (missing key, missing package, exhausted budget)."""


class BudgetExceededError(LLMError):
    """The configured spending limit was reached; finished work is kept and the run can resume."""


class BudgetRequiredError(ConfigError):
    """A paid engine was chosen without `llm.budget_usd`: nothing is sent until a budget (or `none`) is set."""
