"""The settings class: each variable's default, its check and its one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources.config import ConfigError, Settings, mask_url


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    """Set ``IMAGE_SEARCH_*`` variables for one test, starting from none."""
    import os

    for name in [n for n in os.environ if n.startswith("IMAGE_SEARCH_")]:
        monkeypatch.delenv(name)
    return lambda **values: [monkeypatch.setenv(f"IMAGE_SEARCH_{k.upper()}", v) for k, v in values.items()]


def test_unset_and_blank_variables_take_their_defaults(env):
    env(download_concurrency="", device="   ")
    assert Settings.from_env() == Settings()
    assert Settings().home == Path("data") and Settings().download_concurrency == 32


def test_variables_are_parsed_and_the_index_has_its_own_name(env, tmp_path):
    env(home=f" {tmp_path} ", index="photos", es_verify_certs="false", download_timeout="2.5", es_password=" pass ")
    settings = Settings.from_env()
    assert settings.home == tmp_path and settings.index_name == "photos"
    assert settings.es_verify_certs is False and settings.download_timeout == 2.5
    assert settings.es_password == " pass "
    assert Settings.from_env(index_name="other").index_name == "other"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"backend": "solr"}, "IMAGE_SEARCH_BACKEND='solr' is not supported: use one of local, elasticsearch"),
        ({"download_concurrency": "many"}, "IMAGE_SEARCH_DOWNLOAD_CONCURRENCY='many' is not a whole number"),
        ({"download_concurrency": "0"}, "IMAGE_SEARCH_DOWNLOAD_CONCURRENCY='0' is out of range: use a number >= 1"),
        (
            {"duplicate_threshold": "1.5"},
            "IMAGE_SEARCH_DUPLICATE_THRESHOLD='1.5' is out of range: use a number > 0 and <= 1",
        ),
        ({"release_poll_seconds": "5"}, "IMAGE_SEARCH_RELEASE_POLL_SECONDS='5' is out of range: use a number >= 30"),
        ({"gpu_decode": "maybe"}, "IMAGE_SEARCH_GPU_DECODE='maybe' is not a boolean: use true or false"),
        ({"download_timeout": "soon"}, "IMAGE_SEARCH_DOWNLOAD_TIMEOUT='soon' is not a number"),
        ({"backend": "elasticsearch"}, "IMAGE_SEARCH_BACKEND=elasticsearch needs IMAGE_SEARCH_ES_URL"),
        ({"buckets_per_run": "0"}, "IMAGE_SEARCH_BUCKETS_PER_RUN='0' is out of range: use a number >= 1 and <= 64"),
    ],
)
def test_a_bad_value_fails_with_one_line_naming_the_variable(env, values, message):
    env(**values)
    with pytest.raises(ConfigError) as error:
        Settings.from_env()
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_one_setting_is_read_without_the_others(env):
    env(backend="solr", release_poll_seconds="60")
    assert Settings.env_value("release_poll_seconds") == 60
    assert Settings.env_value("refresh_cron") == "0 3 * * *"
    env(release_poll_seconds="often")
    with pytest.raises(ConfigError, match="IMAGE_SEARCH_RELEASE_POLL_SECONDS='often'"):
        Settings.env_value("release_poll_seconds")


def test_replace_checks_the_new_values():
    settings = Settings(home=Path("h"))
    assert settings.replace(backend="elasticsearch", es_url="https://es:9200").home == Path("h")
    with pytest.raises(ConfigError, match="IMAGE_SEARCH_DEVICE='tpu'"):
        settings.replace(device="tpu")


def test_secrets_are_never_shown():
    settings = Settings(
        backend="elasticsearch",
        es_url="https://elastic:url-secret@es:9200",
        es_password="pw-secret",
        es_api_key="key-secret",
        api_key="api-key-secret",
    )
    shown = [str(settings), repr(settings), str(settings.describe())]
    assert not [
        s for s in shown if any(secret in s for secret in ("url-secret", "pw-secret", "key-secret", "api-key-secret"))
    ]
    assert settings.describe()["es_url"] == "https://***:***@es:9200"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@es:9200/x?a=1", "https://***:***@es:9200/x?a=1"),
        (
            "https://b.s3.amazonaws.com/l.zip?X-Amz-Expires=60&X-Amz-Signature=abc",
            "https://b.s3.amazonaws.com/l.zip?X-Amz-Expires=60&X-Amz-Signature=***",
        ),
        (
            "https://a.blob.core.windows.net/c/l.zip?sv=2022&SIG=Zm9v%3D&se=2026",
            "https://a.blob.core.windows.net/c/l.zip?sv=2022&SIG=***&se=2026",
        ),
        (
            "https://storage.googleapis.com/b/l.zip?X-Goog-Credential=sa%40p&X-Goog-Signature=ff",
            "https://storage.googleapis.com/b/l.zip?X-Goog-Credential=***&X-Goog-Signature=***",
        ),
        ("http://h/l.zip?token=t&api_key=k&q=dogs&flag", "http://h/l.zip?token=***&api_key=***&q=dogs&flag"),
        ("https://unsplash.com/data/lite/latest", "https://unsplash.com/data/lite/latest"),
    ],
)
def test_mask_url_hides_credentials_and_signatures(url, shown):
    assert mask_url(url) == shown
