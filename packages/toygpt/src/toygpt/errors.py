"""The one exception type for bad user input.

Anything a user can get wrong (a missing file, a value out of range, a checkpoint that does not
fit) raises ToyGPTError with a message that names the value or file. The CLI turns it into one
line on stderr and exit code 2; library callers can catch it (it is also a ValueError).
"""


class ToyGPTError(ValueError):
    pass
