"""Checks several integration test modules make against a real Kafka (imported as ``kafka_checks``: the folder is
on ``sys.path`` through its conftest)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaError

from foundation.kafka_io import make_admin
from foundation.settings import Settings
from tools.stack import probes


async def assert_kafka_refuses(settings: Settings, request_timeout_ms: int = 5000) -> None:
    """A client connecting with ``settings`` (a wrong protocol or password) cannot even list the topics."""
    admin = make_admin(settings, request_timeout_ms=request_timeout_ms)
    try:
        with probes.quiet_aiokafka(), pytest.raises(KafkaError):
            async with asyncio.timeout(30):
                await admin.start()
                await admin.list_topics()
    finally:
        with probes.quiet_aiokafka():
            await admin.close()
