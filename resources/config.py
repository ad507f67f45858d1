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
SECRET_QUERY_PARAMETERS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature", "awsaccesskeyid",
    "x-goog-signature", "x-goog-credential", "googleaccessid", "sig", "token", "access_token",
    "api_key", "apikey", "key", "password", "secret", "client_secret",
})


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
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the models run")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="the models' number format")
    text_runtime: Literal["auto", "onnx", "torch"] = Field("auto", description="what runs the text model for queries")
    runtime: Literal["auto", "torch", "openvino"] = Field(
        "auto", description="what runs the image model in the pipeline (a faster one only where its vectors agree)"
    )
    runtime_calibration_images: int = Field(
        300, ge=1, description="stored photos the faster image runtime is calibrated on when it is built"
    )
    runtime_gate_images: int = Field(
        200, ge=2, description="held-out stored photos on which the faster image runtime must agree with fp32"
    )
    backend: Literal["local", "elasticsearch"] = Field("local", description="where the search index lives")
    es_url: str | None = Field(None, repr=False, description="Elasticsearch/OpenSearch URL (credentials masked)")
    es_username: str | None = Field(None, repr=False, description="Elasticsearch user name")
    es_password: str | None = Field(None, repr=False, description="Elasticsearch password")
    es_api_key: str | None = Field(None, repr=False, description="Elasticsearch API key")
    es_engine: str = Field("auto", description="which engine's mapping and query to use")
    es_verify_certs: bool = Field(True, description="TLS certificate verification")
    es_ca_certs: str | None = Field(None, description="a CA bundle for a private certificate authority")
    es_max_error_share: float = Field(0.01, description="share of refused documents above which a build fails")
    index_name: str = Field(
        "image_search", validation_alias=f"{ENV_PREFIX}INDEX", description="the alias the index is published under"
    )
    download_concurrency: int = Field(32, ge=1, description="parallel image downloads")
    download_timeout: float = Field(20.0, description="seconds per image request")
    imgix_params: str = Field("w=640&q=80&fm=jpg&fit=max", description="size parameters for imgix image URLs")
    max_download_failure_share: float = Field(0.05, description="the images check fails above this share")
    ann_min_docs: int = Field(200_000, ge=1, description="documents from which the local backend adds an ANN index")
    duplicate_threshold: float = Field(
        0.94, gt=0, le=1, description="cosine similarity from which two photos are near-duplicates"
    )
    refresh_cron: str = Field("0 3 * * *", description="when the scheduled refresh runs (cron, UTC)")
    release_poll_seconds: int = Field(600, ge=30, description="how often the new-release sensor looks")
    lock_timeout: float = Field(3600.0, description="seconds a run waits for another writing the same data")
    stale_run_seconds: float = Field(
        3600.0, ge=0, description="seconds without events after which a run on a shared instance counts as dead"
    )
    buckets_per_run: int = Field(
        64, ge=1, le=64, description="photo buckets per run when a backfill of the vectors is split into runs"
    )
    embed_batch_size: int = Field(0, ge=0, description="images per model call (0: automatic)")
    decode_workers: int = Field(0, ge=0, description="parallel image decoders (0: one per CPU core)")
    gpu_decode: bool = Field(True, description="decode JPEGs on the GPU when encoding on CUDA")
    query_batching: bool = Field(True, description="encode concurrent queries together in one model call")
    query_batch_max: int = Field(32, ge=1, le=1024, description="most queries encoded in one model call")
    query_batch_window_ms: float = Field(
        2.0, ge=0, le=1000, description="how long a model call waits for more queries once two are waiting"
    )
    api_key: SecretStr | None = Field(
        None, repr=False, description="the key HTTP API callers send (X-API-Key); required beyond loopback"
    )
    api_cors_origins: str | None = Field(
        None, description="comma-separated browser origins allowed to call the HTTP API (CORS off when empty)"
    )
    api_request_timeout: float = Field(30.0, gt=0, le=3600, description="seconds an HTTP API search may take")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc.errors()[0])) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
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
