"""The project's one error type for problems a user can fix.

Its message is one line that names the input at fault and says what to do; the CLI, the
Streamlit page and the Dagster logs show it as is, without a traceback.
"""


class ImageSearchError(Exception):
    """A bad input or an unusable setting, explained in one line."""
