"""start.sh's exposure rules: nothing but WORKER_EXPOSE_ENGINE=1 with real credentials binds other
interfaces than the loopback, whatever the extra arguments or A1111's own COMMANDLINE_ARGS say."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.deploy.test_start_sh import fake_a1111_dir, print_command  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("auth", [":", "user:", ":password", "u1:p1,:", "u1:p1,u2:"])
def test_empty_credentials_never_expose_a1111(tmp_path: Path, fake_a1111_dir: Path, auth: str) -> None:  # noqa: F811
    result = print_command(
        tmp_path,
        WORKER_ENGINE="a1111",
        A1111_DIR=str(fake_a1111_dir),
        WORKER_EXPOSE_ENGINE="1",
        A1111_API_AUTH=auth,
    )
    assert result.returncode != 0 and "A1111_API_AUTH" in result.stderr
    assert "0.0.0.0" not in result.stdout


def test_real_credentials_expose_a1111(tmp_path: Path, fake_a1111_dir: Path) -> None:  # noqa: F811
    result = print_command(
        tmp_path,
        WORKER_ENGINE="a1111",
        A1111_DIR=str(fake_a1111_dir),
        WORKER_EXPOSE_ENGINE="1",
        A1111_API_AUTH="u1:p1,u2:p2",
    )
    assert result.returncode == 0, result.stderr
    args = shlex.split(result.stdout)
    assert args[args.index("--server-name") + 1] == "0.0.0.0"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("A1111_EXTRA_ARGS", "--server-name 0.0.0.0"),
        ("A1111_EXTRA_ARGS", "--medvram --server-name=0.0.0.0"),
        ("A1111_EXTRA_ARGS", "--listen"),
        ("A1111_EXTRA_ARGS", "--list"),  # argparse abbreviation of --listen
        ("A1111_EXTRA_ARGS", "--share"),
        ("A1111_EXTRA_ARGS", "--ngrok token"),
        ("A1111_EXTRA_ARGS", "--port 7860"),
        ("A1111_EXTRA_ARGS", "--api-auth u:p"),
        ("COMMANDLINE_ARGS", "--listen"),  # A1111 appends this variable to its arguments itself
        ("COMMANDLINE_ARGS", "'--server-name' 0.0.0.0"),
    ],
)
def test_a1111_arguments_that_bind_elsewhere_are_refused(
    tmp_path: Path,
    fake_a1111_dir: Path,  # noqa: F811
    variable: str,
    value: str,
) -> None:
    result = print_command(
        tmp_path, WORKER_ENGINE="a1111", A1111_DIR=str(fake_a1111_dir), **{variable: value}
    )
    assert result.returncode != 0, result.stdout
    assert variable in result.stderr and "threat model" in result.stderr


def test_harmless_a1111_arguments_pass(tmp_path: Path, fake_a1111_dir: Path) -> None:  # noqa: F811
    result = print_command(
        tmp_path,
        WORKER_ENGINE="a1111",
        A1111_DIR=str(fake_a1111_dir),
        A1111_EXTRA_ARGS="--api --medvram --api-log",
        COMMANDLINE_ARGS="--no-half",
    )
    assert result.returncode == 0, result.stderr
    assert "--medvram" in shlex.split(result.stdout)


@pytest.mark.parametrize("value", ["--host 0.0.0.0", "--host=0.0.0.0", "--ho 0.0.0.0", "--cpu --port 9999"])
def test_embedded_engine_never_leaves_the_loopback(tmp_path: Path, value: str) -> None:
    result = print_command(tmp_path, WORKER_ENGINE="embedded", WORKER_EMBEDDED_EXTRA_ARGS=value)
    assert result.returncode != 0 and "WORKER_EMBEDDED_EXTRA_ARGS" in result.stderr


def test_embedded_engine_refuses_abbreviated_flags() -> None:
    from diffusers_server.__main__ import _parser

    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--models-dir", "/m", "--ho", "0.0.0.0"])
