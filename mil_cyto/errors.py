"""The one exception type users see: a message that names the file and the fix."""


class MilCytoError(Exception):
    """An input problem the user can act on (bad manifest row, unreadable image, ...).

    Commands catch it, print its message on one line and exit with status 2, no traceback.
    """
