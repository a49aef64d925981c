"""One typed settings model for every command: TOML file + ``MONITOR_*`` environment + CLI.

Precedence, highest first: command-line flags, environment variables, the settings file, defaults.
Nested keys use ``__`` in the environment: ``detector.threshold`` is ``MONITOR_DETECTOR__THRESHOLD``
(as JSON). The broker address is the one setting everyone sets, so it sits at the top:
``MONITOR_BOOTSTRAP``. Unknown keys are an error that names the key.

Settings are built once in ``monitor.cli`` and passed down; the core never reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from monitor.errors import ConfigError

__all__ = [
    "DetectorSettings",
    "KafkaSettings",
    "ModelSettings",
    "RegistrySettings",
    "RetrainSettings",
    "Settings",
    "load_settings",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecuritySettings(_Section):
    """Kafka transport security, passed to kafka-python as is (``monitor.kafka.clients``).

    Secrets come from the environment (``MONITOR_KAFKA__SECURITY__SASL_PASSWORD``) or from a file
    (``sasl_password_file``, e.g. a mounted Kubernetes secret); they are never logged and
    ``monitor config`` masks them.
    """

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_password_file: Path | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> SecuritySettings:
        sasl = self.protocol.startswith("SASL")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(
                f"kafka.security.sasl_mechanism is required with protocol {self.protocol}"
            )
        if sasl and not self.sasl_username:
            raise ValueError(f"kafka.security.sasl_username is required with {self.protocol}")
        if sasl and self.sasl_password is None and self.sasl_password_file is None:
            raise ValueError(
                "kafka.security.sasl_password (or sasl_password_file) is required with "
                f"{self.protocol}"
            )
        for name in (
            "sasl_password_file",
            "ssl_password_file",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
        ):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"kafka.security.{name}={str(path)!r} is not a readable file")
        return self

    def secret(self, name: Literal["sasl_password", "ssl_password"]) -> str | None:
        """The secret's value, from the setting itself or else from its file."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        path: Path | None = getattr(self, f"{name}_file")
        return path.read_text().strip() if path is not None else None


