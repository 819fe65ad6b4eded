"""worker.output: pass-through, conversion, the real size measure, delivery policy and S3 upload.

Uploads run against a real S3 API on loopback (tests.support.s3_server) over real HTTP.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
from typing import Any

import pytest
import requests
from PIL import Image, PngImagePlugin
from pydantic import SecretStr, ValidationError

from tests.support.s3_server import S3Endpoint
from worker.errors import EngineFailed, InputInvalid, OutputTooLarge, UploadFailed
from worker.output.bucket_config import bucket_endpoint, uploader_from_settings
from worker.output.delivery import check_delivery, deliver
from worker.output.images import convert_images
from worker.output.size import serialized_size
from worker.output.upload import ImageUploader
from worker.schema import OutputOptions
from worker.settings import SettingsError, WorkerSettings

INFOTEXT = (
    "a photo of a cat, ☃ 日本語 <lora:detail:0.6>\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 64x48"
)


def make_png(
    width: int = 64, height: int = 48, *, mode: str = "RGBA", infotext: str | None = INFOTEXT
) -> str:
    """A PNG the way A1111 returns it: base64, infotext in a 'parameters' text chunk."""
    noise = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    image = noise.convert(mode)
    info = PngImagePlugin.PngInfo()
    if infotext is not None:
        info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def open_b64(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def user_comment(image: Image.Image) -> str | None:
    raw = image.getexif().get_ifd(0x8769).get(0x9286)
    if raw is None:
        return None
    assert raw[:8] == b"UNICODE\x00"  # A1111/piexif's header
    return raw[8:].decode("utf-16-be")


def make_output(images: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "images": images,
        "parameters": {"prompt": "a cat", "steps": 20},
        "info": json.dumps({"prompt": "a cat", "infotexts": [INFOTEXT]}),
        "seeds": [123],
        "warnings": ["earlier warning"],
        **extra,
    }


def uploader_for(endpoint: S3Endpoint, **kwargs: Any) -> ImageUploader:
    return ImageUploader(
        endpoint_url=kwargs.pop("endpoint_url", endpoint.endpoint_url),
        access_key_id=endpoint.access_key_id,
        secret_access_key=endpoint.secret_access_key,
        bucket=kwargs.pop("bucket", endpoint.bucket),
        region=endpoint.region,
        max_attempts=1,
        connect_timeout_s=2,
        read_timeout_s=5,
        **kwargs,
    )


class RecordingUploader(ImageUploader):
    """A real uploader type that records instead of uploading: for policy tests only."""

    def __init__(self) -> None:
        super().__init__(
            endpoint_url="http://unused.invalid", access_key_id="k", secret_access_key="s", bucket="b"
        )
        self.calls: list[tuple[str, list[str], str]] = []

    def upload(self, job_id: str, images_b64: Any, fmt: Any) -> list[str]:
        self.calls.append((job_id, list(images_b64), fmt))
        return [f"https://example.invalid/{job_id}/{i}" for i in range(len(images_b64))]


# --- options --------------------------------------------------------------------------------


def test_options_defaults_and_strictness() -> None:
    options = OutputOptions()
    assert (options.format, options.quality, options.delivery) == ("png", 90, "auto")
    with pytest.raises(ValidationError):
        OutputOptions.model_validate({"format": "gif"})
    with pytest.raises(ValidationError):
        OutputOptions.model_validate({"quality": 0})
    with pytest.raises(ValidationError):
        OutputOptions.model_validate({"formt": "png"})


# --- conversion -----------------------------------------------------------------------------


def test_png_passes_through_without_decoding() -> None:
    not_a_png = base64.b64encode(b"certainly not an image").decode()
    not_even_base64 = "%%% not base64 %%%"
    images = [not_a_png, not_even_base64]
    result = convert_images(images, OutputOptions(format="png"))
    assert result is images
    assert all(a is b for a, b in zip(result, [not_a_png, not_even_base64], strict=True))


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_conversion_keeps_size_and_infotext(fmt: str, pil_format: str) -> None:
    images = [make_png(64, 48), make_png(40, 24, mode="RGB")]
    converted = convert_images(images, OutputOptions(format=fmt))  # type: ignore[arg-type]
    assert len(converted) == 2
    for original, new in zip(images, converted, strict=True):
        image = open_b64(new)
        assert image.format == pil_format
        assert image.mode == "RGB"
        assert image.size == open_b64(original).size
        assert user_comment(image) == INFOTEXT


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_quality_changes_the_size(fmt: str) -> None:
    image = [make_png(96, 96, mode="RGB")]
    low = convert_images(image, OutputOptions(format=fmt, quality=20))  # type: ignore[arg-type]
    high = convert_images(image, OutputOptions(format=fmt, quality=95))  # type: ignore[arg-type]
    assert len(base64.b64decode(low[0])) < len(base64.b64decode(high[0]))


def test_conversion_without_infotext_writes_no_comment() -> None:
    converted = convert_images([make_png(infotext=None)], OutputOptions(format="jpeg"))
    assert user_comment(open_b64(converted[0])) is None


def test_jpeg_too_long_infotext_is_dropped_with_a_warning_webp_keeps_it() -> None:
    long_text = "a very long prompt, " * 2000  # 40,000 chars: 80 kB of UTF-16, over JPEG's 64 kB APP1
    png = [make_png(infotext=long_text)]
    warnings: list[str] = []
    jpeg = convert_images(png, OutputOptions(format="jpeg"), warnings)
    assert user_comment(open_b64(jpeg[0])) is None
    assert len(warnings) == 1
    assert "EXIF" in warnings[0]
    webp = convert_images(png, OutputOptions(format="webp"), warnings)
    assert user_comment(open_b64(webp[0])) == long_text
    assert len(warnings) == 1


def test_converting_a_jpeg_source_keeps_its_comment() -> None:
    jpeg = convert_images([make_png()], OutputOptions(format="jpeg"))
    webp = convert_images(jpeg, OutputOptions(format="webp"))
    assert user_comment(open_b64(webp[0])) == INFOTEXT


@pytest.mark.parametrize(
    "bad",
    ["%%% not base64 %%%", base64.b64encode(b"valid base64, not an image").decode(), 42],
)
def test_bad_engine_image_is_an_engine_error(bad: Any) -> None:
    with pytest.raises(EngineFailed) as info:
        convert_images([bad], OutputOptions(format="jpeg"))
    assert "image 0" in str(info.value)
    assert len(str(info.value)) < 300


# --- serialized size ------------------------------------------------------------------------


def _base64_blob(size: int) -> str:
    return base64.b64encode(os.urandom(size)).decode()


SIZE_CASES: dict[str, Any] = {
    "empty": {},
    "unicode prompts": make_output(
        [_base64_blob(3000)],
        parameters={
            "prompt": 'kedi, çok güzel — Katze über 日本 🐈\t"quoted" back\\slash',
            "neg": "ü" * 5000,
        },
    ),
    "nested info": make_output(
        [],
        info=json.dumps({"infotexts": [INFOTEXT] * 3, "extra_generation_params": {"Lora hashes": "x: 1"}}),
        models={"checkpoint": {"name": "sd15", "sha256": "ab" * 32, "size": 2_132_625_894}},
        timings_ms={"total": 1234.5, "engine": 1000, "ratio": 1e-7, "big": 1e300},
        flags=[True, False, None, -0.0, 3, (1, 2)],
    ),
    "many images": make_output([_base64_blob(7000) for _ in range(40)]),
    "long strings that need escaping": {
        "control": "\x00\x01\x1f\n\r\b\f\t" * 1000,
        "quotes": '"\\' * 3000,
        "ascii with a newline": "a" * 5000 + "\n",
        "astral": "🐈" * 3000,
        "del char": "\x7f" * 5000,
        "data url": "data:image/png;base64," + _base64_blob(5000),
    },
    "non-string keys": {7: "a", 2.5: [1, 2], True: None, None: {"x": "y"}},
    "scalars": [0, -1, 2**70, 0.1, float("inf"), float("nan"), "", None],
}


@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_serialized_size_is_exact(case: str) -> None:
    value = SIZE_CASES[case]
    assert serialized_size(value) == len(json.dumps(value).encode())


# --- delivery policy ------------------------------------------------------------------------


def test_auto_under_limit_is_inline() -> None:
    output = make_output([_base64_blob(1000)])
    uploader = RecordingUploader()
    result = deliver(output, options=OutputOptions(), job_id="j1", max_bytes=10_000, uploader=uploader)
    assert result == output
    assert "image_urls" not in result
    assert uploader.calls == []


def test_auto_over_limit_uploads_with_a_warning() -> None:
    images = [_base64_blob(6000), _base64_blob(6000)]
    output = make_output(images)
    uploader = RecordingUploader()
    result = deliver(output, options=OutputOptions(), job_id="j2", max_bytes=10_000, uploader=uploader)
    assert uploader.calls == [("j2", images, "png")]
    assert result["images"] == []
    assert result["image_urls"] == ["https://example.invalid/j2/0", "https://example.invalid/j2/1"]
    assert result["warnings"][0] == "earlier warning"
    assert "uploaded" in result["warnings"][1]
    assert "10,000" in result["warnings"][1]
    assert output["images"] == images  # the caller's dict is untouched
    assert output["warnings"] == ["earlier warning"]
    assert serialized_size(result) <= 10_000


def test_auto_over_limit_without_uploader_names_size_limit_and_fixes() -> None:
    output = make_output([_base64_blob(30_000)])
    size = serialized_size(output)
    with pytest.raises(OutputTooLarge) as info:
        deliver(output, options=OutputOptions(), job_id="j3", max_bytes=20_000, uploader=None)
    message = str(info.value)
    assert message.startswith("output_too_large: ")
    assert f"{size:,}" in message
    assert "20,000" in message
    assert "BUCKET_ENDPOINT_URL" in message
    assert "BUCKET_NAME" in message
    assert "jpeg" in message
    assert info.value.details == {"size_bytes": size, "limit_bytes": 20_000}


def test_inline_over_limit_never_uploads() -> None:
    uploader = RecordingUploader()
    with pytest.raises(OutputTooLarge) as info:
        deliver(
            make_output([_base64_blob(30_000)]),
            options=OutputOptions(delivery="inline", format="webp"),
            job_id="j4",
            max_bytes=20_000,
            uploader=uploader,
        )
    assert uploader.calls == []
    assert "delivery 'auto' or 'url'" in str(info.value)
    assert "quality" in str(info.value)


def test_url_without_uploader_is_input_invalid() -> None:
    options = OutputOptions(delivery="url")
    with pytest.raises(InputInvalid) as info:
        check_delivery(options, None)
    assert "BUCKET_ENDPOINT_URL" in str(info.value)
    with pytest.raises(InputInvalid):
        deliver(make_output([]), options=options, job_id="j5", max_bytes=10**6, uploader=None)


def test_url_uploads_even_when_small_without_warning() -> None:
    uploader = RecordingUploader()
    result = deliver(
        make_output(["aGk="]),
        options=OutputOptions(delivery="url"),
        job_id="j6",
        max_bytes=10**6,
        uploader=uploader,
    )
    assert result["image_urls"] == ["https://example.invalid/j6/0"]
    assert result["images"] == []
    assert result["warnings"] == ["earlier warning"]


def test_still_too_large_after_upload() -> None:
    output = make_output([_base64_blob(100)], info="x" * 50_000)
    with pytest.raises(OutputTooLarge, match="even with its images uploaded"):
        deliver(output, options=OutputOptions(), job_id="j7", max_bytes=20_000, uploader=RecordingUploader())


# --- S3 upload on a loopback server ---------------------------------------------------------


def test_upload_end_to_end(s3_server: S3Endpoint, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    png = make_png()
    webp = convert_images([make_png()], OutputOptions(format="webp"))[0]
    uploader = uploader_for(s3_server, expires_s=3600)
    urls = uploader.upload("sync-1234-abcd", [png, webp], "png")
    assert len(urls) == 2
    client = s3_server.client()
    for index, (url, original) in enumerate(zip(urls, [png, webp], strict=True)):
        assert url.startswith(f"{s3_server.endpoint_url}/{s3_server.bucket}/sync-1234-abcd/{index}-")
        assert "X-Amz-Signature=" in url
        assert "X-Amz-Expires=3600" in url
        response = requests.get(url, timeout=10)
        assert response.status_code == 200
        assert response.content == base64.b64decode(original)
    keys = sorted(obj["Key"] for obj in client.list_objects_v2(Bucket=s3_server.bucket)["Contents"])
    job_keys = [key for key in keys if key.startswith("sync-1234-abcd/")]
    assert len(job_keys) == 2
    assert job_keys[0].endswith(".png")
    assert job_keys[1].endswith(".webp")  # labelled by its bytes, not by the fmt argument
    head = client.head_object(Bucket=s3_server.bucket, Key=job_keys[1])
    assert head["ContentType"] == "image/webp"
    assert os.listdir(tmp_path) == []


def test_deliver_uploads_to_s3(s3_server: S3Endpoint) -> None:
    images = [make_png(96, 96), make_png(96, 96)]
    result = deliver(
        make_output(images),
        options=OutputOptions(),
        job_id="job/../odd id",
        max_bytes=20_000,
        uploader=uploader_for(s3_server),
    )
    assert result["images"] == []
    for url, original in zip(result["image_urls"], images, strict=True):
        assert "/job_.._odd_id/" in url  # the job id is made key-safe, not dropped
        assert requests.get(url, timeout=10).content == base64.b64decode(original)


def test_upload_to_a_missing_bucket_fails_loudly(
    s3_server: S3Endpoint, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    uploader = uploader_for(s3_server, bucket="no-such-bucket")
    with pytest.raises(UploadFailed) as info:
        uploader.upload("job1", [make_png()], "png")
    message = str(info.value)
    assert message.startswith("upload_failed: ")
    assert "'no-such-bucket'" in message
    assert s3_server.endpoint_url in message
    assert "NoSuchBucket" in message
    assert "\n" not in message
    for secret in (s3_server.secret_access_key, s3_server.access_key_id):
        assert secret not in message
        assert secret not in repr(uploader)
        ours = [r.getMessage() for r in caplog.records if r.name.startswith("worker")]
        assert not any(secret in line for line in ours)
    # botocore's own DEBUG lines show the key *id* in the Authorization header, never the secret.
    assert s3_server.secret_access_key not in caplog.text
    assert os.listdir(tmp_path) == []


def test_upload_to_a_stopped_server_fails(
    s3_server_factory: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    server = s3_server_factory()
    endpoint = server.endpoint()
    uploader = uploader_for(endpoint)
    assert len(uploader.upload("alive", [make_png()], "png")) == 1
    server.stop()
    with pytest.raises(UploadFailed) as info:
        uploader.upload("dead", [make_png()], "png")
    assert endpoint.bucket in str(info.value)
    assert endpoint.secret_access_key not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_upload_to_a_bad_endpoint_fails(
    s3_server: S3Endpoint, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    secret_in_url = f"http://user:hunter2-password@127.0.0.1:{port}"
    uploader = uploader_for(s3_server, endpoint_url=secret_in_url)
    with pytest.raises(UploadFailed) as info:
        uploader.upload("job", [make_png()], "png")
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "hunter2" not in message
    assert s3_server.secret_access_key not in message
    assert os.listdir(tmp_path) == []


def test_upload_of_bad_base64_is_an_engine_error(s3_server: S3Endpoint) -> None:
    with pytest.raises(EngineFailed):
        uploader_for(s3_server).upload("job", ["%%% nope"], "png")


# --- construction from settings --------------------------------------------------------------


def _settings(**values: Any) -> WorkerSettings:
    return WorkerSettings(**values)


def test_from_settings_not_configured_is_none(caplog: pytest.LogCaptureFixture) -> None:
    assert uploader_from_settings(_settings()) is None
    caplog.set_level(logging.WARNING)
    assert uploader_from_settings(_settings(bucket_name="images")) is None
    assert "BUCKET_NAME set but BUCKET_ENDPOINT_URL is empty" in caplog.text


def test_from_settings_requires_the_bucket_name_and_keys() -> None:
    with pytest.raises(SettingsError) as info:
        uploader_from_settings(
            _settings(
                bucket_endpoint_url="https://s3.example.com",
                bucket_access_key_id=SecretStr("AKIAEXAMPLE"),
                bucket_secret_access_key=SecretStr("very-secret"),
            )
        )
    assert "BUCKET_NAME" in str(info.value)
    assert "very-secret" not in str(info.value)
    with pytest.raises(SettingsError, match="BUCKET_SECRET_ACCESS_KEY"):
        uploader_from_settings(
            _settings(
                bucket_endpoint_url="https://s3.example.com", bucket_name="b", bucket_access_key_id="AKIA"
            )
        )


def test_from_settings_builds_a_working_uploader(s3_server: S3Endpoint) -> None:
    uploader = uploader_from_settings(
        _settings(
            bucket_endpoint_url=s3_server.endpoint_url,
            bucket_access_key_id=SecretStr(s3_server.access_key_id),
            bucket_secret_access_key=SecretStr(s3_server.secret_access_key),
            bucket_name=s3_server.bucket,
        )
    )
    assert uploader is not None
    assert uploader.bucket == s3_server.bucket
    [url] = uploader.upload("from-settings", [make_png()], "png")
    assert requests.get(url, timeout=10).status_code == 200


def test_bucket_in_the_endpoint_host_is_removed() -> None:
    assert (
        bucket_endpoint("https://my-images.nyc3.digitaloceanspaces.com/", "my-images")
        == "https://nyc3.digitaloceanspaces.com"
    )
    assert (
        bucket_endpoint("https://acct.r2.cloudflarestorage.com", "b")
        == "https://acct.r2.cloudflarestorage.com"
    )
    assert bucket_endpoint("https://key:pw@s3.example.com:9000/", "b") == "https://s3.example.com:9000"


def test_uploader_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bucket"):
        ImageUploader(endpoint_url="http://x", access_key_id="k", secret_access_key="s", bucket="")
    with pytest.raises(ValueError, match="expires_s"):
        ImageUploader(
            endpoint_url="http://x", access_key_id="k", secret_access_key="s", bucket="b", expires_s=10**7
        )
