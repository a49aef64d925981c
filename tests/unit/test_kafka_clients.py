"""Kafka security settings reach kafka-python's arguments, and only arguments it knows.

The embedded broker speaks neither SASL nor TLS, so this is what can be checked without a
secured cluster: each setting lands in the argument kafka-python reads, secrets come from the
environment or a file, and every argument we build is one the client classes accept.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from monitor.errors import ConfigError
from monitor.kafka.clients import admin_config, consumer_config, producer_config
from monitor.settings import load_settings

BUILDERS = [
    (consumer_config, KafkaConsumer),
    (producer_config, KafkaProducer),
    (admin_config, KafkaAdminClient),
]


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n")
    return path


@pytest.mark.parametrize(("build", "client"), BUILDERS, ids=lambda x: getattr(x, "__name__", ""))
def test_sasl_ssl_settings_reach_every_client(build, client, tmp_path: Path, pem: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret-from-a-file\n")
    settings = load_settings(
        bootstrap="broker-1:9093, broker-2:9093",
        kafka={
            "security": {
                "protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "monitor",
                "sasl_password_file": str(secret),
                "ssl_cafile": str(pem),
                "ssl_check_hostname": False,
            }
        },
    )
    config = build(settings)
    assert config["bootstrap_servers"] == ["broker-1:9093", "broker-2:9093"]
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "monitor"
    assert config["sasl_plain_password"] == "s3cret-from-a-file"  # stripped, from the file
    assert config["ssl_cafile"] == str(pem)
    assert config["ssl_check_hostname"] is False
    # Every argument is one this kafka-python version knows (its constructors reject others).
    unknown = set(config) - set(client.DEFAULT_CONFIG)
    assert not unknown, f"{client.__name__} does not take {sorted(unknown)}"


def test_sasl_plain_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_KAFKA__SECURITY__PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("MONITOR_KAFKA__SECURITY__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("MONITOR_KAFKA__SECURITY__SASL_USERNAME", "alice")
    monkeypatch.setenv("MONITOR_KAFKA__SECURITY__SASL_PASSWORD", "from-env")
    config = producer_config(load_settings())
    assert config["security_protocol"] == "SASL_PLAINTEXT"
    assert (config["sasl_mechanism"], config["sasl_plain_username"]) == ("PLAIN", "alice")
    assert config["sasl_plain_password"] == "from-env"
    assert "ssl_cafile" not in config  # no TLS arguments without TLS
    assert "from-env" not in repr(load_settings())  # the settings object never shows it


def test_plaintext_passes_no_security_arguments_but_the_protocol() -> None:
    config = consumer_config(load_settings())
    assert config["security_protocol"] == "PLAINTEXT"
    assert not any(k.startswith(("sasl_", "ssl_")) for k in config)


@pytest.mark.parametrize(
    ("security", "named"),
    [
        ({"protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "p"}, "sasl_mechanism"),
        ({"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_password": "p"}, "user"),
        ({"protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "ssl_cafile"),
        ({"protocol": "TLS"}, "protocol"),
    ],
)
def test_inconsistent_security_settings_are_refused_with_the_key(security, named) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(kafka={"security": security})
