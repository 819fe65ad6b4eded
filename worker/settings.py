"""The one place that reads the environment.

``WorkerSettings.from_env()`` is called once at start-up (``worker.__main__``) and the object is
passed to whatever needs it. Importing this module reads nothing. A bad value fails at start with a
message naming the variable. Every variable is documented in docs/configuration.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

#: The catalogue shipped at the repository root (overridden by WORKER_CATALOGUE_PATH).
DEFAULT_CATALOGUE_PATH = Path(__file__).resolve().parent.parent / "cache_registry.json"
#: The live registry's file in the models folder (overridden by WORKER_REGISTRY_PATH).
DEFAULT_REGISTRY_FILE = "registry.json"

DEFAULT_DOWNLOAD_HOSTS = (
    "civitai.com",
    "*.civitai.com",
    "huggingface.co",
    "*.huggingface.co",
    "*.hf.co",
    "*.cloudflarestorage.com",
    "*.amazonaws.com",
)

#: environment variable -> settings field
ENV_NAMES: dict[str, str] = {
    "WORKER_A1111_URL": "a1111_url",
    "WORKER_A1111_AUTH": "a1111_auth",
    "WORKER_MODELS_DIR": "models_dir",
    "WORKER_REGISTRY_PATH": "registry_path",
    "WORKER_CATALOGUE_PATH": "catalogue_path",
    "WORKER_ENGINE_PID_FILE": "engine_pid_file",
    "WORKER_READY_TIMEOUT_S": "ready_timeout_s",
    "WORKER_WARMUP": "warmup",
    "WORKER_CONNECT_TIMEOUT_S": "connect_timeout_s",
    "WORKER_REQUEST_TIMEOUT_S": "request_timeout_s",
    "WORKER_JOB_TIMEOUT_S": "job_timeout_s",
    "WORKER_MAX_IMAGES_PER_JOB": "max_images_per_job",
    "WORKER_OUTPUT_MAX_BYTES": "output_max_bytes",
    "WORKER_PROGRESS_INTERVAL_S": "progress_interval_s",
    "WORKER_LOG_LEVEL": "log_level",
    "WORKER_LOG_FORMAT": "log_format",
    "WORKER_DEFAULT_CHECKPOINT": "default_checkpoint",
    "WORKER_ALLOW_PICKLE": "allow_pickle",
    "WORKER_DOWNLOAD_ALLOWED_HOSTS": "download_allowed_hosts",
    "WORKER_DOWNLOAD_MAX_BYTES": "download_max_bytes",
    "WORKER_DOWNLOAD_TIMEOUT_S": "download_timeout_s",
    "WORKER_VOLUME_QUOTA_GB": "volume_quota_gb",
    "WORKER_ENGINE": "engine",
    "WORKER_EXPOSE_ENGINE": "expose_engine",
    "WORKER_AUTO_CONVERT": "auto_convert",
    "WORKER_IMAGE_MAX_BYTES": "image_max_bytes",
    "WORKER_IMAGE_MAX_PIXELS": "image_max_pixels",
    "WORKER_ALLOW_IMAGE_URLS": "allow_image_urls",
    "WORKER_IMAGE_URL_TIMEOUT_S": "image_url_timeout_s",
    "WORKER_ALLOW_MODEL_JOBS": "allow_model_jobs",
    "CIVITAI_TOKEN": "civitai_token",
    "HF_TOKEN": "hf_token",
    "BUCKET_ENDPOINT_URL": "bucket_endpoint_url",
    "BUCKET_ACCESS_KEY_ID": "bucket_access_key_id",
    "BUCKET_SECRET_ACCESS_KEY": "bucket_secret_access_key",
    "BUCKET_NAME": "bucket_name",
    "RUNPOD_WEBHOOK_GET_JOB": "runpod_job_url",
}
FIELD_TO_ENV = {field: env for env, field in ENV_NAMES.items()}


class SettingsError(ValueError):
    """The environment holds a value the worker cannot start with."""


class WorkerSettings(BaseModel):
    """Typed, validated configuration of one worker process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    a1111_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:3000")
    a1111_auth: SecretStr | None = None
    models_dir: Path = Path("/runpod-volume/models")
    registry_path: Path | None = None
    catalogue_path: Path = DEFAULT_CATALOGUE_PATH
    engine_pid_file: Path | None = None
    ready_timeout_s: float = Field(600.0, gt=0)
    warmup: bool = True
    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float = Field(30.0, gt=0)
    job_timeout_s: float = Field(600.0, gt=0)
    max_images_per_job: int = Field(8, ge=1, le=100)
    output_max_bytes: int = Field(20_000_000, ge=1024)
    progress_interval_s: float = Field(1.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    default_checkpoint: str | None = None
    allow_pickle: bool = False
    download_allowed_hosts: tuple[str, ...] = DEFAULT_DOWNLOAD_HOSTS
    download_max_bytes: int = Field(20 * 1024**3, ge=1)
    download_timeout_s: float = Field(60.0, gt=0)
    volume_quota_gb: float | None = Field(None, gt=0)
    #: which engine answers on a1111_url (start.sh resolves ``auto``); anything but ``embedded`` is held to
    #: A1111's rules, e.g. a LoRA in diffusers/PEFT layout is converted (or refused) before A1111 sees it
    engine: Literal["auto", "a1111", "embedded", "external"] = "auto"
    #: start.sh's WORKER_EXPOSE_ENGINE: the engine's API is reachable from outside the container
    expose_engine: bool = False
    auto_convert: bool = True
    #: input images (img2img, masks, extras, png-info): bytes of one decoded image, and its pixel count as
    #: its header declares it (a decompression bomb is refused before anything decodes it)
    image_max_bytes: int = Field(30_000_000, ge=1024)
    image_max_pixels: int = Field(4096 * 4096, ge=64 * 64)
    #: ``https`` image URLs in jobs, fetched by the worker under the download allowlist; off by default
    allow_image_urls: bool = False
    image_url_timeout_s: float = Field(30.0, gt=0)
    #: registry jobs ({"registry": ...}, /v1/download, /v1/sync) write to the volume: off unless allowed
    allow_model_jobs: bool = False
    civitai_token: SecretStr | None = None
    hf_token: SecretStr | None = None
    bucket_endpoint_url: AnyHttpUrl | None = None
    bucket_access_key_id: SecretStr | None = None
    bucket_secret_access_key: SecretStr | None = None
    bucket_name: str | None = None
    runpod_job_url: str | None = None  # set by RunPod when deployed; progress is only posted then

    @field_validator("a1111_auth")
    @classmethod
    def _user_and_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            user, sep, password = value.get_secret_value().partition(":")
            if not sep or not user.strip() or not password.strip():
                # a blank user or password (" : ") is no credential at all; never the value: it is a secret
                raise ValueError("must have the form user:password, both non-blank")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("download_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(host.strip().lower() for host in value.split(",") if host.strip())
        return value

    @property
    def effective_registry_path(self) -> Path:
        """WORKER_REGISTRY_PATH, defaulting to registry.json inside the models folder."""
        return self.registry_path or self.models_dir / DEFAULT_REGISTRY_FILE

    @property
    def deployed_on_runpod(self) -> bool:
        return self.runpod_job_url is not None

    @property
    def engine_private(self) -> bool:
        """Only this worker can call the engine (start.sh launched it on the loopback, not exposed): only the
        worker can interrupt a generation, so nobody else's interrupt needs looking for after a job."""
        return self.engine in ("a1111", "embedded") and not self.expose_engine

    @property
    def engine_name(self) -> str:
        """Who answers, as error messages name it: ``A1111`` unless the embedded engine was chosen."""
        return "the embedded engine" if self.engine == "embedded" else "A1111"

    @property
    def upload_configured(self) -> bool:
        return self.bucket_endpoint_url is not None

    def secret_values(self) -> list[str]:
        """Every secret's plain value, so logs can redact them."""
        secrets: list[SecretStr | None] = [getattr(self, name) for name in sorted(SECRET_FIELDS)]
        return [s.get_secret_value() for s in secrets if s is not None and s.get_secret_value()]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        """Build settings from ``environ`` (default ``os.environ``); empty values count as unset.

        Raises:
            SettingsError: naming the variable, its bad value (never for secrets) and what is valid.
        """
        env = os.environ if environ is None else environ
        raw = {field: env[name] for name, field in ENV_NAMES.items() if env.get(name, "").strip()}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                field = str(err["loc"][0]) if err["loc"] else "?"
                name = FIELD_TO_ENV.get(field, field)
                shown = "<secret>" if field in SECRET_FIELDS else raw.get(field)
                problems.append(f"{name}={shown!r}: {err['msg'].removeprefix('Value error, ')}")
            raise SettingsError("invalid environment: " + "; ".join(problems)) from None


#: fields whose values never appear in a message or a log: every ``SecretStr`` of the settings
SECRET_FIELDS: frozenset[str] = frozenset(
    name for name, info in WorkerSettings.model_fields.items() if SecretStr in get_args(info.annotation)
)
