"""What ``monitor``'s entry point sets up before a command runs (no broker needed)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator

import pytest

from monitor import cli
from monitor.settings import Settings


@pytest.fixture
def kafka_level() -> Iterator[None]:
    logger = logging.getLogger("kafka")
    before = logger.level
    yield
    logger.setLevel(before)


@pytest.mark.usefixtures("kafka_level")
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["demo"], logging.ERROR),  # quiet: kafka-python's warnings stay out of the demo's output
        (["demo", "--log-level", "INFO"], logging.INFO),  # asked for: everything at that level
        (["run", "--log-level", "WARNING"], logging.WARNING),  # the daemon: operators see them
    ],
)
def test_the_demo_alone_keeps_kafka_pythons_warnings_out_unless_asked(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: int
) -> None:
    seen: dict[str, int] = {}

    def command(args: argparse.Namespace, settings: Settings) -> int:
        seen["level"] = logging.getLogger("kafka.net.selector").getEffectiveLevel()
        return 0

    monkeypatch.setitem(cli.COMMANDS, argv[0], command)
    logging.getLogger("kafka").setLevel(logging.NOTSET)
    assert cli.main(argv) == 0
    assert seen["level"] == expected
