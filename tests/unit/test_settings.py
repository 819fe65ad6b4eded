"""Settings come from the environment once, typed, with errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.settings import ENV_NAMES, SettingsError, WorkerSettings


def test_defaults_from_an_empty_environment() -> None:
    settings = WorkerSettings.from_env({})
    assert str(settings.a1111_url) == "http://127.0.0.1:3000/"
    assert settings.models_dir == Path("/runpod-volume/models")
    assert settings.effective_registry_path == Path("/runpod-volume/models/registry.json")
    assert settings.upload_configured is False
    assert settings.deployed_on_runpod is False


def test_values_are_typed_and_empty_means_unset() -> None:
    settings = WorkerSettings.from_env(
        {
            "WORKER_MODELS_DIR": "/data/models",
            "WORKER_READY_TIMEOUT_S": "12.5",
            "WORKER_WARMUP": "false",
            "WORKER_LOG_LEVEL": "debug",
            "WORKER_DOWNLOAD_ALLOWED_HOSTS": "example.com, *.cdn.example.com",
            "WORKER_REGISTRY_PATH": "",
            "HF_TOKEN": "hf_abcdef",
        }
    )
    assert settings.ready_timeout_s == 12.5
    assert settings.warmup is False
    assert settings.log_level == "DEBUG"
    assert settings.download_allowed_hosts == ("example.com", "*.cdn.example.com")
    assert settings.effective_registry_path == Path("/data/models/registry.json")
    assert settings.secret_values() == ["hf_abcdef"]
    assert "hf_abcdef" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"WORKER_READY_TIMEOUT_S": "soon"}, ["WORKER_READY_TIMEOUT_S='soon'", "number"]),
        ({"WORKER_MAX_IMAGES_PER_JOB": "0"}, ["WORKER_MAX_IMAGES_PER_JOB='0'", "greater than or equal to 1"]),
        ({"WORKER_A1111_URL": "localhost"}, ["WORKER_A1111_URL='localhost'", "URL"]),
        ({"WORKER_LOG_FORMAT": "xml"}, ["WORKER_LOG_FORMAT='xml'", "json", "text"]),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], fragments: list[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        WorkerSettings.from_env(env)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_bad_secret_is_named_but_never_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        WorkerSettings.from_env({"WORKER_A1111_AUTH": "hunter2-without-a-user", "WORKER_LOG_FORMAT": "xml"})
    message = str(caught.value)
    assert "WORKER_A1111_AUTH='<secret>': must have the form user:password" in message
    assert "WORKER_LOG_FORMAT='xml'" in message  # other values are still shown
    assert "hunter2" not in message


@pytest.mark.parametrize("blank", [" : ", "user: ", "\t:hunter2", "user:"])
def test_a_blank_user_or_password_is_no_credential(blank: str) -> None:
    with pytest.raises(SettingsError) as caught:
        WorkerSettings.from_env({"WORKER_A1111_AUTH": blank})
    message = str(caught.value)
    assert "WORKER_A1111_AUTH='<secret>': must have the form user:password, both non-blank" in message


def test_every_field_has_an_environment_name_and_docs() -> None:
    documented = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text("utf-8")
    assert set(ENV_NAMES.values()) == set(WorkerSettings.model_fields)
    missing = [name for name in ENV_NAMES if f"`{name}`" not in documented]
    assert missing == []
