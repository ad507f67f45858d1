"""The project's one settings class: every ``IMAGE_SEARCH_*`` variable, its default and its check.

Declared once with pydantic-settings; a bad value fails with one line naming the variable
and what to use. Secrets are never printed: :meth:`Settings.describe` and :func:`mask_url`.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import annotated_types
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticUseDefault
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from resources.errors import ImageSearchError

ENV_PREFIX = "IMAGE_SEARCH_"
#: Credentials: left out of :meth:`Settings.describe`, and never stripped or echoed.
SECRETS = ("es_username", "es_password", "es_api_key", "api_key")


class ConfigError(ImageSearchError):
    """A setting has a value the project cannot use; the message names the variable."""


#: Query parameters that carry a credential: signed URLs of S3 (SigV4 and V2), Google Cloud
#: Storage and Azure SAS, and the usual token and key names. Compared case-insensitively.
SECRET_QUERY_PARAMETERS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "signature",
        "awsaccesskeyid",
        "x-goog-signature",
        "x-goog-credential",
        "googleaccessid",
        "sig",
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "password",
        "secret",
        "client_secret",
    }
)


def mask_url(url: str | None) -> str:
    """Return ``url`` with any user name and password, and the value of every secret query parameter, replaced by ``***``."""
    if not url:
        return ""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        netloc = f"***:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    query = "&".join(_mask_parameter(piece) for piece in parts.query.split("&")) if parts.query else ""
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _mask_parameter(piece: str) -> str:
    name, equals, _ = piece.partition("=")
    return f"{name}=***" if equals and unquote_plus(name).lower() in SECRET_QUERY_PARAMETERS else piece


class Settings(BaseSettings):
    """All settings; each field ``name`` comes from ``IMAGE_SEARCH_<NAME>`` (``index_name``: ``IMAGE_SEARCH_INDEX``).

    :meth:`from_env` reads the environment; built directly (as tests do), a ``Settings``
    holds the defaults and the keyword arguments only.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, validate_by_name=True, extra="forbid"
    )

    home: Path = Field(Path("data"), description="where everything the pipeline produces lives")
    dataset: str = Field(
        "https://unsplash.com/data/lite/latest",
        description="the release to ingest: a zip URL, a local zip, or a folder holding the TSV files",
    )
    image_model: str = Field("clip-ViT-B-32", description="sentence-transformers image model: a name or a local path")
    text_model: str = Field(
        "clip-ViT-B-32-multilingual-v1", description="multilingual text model for queries: a name or a local path"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`cpu`, `cuda` or `auto`")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="`fp32`, `bf16`, `fp16` or `auto` (bf16 on CPUs with bf16 support, fp16 on GPU, else fp32)"
    )
    text_runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto",
        description="what runs the text model for queries: `onnx` (ONNX Runtime, float32 on the CPU), `torch`, or `auto` (`onnx` on a CPU in fp32, else `torch`; see [searching](docs/searching.md#text-queries-on-a-cpu))",
    )
    runtime: Literal["auto", "torch", "openvino"] = Field(
        "auto",
        description="what runs the image model in the pipeline: `openvino` (int8, built from the model and used only where its vectors agree with fp32 on the user's photos), `torch`, or `auto` (`openvino` on a CPU where it is installed, else `torch`; see [images and embeddings](docs/images-and-embeddings.md))",
    )
    runtime_calibration_images: int = Field(
        300, ge=1, description="stored photos the faster image runtime is calibrated on when it is built"
    )
    runtime_gate_images: int = Field(
        200, ge=2, description="held-out stored photos on which the faster image runtime must agree with fp32"
    )
    backend: Literal["local", "elasticsearch"] = Field(
        "local", description="`local` (embedded, no server) or `elasticsearch`"
    )
    es_url: str | None = Field(
        None, repr=False, description="Elasticsearch/OpenSearch URL; credentials in it are never printed"
    )
    es_username: str | None = Field(
        None, repr=False, description="Elasticsearch/OpenSearch user name, if not in the URL"
    )
    es_password: str | None = Field(
        None, repr=False, description="Elasticsearch/OpenSearch password, if not in the URL; never printed"
    )
    es_api_key: str | None = Field(
        None, repr=False, description="Elasticsearch API key, if not in the URL; never printed"
    )
    es_engine: str = Field(
        "auto",
        description="which engine's mapping and query to use: `auto`, `escloud`, `opensearch` or `elasticsearch` (see [backends](docs/backends.md); run `image-search cluster check` before the first build)",
    )
    es_verify_certs: bool = Field(True, description="TLS certificate verification; `false` is an explicit opt-out")
    es_ca_certs: str | None = Field(None, description="a CA bundle for a private certificate authority")
    es_max_error_share: float = Field(
        0.01,
        description="a build fails (and the published index keeps serving) above this share of documents the cluster refuses as invalid (documents refused for overload, HTTP 429, are retried, never counted)",
    )
    es_build_timeout: float = Field(
        10800.0,
        gt=0,
        description="seconds an Elasticsearch/OpenSearch build may take: bulk requests refused as overloaded (HTTP 429) are retried with backoff until then, and its build lock expires after it",
    )
    index_name: str = Field(
        "image_search",
        validation_alias=f"{ENV_PREFIX}INDEX",
        description="the alias the search index is published under",
    )
    download_concurrency: int = Field(32, ge=1, description="parallel image downloads")
    download_timeout: float = Field(20.0, description="seconds per image request")
    imgix_params: str = Field(
        "w=640&q=80&fm=jpg&fit=max", description="size parameters asked of Unsplash's imgix image URLs"
    )
    max_download_failure_share: float = Field(
        0.05, description="the images check fails above this share of failed downloads"
    )
    ann_min_docs: int = Field(
        200_000,
        ge=1,
        description="the local backend adds an approximate (faiss IVF-flat) index from this many documents; below it kNN is exact",
    )
    duplicate_threshold: float = Field(
        0.94,
        gt=0,
        le=1,
        description="cosine similarity of image vectors at or above which two photos count as near-duplicates",
    )
    refresh_cron: str = Field(
        "0 3 * * *", description="when the scheduled refresh runs (cron, UTC; see [operations](docs/operations.md))"
    )
    release_poll_seconds: int = Field(
        600, ge=30, description="how often the new-release sensor looks at `IMAGE_SEARCH_DATASET`"
    )
    lock_timeout: float = Field(
        3600.0,
        description="seconds a run waits for another run writing the same bucket or index, or holding the pool slot it needs (`image-search materialize`), before it fails (see [after a crash](docs/operations.md#after-a-crash))",
    )
    stale_run_seconds: float = Field(
        3600.0,
        ge=0,
        description="on an instance shared by several machines (not the default SQLite one), a started run that has logged nothing for this long counts as dead",
    )
    buckets_per_run: int = Field(
        64,
        ge=1,
        le=64,
        description="photo buckets per run when a backfill of the images and vectors is cut into runs, so that several workers share it (see [scaling out](docs/scaling.md))",
    )
    embed_batch_size: int = Field(
        0, ge=0, description="images per model call when encoding; 0 is automatic: 32 on CPU, 512 on GPU"
    )
    decode_workers: int = Field(
        0,
        ge=0,
        description="threads (CPU) or processes (GPU) decoding images in parallel with the model; 0 is one per CPU core",
    )
    gpu_decode: bool = Field(True, description="decode JPEGs on the GPU (needs torchvision) when encoding on CUDA")
    query_batching: bool = Field(
        True, description="encode concurrent queries together in one model call (see [docs/api.md](docs/api.md))"
    )
    query_batch_max: int = Field(32, ge=1, le=1024, description="most queries encoded in one model call")
    query_batch_window_ms: float = Field(
        2.0, ge=0, le=1000, description="how long a model call waits for more queries once two are waiting"
    )
    api_key: SecretStr | None = Field(
        None,
        repr=False,
        description="the key HTTP API callers send as `X-API-Key`; required to listen beyond 127.0.0.1; never printed",
    )
    api_cors_origins: str | None = Field(
        None, description="browser origins allowed to call the HTTP API, comma-separated (CORS off when empty)"
    )
    api_request_timeout: float = Field(
        30.0, gt=0, le=3600, description="seconds an HTTP API search may take before it answers 503"
    )
    notify_url: str | None = Field(
        None,
        repr=False,
        description="where each refresh POSTs a saved search's new matches as JSON, retried, never failing a run (see [saved searches](docs/saved-searches.md)); credentials masked",
    )
    api_hosts: str | None = Field(
        None,
        description="host names the HTTP API answers without a key, beside 127.0.0.1, localhost and [::1], comma-separated",
    )
    api_max_searches: int = Field(
        64, ge=1, le=10_000, description="HTTP API searches running at once; more are answered 503 with `Retry-After`"
    )
    api_header_timeout: float = Field(
        10.0,
        gt=0,
        le=600,
        description="seconds an HTTP API client may take to send a request's headers, or pause while sending its body",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc.errors()[0])) from None

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        """Only the keyword arguments: the environment is read by :meth:`from_env`, nowhere else."""
        return (init_settings,)

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """Every ``IMAGE_SEARCH_*`` variable (unset or empty ones take their defaults), then ``overrides``."""
        return cls(**{**_environment(), **overrides})

    @classmethod
    def env_value(cls, name: str) -> Any:
        """The setting ``name`` from the environment, checked, without reading (or failing on) any other."""
        given = {key: value for key, value in _environment().items() if key == name}
        return getattr(cls(**given), name)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes`` applied and checked."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_default(cls, value: Any, info) -> Any:
        if isinstance(value, str) and info.field_name not in SECRETS:
            value = value.strip()
        if value == "":
            raise PydanticUseDefault()
        return value

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("notify_url")
    @classmethod
    def _notify_over_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("use an http:// or https:// address")
        return value

    @model_validator(mode="after")
    def _elasticsearch_needs_a_url(self) -> "Settings":
        if self.backend == "elasticsearch" and not self.es_url:
            raise ConfigError(
                f"{ENV_PREFIX}BACKEND=elasticsearch needs {ENV_PREFIX}ES_URL, e.g. https://localhost:9200"
            )
        return self

    def describe(self) -> dict[str, str]:
        """The settings as strings, safe to log or show: secrets left out, URLs masked."""
        shown = {name: str(getattr(self, name)) for name in type(self).model_fields if name not in SECRETS}
        shown["es_url"] = mask_url(self.es_url)
        shown["notify_url"] = mask_url(self.notify_url)
        return shown

    @property
    def release_dir(self) -> Path:
        """Where the raw release is downloaded and extracted."""
        return self.home / "release"

    @property
    def tables_dir(self) -> Path:
        """Typed Parquet copies of the five release documents."""
        return self.home / "tables"

    @property
    def catalog_path(self) -> Path:
        """The photo catalog, one row per photo_id."""
        return self.home / "catalog" / "catalog.parquet"

    @property
    def images_dir(self) -> Path:
        """The image store: ``images/<bucket>/<safe name>.jpg`` plus the failure ledger."""
        return self.home / "images"

    @property
    def embeddings_dir(self) -> Path:
        """Vectors as Parquet chunks, one folder per image model."""
        return self.home / "embeddings"

    @property
    def index_dir(self) -> Path:
        """The local search index (builds and the live pointer)."""
        return self.home / "index"

    @property
    def onnx_dir(self) -> Path:
        """ONNX exports of the text model (``resources/encoder/onnx_text.py``), one file per model fingerprint."""
        return self.home / "models" / "onnx"

    @property
    def runtimes_dir(self) -> Path:
        """Faster image runtimes built from the image model (``resources/encoder/selection.py``), by its content hash."""
        return self.home / "models" / "image-runtimes"

    @property
    def duplicates_path(self) -> Path:
        """The near-duplicate groups (only photos in a group of two or more)."""
        return self.home / "duplicates" / "groups.parquet"


