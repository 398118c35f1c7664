"""The one exception type for bad user input to the tiling layer."""


class InputError(ValueError):
    """Bad user input (region, dates, grid options). The message says what is wrong and how to fix it.

    The CLI prints it and exits before the pipeline starts.
    """
