"""Shared pytest plugins: each support module owns its fixtures."""

pytest_plugins = [
    "tests.support.fake_a1111",
    "tests.support.embedded_engine",
    "tests.support.s3_server",
]