def _environment() -> dict[str, str]:
    """The ``IMAGE_SEARCH_*`` variables that are set, keyed by field name."""
    return {_field_name((key,)): value for key, value in EnvSettingsSource(Settings)().items()}


def env_variable(name: str) -> str:
    """The environment variable of field ``name``."""
    alias = Settings.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else f"{ENV_PREFIX}{name.upper()}"


def _field_name(location: tuple) -> str | None:
    key = location[0] if location else None
    for name, info in Settings.model_fields.items():
        if key in (name, info.validation_alias):
            return name
    return None


def _allowed(name: str) -> str:
    """What field ``name`` accepts, from its declaration: its choices or its bounds."""
    info = Settings.model_fields[name]
    if typing.get_origin(info.annotation) is Literal:
        return "one of " + ", ".join(typing.get_args(info.annotation))
    bounds = []
    for rule in info.metadata:
        if isinstance(rule, annotated_types.Ge):
            bounds.append(f">= {rule.ge}")
        elif isinstance(rule, annotated_types.Gt):
            bounds.append(f"> {rule.gt}")
        elif isinstance(rule, annotated_types.Le):
            bounds.append(f"<= {rule.le}")
    return "a number " + " and ".join(bounds)


def _explain(error: dict) -> str:
    """One line for a pydantic error: the variable, the value given, and what to use."""
    name = _field_name(error["loc"])
    if name is None:
        return f"settings: {error['msg']}"
    shown = f"{env_variable(name)}={error['input']!r}" if name not in SECRETS else env_variable(name)
    kind = error["type"]
    if kind == "literal_error":
        return f"{shown} is not supported: use {_allowed(name)}"
    if kind.startswith("int_"):
        return f"{shown} is not a whole number"
    if kind.startswith("float_") or kind == "finite_number":
        return f"{shown} is not a number"
    if kind.startswith("bool_"):
        return f"{shown} is not a boolean: use true or false"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{shown} is out of range: use {_allowed(name)}"
    return f"{shown}: {error['msg']}"
