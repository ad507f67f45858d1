"""The project's one error type for problems a user can fix, and the kinds an API tells apart.

Its message is one line that names the input at fault and says what to do; the CLI, the
Streamlit page, the HTTP API and the Dagster logs show it as is, without a traceback. The
subclasses say whose move it is, which the HTTP API turns into a status code: a bad input
(the base class, 400), something asked for that does not exist (404), or a service that
cannot answer now whatever the input (503).
"""


class ImageSearchError(Exception):
    """A bad input or an unusable setting, explained in one line."""


class NotFoundError(ImageSearchError):
    """What the input names (a photo id) does not exist."""


class UnavailableError(ImageSearchError):
    """The service cannot answer now: nothing published yet, a backend unreachable or overloaded."""


class ClusterError(UnavailableError):
    """The search cluster answered, but not as the project needs (scores, publishing, privileges): a server-side 5xx."""
