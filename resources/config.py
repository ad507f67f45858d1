"""The one configuration object of the project, read from the environment.

Every stage (Dagster assets, the query service, the CLI, the Streamlit page) reads its
settings through :class:`Settings`, so a variable is named and defaulted in one place.
Secrets (Elasticsearch credentials) are read here too and never printed: use
:func:`mask_url` for anything that shows a URL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from resources.errors import ImageSearchError

DEFAULT_DATASET = "https://unsplash.com/data/lite/latest"
DEFAULT_IMAGE_MODEL = "clip-ViT-B-32"
DEFAULT_TEXT_MODEL = "clip-ViT-B-32-multilingual-v1"
BACKENDS = ("local", "elasticsearch")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TEXT_RUNTIMES = ("auto", "onnx", "torch")


class ConfigError(ImageSearchError):
    """A setting has a value the project cannot use; the message names the variable."""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use true or false")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


def mask_url(url: str | None) -> str:
    """Return ``url`` with any user name and password replaced by ``***``."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***:***@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Settings:
    """All settings, with the environment variable each one comes from.

    Build it with :meth:`from_env`; tests build it directly with keyword arguments.
    """

    home: Path = Path("data")
    dataset: str = DEFAULT_DATASET
    image_model: str = DEFAULT_IMAGE_MODEL
    text_model: str = DEFAULT_TEXT_MODEL
    device: str = "auto"
    precision: str = "auto"
    text_runtime: str = "auto"
    backend: str = "local"
    es_url: str | None = field(default=None, repr=False)
    es_username: str | None = field(default=None, repr=False)
    es_password: str | None = field(default=None, repr=False)
    es_api_key: str | None = field(default=None, repr=False)
    es_engine: str = "auto"
    es_verify_certs: bool = True
    es_ca_certs: str | None = None
    es_max_error_share: float = 0.01
    index_name: str = "image_search"
    download_concurrency: int = 32
    download_timeout: float = 20.0
    imgix_params: str = "w=640&q=80&fm=jpg&fit=max"
    max_download_failure_share: float = 0.05
    ann_min_docs: int = 200_000
    duplicate_threshold: float = 0.94
    refresh_cron: str = "0 3 * * *"
    release_poll_seconds: int = 600
    lock_timeout: float = 3600.0
    stale_run_seconds: float = 3600.0
    embed_batch_size: int = 0
    decode_workers: int = 0
    gpu_decode: bool = True

    @classmethod
    def from_env(cls) -> "Settings":
        """Read every ``IMAGE_SEARCH_*`` variable; unset or empty ones take their defaults."""
        settings = cls(
            home=Path(_env("IMAGE_SEARCH_HOME", "data")).expanduser(),
            dataset=_env("IMAGE_SEARCH_DATASET", DEFAULT_DATASET),
            image_model=_env("IMAGE_SEARCH_IMAGE_MODEL", DEFAULT_IMAGE_MODEL),
            text_model=_env("IMAGE_SEARCH_TEXT_MODEL", DEFAULT_TEXT_MODEL),
            device=_env("IMAGE_SEARCH_DEVICE", "auto"),
            precision=_env("IMAGE_SEARCH_PRECISION", "auto"),
            text_runtime=_env("IMAGE_SEARCH_TEXT_RUNTIME", "auto"),
            backend=_env("IMAGE_SEARCH_BACKEND", "local"),
            es_url=os.environ.get("IMAGE_SEARCH_ES_URL") or None,
            es_username=os.environ.get("IMAGE_SEARCH_ES_USERNAME") or None,
            es_password=os.environ.get("IMAGE_SEARCH_ES_PASSWORD") or None,
            es_api_key=os.environ.get("IMAGE_SEARCH_ES_API_KEY") or None,
            es_engine=_env("IMAGE_SEARCH_ES_ENGINE", "auto"),
            es_verify_certs=_env_bool("IMAGE_SEARCH_ES_VERIFY_CERTS", True),
            es_ca_certs=os.environ.get("IMAGE_SEARCH_ES_CA_CERTS") or None,
            es_max_error_share=_env_float("IMAGE_SEARCH_ES_MAX_ERROR_SHARE", 0.01),
            index_name=_env("IMAGE_SEARCH_INDEX", "image_search"),
            download_concurrency=_env_int("IMAGE_SEARCH_DOWNLOAD_CONCURRENCY", 32),
            download_timeout=_env_float("IMAGE_SEARCH_DOWNLOAD_TIMEOUT", 20.0),
            imgix_params=_env("IMAGE_SEARCH_IMGIX_PARAMS", "w=640&q=80&fm=jpg&fit=max"),
            max_download_failure_share=_env_float("IMAGE_SEARCH_MAX_DOWNLOAD_FAILURE_SHARE", 0.05),
            ann_min_docs=_env_int("IMAGE_SEARCH_ANN_MIN_DOCS", 200_000),
            duplicate_threshold=_env_float("IMAGE_SEARCH_DUPLICATE_THRESHOLD", 0.94),
            refresh_cron=_env("IMAGE_SEARCH_REFRESH_CRON", "0 3 * * *"),
            release_poll_seconds=_env_int("IMAGE_SEARCH_RELEASE_POLL_SECONDS", 600),
            lock_timeout=_env_float("IMAGE_SEARCH_LOCK_TIMEOUT", 3600.0),
            stale_run_seconds=_env_float("IMAGE_SEARCH_STALE_RUN_SECONDS", 3600.0),
            embed_batch_size=_env_int("IMAGE_SEARCH_EMBED_BATCH_SIZE", 0),
            decode_workers=_env_int("IMAGE_SEARCH_DECODE_WORKERS", 0),
            gpu_decode=_env_bool("IMAGE_SEARCH_GPU_DECODE", True),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the variable of the first unusable value."""
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"IMAGE_SEARCH_BACKEND={self.backend!r} is not supported: use one of {', '.join(BACKENDS)}"
            )
        if self.backend == "elasticsearch" and not self.es_url:
            raise ConfigError(
                "IMAGE_SEARCH_BACKEND=elasticsearch needs IMAGE_SEARCH_ES_URL, e.g. https://localhost:9200"
            )
        if self.ann_min_docs < 1:
            raise ConfigError("IMAGE_SEARCH_ANN_MIN_DOCS must be at least 1")
        if self.download_concurrency < 1:
            raise ConfigError("IMAGE_SEARCH_DOWNLOAD_CONCURRENCY must be at least 1")
        if self.device not in DEVICES:
            raise ConfigError(f"IMAGE_SEARCH_DEVICE={self.device!r} is not supported: use one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"IMAGE_SEARCH_PRECISION={self.precision!r} is not supported: use one of {', '.join(PRECISIONS)}"
            )
        if self.text_runtime not in TEXT_RUNTIMES:
            raise ConfigError(
                f"IMAGE_SEARCH_TEXT_RUNTIME={self.text_runtime!r} is not supported: use one of {', '.join(TEXT_RUNTIMES)}"
            )
        if self.embed_batch_size < 0 or self.decode_workers < 0:
            raise ConfigError("IMAGE_SEARCH_EMBED_BATCH_SIZE and IMAGE_SEARCH_DECODE_WORKERS must be 0 (automatic) or more")
        if self.release_poll_seconds < 30:
            raise ConfigError("IMAGE_SEARCH_RELEASE_POLL_SECONDS must be at least 30")
        if not 0 < self.duplicate_threshold <= 1:
            raise ConfigError(
                f"IMAGE_SEARCH_DUPLICATE_THRESHOLD={self.duplicate_threshold} is not a cosine similarity in (0, 1]"
            )

    def describe(self) -> dict[str, str]:
        """The settings as strings, safe to log or show: secrets left out, URLs masked."""
        shown = {}
        for f in fields(self):
            if f.name in ("es_username", "es_password", "es_api_key"):
                continue
            value = getattr(self, f.name)
            shown[f.name] = mask_url(value) if f.name == "es_url" else str(value)
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
        """ONNX exports of the text model (``resources/onnx_text.py``), one file per model fingerprint."""
        return self.home / "models" / "onnx"

    @property
    def duplicates_path(self) -> Path:
        """The near-duplicate groups (only photos in a group of two or more)."""
        return self.home / "duplicates" / "groups.parquet"
