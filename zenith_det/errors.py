"""The one exception type for mistakes a user can fix.

Entry points print it as a single line (no traceback unless --debug), so its
message must name the file or field and say what to do.
"""


class UserError(Exception):
    pass
