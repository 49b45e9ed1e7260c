"""The one exception the sandbox raises: misuse by the caller, never a bad program."""


class SandboxError(TypeError, ValueError):
    """Misuse of the sandbox API (a non-string source, args that are not data, bad limits).
    A TypeError and a ValueError, so callers that catch either also catch it."""
