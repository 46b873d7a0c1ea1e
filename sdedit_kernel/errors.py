"""The kernel's error types: every bad argument or checkpoint is a ValueError subclass with a reason."""


class SDEditError(ValueError):
    """A call that cannot run as asked (bad t0, steps, sampler, option, guide or mask)."""


class CheckpointError(SDEditError):
    """A checkpoint that cannot be loaded; the message names the file and the field."""