class KafkaSettings(_Section):
    """Topics and client behaviour. Client settings are turned into kafka-python arguments in
    exactly one place, ``monitor.kafka.clients``."""

    readings_topic: str = "sensor-readings"
    events_topic: str = "sensor-anomalies"
    dead_letter_topic: str = "sensor-readings-dead-letter"
    state_topic: str = Field(
        "sensor-monitor-state", description="compacted topic of per-partition detector snapshots"
    )
    models_topic: str = Field(
        "sensor-monitor-models", description="compacted topic announcing promoted models"
    )
    group_id: str = "sensor-monitor"
    client_id: str = "sensor-monitor"
    # A few seconds, not kafka-python's 45 s: brokers (the embedded one especially) hold a group
    # join for up to half the session timeout, and a group keeps the timeout it was formed with.
    session_timeout_ms: int = Field(6000, ge=1000, le=300_000)
    # None: a fifth of the session timeout (Kafka advises at most a third).
    heartbeat_interval_ms: int | None = Field(None, ge=100)
    max_poll_records: int = Field(2000, ge=1, le=100_000)
    poll_timeout_ms: int = Field(500, ge=10, le=60_000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    partitions: int = Field(4, ge=1, description="partitions of topics the monitor creates")
    replication_factor: int = Field(1, ge=1)
    # State snapshot + offset commit this often: duplicates after a crash are bounded by it.
    commit_interval_s: float = Field(5.0, gt=0, le=3600)
    # At start, retry reaching the broker with back-off for this long before giving up.
    connect_timeout_s: float = Field(60.0, ge=0, le=3600)
    security: SecuritySettings = SecuritySettings()

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> KafkaSettings:
        hb = self.heartbeat_interval_ms
        if hb is not None and hb * 3 > self.session_timeout_ms:
            raise ValueError(
                f"kafka.heartbeat_interval_ms={hb} must be at most a third of "
                f"kafka.session_timeout_ms={self.session_timeout_ms}"
            )
        return self

    @property
    def heartbeat_ms(self) -> int:
        return self.heartbeat_interval_ms or max(100, self.session_timeout_ms // 5)


class ModelSettings(_Section):
    """Which model the daemon serves, and how ``monitor train`` builds one."""

    path: Path | None = Field(None, description="a saved model version directory")
    kind: Literal["lstm", "dense", "conv", "vae"] = "lstm"
    window: int = Field(64, ge=2, le=4096)
    seed: int = 0
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the variant's Config defaults"
    )


class DetectorSettings(_Section):
    """The streaming core's algorithm settings, each passed to its validating Config dataclass:
    ``monitor.windowing.WindowConfig``, ``monitor.thresholds.ThresholdConfig`` and
    ``monitor.episodes.EpisodeConfig`` (see their docstrings for keys and defaults)."""

    window: dict[str, Any] = Field(default_factory=dict)
    threshold: dict[str, Any] = Field(default_factory=dict)
    episodes: dict[str, Any] = Field(default_factory=dict)
    max_batch_windows: int = Field(4096, ge=1, description="windows per model call")


class RegistrySettings(_Section):
    """Where model versions live (a local path, or a volume shared by all daemons)."""

    path: Path = Path("model-registry")
    keep: int = Field(5, ge=1, description="versions kept besides the current one's lineage")


class RetrainSettings(_Section):
    """Scheduled retraining (``monitor retrain``, ``monitor run --retrain``)."""

    interval_s: float | None = Field(86_400.0, gt=0, description="run every this many seconds")
    cron: str | None = Field(None, description="or a 5-field crontab (UTC); wins over interval")
    span_s: float = Field(7 * 86_400.0, gt=0, description="how far back the training data goes")
    max_rows: int = Field(200_000, ge=100)
    min_normal_rows: int = Field(1_000, ge=10)
    max_false_alarm_increase: float = Field(0.005, ge=0, le=1)

    def policy(self) -> Any:
        """The RetrainPolicy these settings describe."""
        from datetime import timedelta

        from monitor.retraining import RetrainPolicy

        return RetrainPolicy(
            interval=timedelta(seconds=self.interval_s or 86_400.0),
            span=timedelta(seconds=self.span_s),
            max_rows=self.max_rows,
            min_normal_rows=self.min_normal_rows,
            max_false_alarm_increase=self.max_false_alarm_increase,
        )


class Settings(BaseSettings):
    """Everything the monitor can be told. See the README's configuration reference."""

    model_config = SettingsConfigDict(
        env_prefix="MONITOR_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated")
    source: str = Field("sensor-monitor", description="CloudEvents 'source' of published events")
    kafka: KafkaSettings = KafkaSettings()
    model: ModelSettings = ModelSettings()
    detector: DetectorSettings = DetectorSettings()
    registry: RegistrySettings = RegistrySettings()
    retrain: RetrainSettings = RetrainSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    http_host: str = Field("0.0.0.0", description="address of /metrics, /healthz, /readyz")
    http_port: int | None = Field(
        8000, ge=0, le=65535, description="0 = any free port; null = no HTTP endpoint"
    )
    shutdown_timeout_s: float = Field(
        30.0, gt=0, le=600, description="a graceful stop that takes longer is cut short"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _SETTINGS_FILE.get("path")
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


# The settings file is a per-call choice; pydantic-settings reads sources from the class, so the
# path is handed over here for the duration of one load_settings call.
_SETTINGS_FILE: dict[str, Path | None] = {"path": None}


def load_settings(file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings; raise ConfigError naming every bad key.

    ``overrides`` are the command line's values (nested sections as dicts); None values are
    dropped so that an absent flag does not hide the environment or the file.
    """
    path = Path(file) if file is not None else None
    if path is not None and not path.is_file():
        raise ConfigError(f"settings file {str(path)!r} does not exist")
    _SETTINGS_FILE["path"] = path
    try:
        return Settings(**_drop_none(overrides))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            + (f" (got {err['input']!r})" if err["type"] != "missing" else "")
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    finally:
        _SETTINGS_FILE["path"] = None


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out
