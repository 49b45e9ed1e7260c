"""Errors raised by the language-model layer."""


class LLMError(RuntimeError):
    """A model could not be built, loaded or asked; the message says which and why."""


class LLMTimeoutError(LLMError, TimeoutError):
    """A model did not answer within its time budget."""
