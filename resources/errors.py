"""The project's one error type for problems a user can fix, and the kinds an API tells apart.

Its message is one line that names the input at fault and says what to do; the CLI, the
Streamlit page, the HTTP API and the Dagster logs show it as is, without a traceback. The
subclasses say whose move it is, which the HTTP API turns into a status code: a bad input
(the base class, 400), something asked for that does not exist (404), an input too large
(413) or of a type that is not accepted (415), a failure on the server's side (its index,
its cluster, its configuration: 502), or a service that cannot answer now whatever the
input (503).
"""


class ImageSearchError(Exception):
    """A bad input or an unusable setting, explained in one line."""


class NotFoundError(ImageSearchError):
    """What the input names (a photo id) does not exist."""


class TooLargeError(ImageSearchError):
    """The input is larger than a limit allows (bytes, or pixels declared in an image's header)."""


class UnsupportedTypeError(ImageSearchError):
    """The input is of a kind that is never processed (an image format outside JPEG, PNG and WebP)."""


class ServerSideError(ImageSearchError):
    """The server's side failed: a damaged or mismatched index, a cluster refusing the service's
    credentials or certificate, failed shards. Nothing the caller sends can fix it."""


class UnavailableError(ImageSearchError):
    """The service cannot answer now: nothing published yet, a backend unreachable or overloaded."""


class ClusterError(UnavailableError):
    """The search cluster answered, but not as the project needs (scores, publishing, privileges): a server-side 5xx."""
