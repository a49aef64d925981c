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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from monitor.errors import ConfigError

__all__ = ["DetectorSettings", "KafkaSettings", "ModelSettings", "Settings", "load_settings"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """Topics and client behaviour. Client settings are turned into kafka-python arguments in
    exactly one place, ``monitor.kafka.clients``."""

    readings_topic: str = "sensor-readings"
    events_topic: str = "sensor-anomalies"
    dead_letter_topic: str = "sensor-readings-dead-letter"
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

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
