"""One typed settings model for every command: TOML file + ``MONITOR_*`` environment + CLI.

Precedence, highest first: command-line flags, environment variables, the settings file, defaults.
Nested keys use ``__`` in the environment: ``detector.threshold`` is ``MONITOR_DETECTOR__THRESHOLD``
(as JSON). The broker address is the one setting everyone sets, so it sits at the top:
``MONITOR_BOOTSTRAP``. Unknown keys are an error that names the key.

Settings are built once in ``monitor.cli`` and passed down; the core never reads the environment.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from monitor.errors import ConfigError
from monitor.rhythm import WEEKLY

__all__ = [
    "REFERENCE_BEGIN",
    "REFERENCE_END",
    "DetectorSettings",
    "KafkaSettings",
    "ModelSettings",
    "RegistrySettings",
    "RetrainSettings",
    "SettingDoc",
    "Settings",
    "load_settings",
    "reference_markdown",
    "settings_reference",
    "update_readme",
]


# Defaults chosen on NAB (bench/nab_sweep.py, README "Evaluation (NAB subset)"). A dict given for
# these settings is merged over them, so setting one key keeps the others.
# max_steps 16 leaves the default window (16) one reading a step; a longer window is read in
# frames, at about the same detection on NAB and a fraction of the cost (README "Performance").
_NAB_HYPERPARAMETERS: dict[str, Any] = {"latent_size": 8, "hidden_size": 16, "max_steps": 16}
_NAB_THRESHOLD: dict[str, Any] = {"spot_q": 3e-3, "rebaseline_after": 50}
_NAB_EPISODES: dict[str, Any] = {"open_after": 2, "open_within": 2}
_WEEKLY: dict[str, Any] = dict(WEEKLY)


def _over(default: dict[str, Any], value: Any) -> Any:
    """``value`` merged over ``default`` when it is a dict (else left for validation)."""
    return {**default, **value} if isinstance(value, dict) else value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecuritySettings(_Section):
    """Kafka transport security, passed to kafka-python as is (``monitor.kafka.clients``).

    Secrets come from the environment (``MONITOR_KAFKA__SECURITY__SASL_PASSWORD``) or from a file
    (``sasl_password_file``, e.g. a mounted Kubernetes secret); they are never logged and
    ``monitor config`` masks them.
    """

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism; required with a SASL_* protocol"
    )
    sasl_username: str | None = Field(
        None, description="SASL user name; required with a SASL_* protocol"
    )
    sasl_password: SecretStr | None = Field(
        None, description="SASL password; with a SASL_* protocol, this or sasl_password_file"
    )
    sasl_password_file: Path | None = Field(
        None, description="file holding the SASL password (e.g. a mounted Kubernetes secret)"
    )
    ssl_cafile: Path | None = Field(
        None, description="CA certificate file (PEM) that verifies the broker"
    )
    ssl_certfile: Path | None = Field(
        None, description="client certificate file (PEM), for mutual TLS"
    )
    ssl_keyfile: Path | None = Field(None, description="client private key file (PEM)")
    ssl_password: SecretStr | None = Field(None, description="password of the client private key")
    ssl_password_file: Path | None = Field(
        None, description="file holding the client key's password"
    )
    ssl_check_hostname: bool = Field(
        True, description="check that the broker's certificate matches its host name"
    )

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

    readings_topic: str = Field(
        "sensor-readings", description="topic the sensor readings are consumed from"
    )
    events_topic: str = Field(
        "sensor-anomalies", description="topic the anomaly events (CloudEvents) go to"
    )
    dead_letter_topic: str = Field(
        "sensor-readings-dead-letter",
        description="topic of the readings that cannot be scored, with a reason header",
    )
    state_topic: str = Field(
        "sensor-monitor-state", description="compacted topic of per-partition detector snapshots"
    )
    models_topic: str = Field(
        "sensor-monitor-models", description="compacted topic announcing promoted models"
    )
    group_id: str = Field(
        "sensor-monitor",
        description="consumer group; daemons in one group share the readings partitions",
    )
    client_id: str = Field(
        "sensor-monitor", description="Kafka client id (seen in broker logs and metrics)"
    )
    session_timeout_ms: int = Field(
        6000,
        ge=1000,
        le=300_000,
        description="consumer group session timeout; a few seconds, not kafka-python's 45 s: "
        "brokers (the embedded one especially) hold a group join for up to half of it, and a "
        "group keeps the timeout it was formed with",
    )
    heartbeat_interval_ms: int | None = Field(
        None,
        ge=100,
        description="consumer heartbeat; none: a fifth of the session timeout (Kafka advises "
        "at most a third)",
    )
    max_poll_records: int = Field(
        2000, ge=1, le=100_000, description="records per poll: the largest batch"
    )
    poll_timeout_ms: int = Field(
        500, ge=10, le=60_000, description="how long one poll waits for records"
    )
    fetch_max_wait_ms: int = Field(
        100,
        ge=0,
        le=60_000,
        description="how long the broker may hold a fetch while it has no new reading for it; "
        "kafka-python's default 500 ms is added to the latency of a reading that arrives while "
        "a fetch waits",
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a consumer group without committed offsets starts"
    )
    partitions: int = Field(4, ge=1, description="partitions of topics the monitor creates")
    replication_factor: int = Field(
        1, ge=1, description="replication factor of topics the monitor creates"
    )
    commit_interval_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="state snapshot + offset commit this often; bounds the duplicates after "
        "a crash. Stretched while a checkpoint would take over a tenth of the loop's time "
        "(thousands of entities per daemon): see `monitor_checkpoint_seconds`",
    )
    connect_timeout_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="at start, retry reaching the broker with back-off for this long before "
        "giving up",
    )
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

    path: Path | None = Field(
        None,
        description="a saved model version directory to serve; none: the registry's current "
        "version",
    )
    kind: Literal["lstm", "dense", "conv", "vae"] = Field(
        "lstm", description="autoencoder variant that `monitor train` builds"
    )
    torch_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="torch threads for scoring and retraining (1: several collapse on small "
        "shared machines; bench/)",
    )
    scoring_thread: bool = Field(
        True,
        description="the daemon scores a big batch's windows on a thread of its own, while the "
        "next readings are decoded and windowed (uses a second core; off when each daemon has "
        "one core to itself)",
    )
    window: int = Field(
        16,
        ge=2,
        le=4096,
        description="window length in steps of the models trained; a served model brings its own "
        "(16: chosen on NAB, see the README)",
    )
    seed: int = Field(0, description="random seed of training")
    hyperparameters: dict[str, Any] = Field(
        default_factory=lambda: dict(_NAB_HYPERPARAMETERS),
        description="overrides of the variant's Config defaults (keys given are merged over the "
        "default, chosen on NAB for lstm; another kind takes the keys of it that its Config has)",
    )

    @model_validator(mode="before")
    @classmethod
    def _nab_defaults_the_kind_has(cls, data: Any) -> Any:
        """The hyper-parameters chosen on NAB (for the LSTM) that the kind's Config has, under the
        keys given: a dense model takes the latent size but has no ``hidden_size``."""
        if not isinstance(data, dict):
            return data
        from models import KINDS

        kind = data.get("kind", "lstm")
        given = data.get("hyperparameters")
        if kind not in KINDS:
            return data  # the kind's own validation says what is wrong
        known = {f.name for f in dataclasses.fields(KINDS[kind].config_class)}
        defaults = {k: v for k, v in _NAB_HYPERPARAMETERS.items() if k in known}
        return {**data, "hyperparameters": _over(defaults, {} if given is None else given)}


class DetectorSettings(_Section):
    """The streaming core's algorithm settings, each passed to its validating Config dataclass:
    ``monitor.windowing.WindowConfig``, ``monitor.thresholds.ThresholdConfig``,
    ``monitor.routine.RoutineConfig``, ``monitor.rhythm.RhythmConfig`` and
    ``monitor.episodes.EpisodeConfig`` (see their docstrings for keys and defaults)."""

    window: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the windowing defaults (WindowConfig)"
    )
    threshold: dict[str, Any] = Field(
        default_factory=lambda: dict(_NAB_THRESHOLD),
        description="overrides of the adaptive threshold defaults (ThresholdConfig; keys given "
        "are merged over the default, chosen on NAB)",
    )
    episodes: dict[str, Any] = Field(
        default_factory=lambda: dict(_NAB_EPISODES),
        description="overrides of the alarm episode defaults (EpisodeConfig; keys given are "
        "merged over the default, chosen on NAB)",
    )
    routine: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of the routine's defaults (RoutineConfig: an exceedance within "
        "what the error usually reaches at this time of day is judged normal; "
        '{"enabled": false} turns it off)',
    )
    rhythm: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of the time-of-day rhythm signal defaults (RhythmConfig; "
        '{"enabled": false} turns it off)',
    )
    weekly_rhythm: dict[str, Any] = Field(
        default_factory=lambda: dict(_WEEKLY),
        description="overrides of the weekly rhythm signal defaults (the rhythm over a week, "
        "RhythmConfig; keys given are merged over the default, a week of 30-minute slots; "
        '{"enabled": false} turns it off)',
    )
    max_batch_windows: int = Field(4096, ge=1, description="windows per model call")

    _merge_threshold = field_validator("threshold", mode="before")(
        lambda value: _over(_NAB_THRESHOLD, value)
    )
    _merge_episodes = field_validator("episodes", mode="before")(
        lambda value: _over(_NAB_EPISODES, value)
    )
    _merge_weekly_rhythm = field_validator("weekly_rhythm", mode="before")(
        lambda value: _over(_WEEKLY, value)
    )

    def config(self) -> Any:
        """The :class:`monitor.pipeline.DetectorConfig` these settings describe (validated)."""
        from monitor.pipeline import DetectorConfig

        return DetectorConfig.from_dicts(
            window=self.window,
            threshold=self.threshold,
            episodes=self.episodes,
            rhythm=self.rhythm,
            weekly_rhythm=self.weekly_rhythm,
            routine=self.routine,
            max_batch_windows=self.max_batch_windows,
        )


class RegistrySettings(_Section):
    """Where model versions live (a local path, or a volume shared by all daemons)."""

    path: Path = Field(
        Path("model-registry"),
        description="directory of the model versions (shared by all daemons and retrain jobs)",
    )
    keep: int = Field(5, ge=1, description="versions kept besides the current one's lineage")


class RetrainSettings(_Section):
    """Scheduled retraining (``monitor retrain``, ``monitor run --retrain``)."""

    interval_s: float | None = Field(86_400.0, gt=0, description="run every this many seconds")
    cron: str | None = Field(None, description="or a 5-field crontab (UTC); wins over interval")
    span_s: float = Field(7 * 86_400.0, gt=0, description="how far back the training data goes")
    max_rows: int = Field(
        200_000, ge=100, description="at most this many readings are read back (the newest)"
    )
    min_normal_rows: int = Field(
        1_000, ge=10, description="fewer normal rows than this and the round is skipped"
    )
    max_false_alarm_increase: float = Field(
        0.005,
        ge=0,
        le=1,
        description="the challenger's false-alarm rate may exceed the champion's by at most "
        "this (absolute) on held-out recent data",
    )
    episode_margin_s: float = Field(
        3_600.0, ge=0, description="rows this close to an episode are not normal (>= a window)"
    )
    new_normal_after_s: float | None = Field(
        12 * 3_600.0,
        gt=0,
        description="an episode longer than this is a regime change: later rows are normal",
    )

    drift_max_anomalous_share: float | None = Field(
        0.05,
        gt=0,
        le=1,
        description="early retrain when a block's share of alarming windows exceeds this "
        "(None: no drift trigger)",
    )
    drift_max_score_ratio: float = Field(
        3.0, gt=0, description="... or its median score exceeds this times the validation median"
    )
    drift_block_windows: int = Field(1_000, ge=1, description="windows per drift block")
    drift_patience: int = Field(3, ge=1, description="drifting blocks in a row before retraining")

    @model_validator(mode="after")
    def _valid_cron(self) -> RetrainSettings:
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.cron)
            except ValueError as exc:
                raise ValueError(f"retrain.cron={self.cron!r} is not a crontab: {exc}") from exc
        return self

    def drift_trigger(self, validation_scores: Any = ()) -> Any:
        """The DriftTrigger these settings describe, or None when it is off."""
        from monitor.retraining import DriftTrigger

        if self.drift_max_anomalous_share is None:
            return None
        return DriftTrigger(
            block_windows=self.drift_block_windows,
            max_anomalous_share=self.drift_max_anomalous_share,
            max_score_ratio=self.drift_max_score_ratio,
            patience=self.drift_patience,
            validation_scores=validation_scores,
        )

    def policy(self) -> Any:
        """The RetrainPolicy these settings describe."""
        from datetime import timedelta

        from monitor.retraining import RetrainPolicy

        return RetrainPolicy(
            interval=timedelta(seconds=self.interval_s or 86_400.0),
            cron=self.cron,
            span=timedelta(seconds=self.span_s),
            max_rows=self.max_rows,
            min_normal_rows=self.min_normal_rows,
            max_false_alarm_increase=self.max_false_alarm_increase,
            episode_margin=timedelta(seconds=self.episode_margin_s),
            new_normal_after=(
                None
                if self.new_normal_after_s is None
                else timedelta(seconds=self.new_normal_after_s)
            ),
        )


class Settings(BaseSettings):
    """Everything the monitor can be told. See the README's configuration reference."""

    model_config = SettingsConfigDict(
        env_prefix="MONITOR_",
        env_nested_delimiter="__",
        env_parse_none_str="null",  # MONITOR_RETRAIN__CRON=null etc. sets a setting to None
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one object per line, secrets redacted; text: for people"
    )
    http_host: str = Field("0.0.0.0", description="address of /metrics, /healthz, /readyz")
    http_port: int | None = Field(
        8000,
        ge=0,
        le=65535,
        description="port of /metrics, /healthz, /readyz; 0 = any free port; null = no HTTP "
        "endpoint",
    )
    http_stale_after_s: float | None = Field(
        None,
        gt=0,
        description="/healthz answers 503 after this long without a loop beat (null: the larger "
        "of 60 s and 4 session timeouts); raise it when one batch can take longer",
    )
    shutdown_timeout_s: float = Field(
        30.0, gt=0, le=600, description="a graceful stop that takes longer is cut short"
    )

    @property
    def stale_after_s(self) -> float:
        """When ``/healthz`` calls the loop stale (see ``http_stale_after_s``)."""
        if self.http_stale_after_s is not None:
            return self.http_stale_after_s
        return max(60.0, 4 * self.kafka.session_timeout_ms / 1000)

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
    except SettingsError as exc:  # e.g. a dict setting's environment variable is not JSON
        raise ConfigError(f"invalid settings: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {str(path)!r} is not valid TOML: {exc}") from None
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


# -- the settings reference: the README's table, ``monitor config --reference`` -------------------

REFERENCE_BEGIN = "<!-- settings-reference:begin -->"
REFERENCE_END = "<!-- settings-reference:end -->"

# What a key's own docstring cannot say, because it is true only of how the settings are used.
_NOTES = {
    "detector.window.length": "when serving, replaced by the model's window length",
    "detector.window.channels": "when serving, the model's channels; if given, they must match",
}


@dataclasses.dataclass(frozen=True)
class SettingDoc:
    """One row of the settings reference.

    Attributes:
        key: dotted path as in the settings file, e.g. ``kafka.security.sasl_username``.
        env: the environment variable that sets it, e.g.
            ``MONITOR_KAFKA__SECURITY__SASL_USERNAME``; for a key inside a dict-valued setting
            (``detector.threshold.spot_q``), the dict's variable, which holds a JSON object.
        default: the default for people to read: ``none`` for None, secrets masked, paths as
            strings, booleans ``true``/``false``, dicts and tuples as JSON.
        description: what it is, with the allowed values of a choice.
        json: the variable holds JSON (a dict-valued setting, or a key of one).
        json_key: for a key inside a dict-valued setting, its name in the JSON object.
    """

    key: str
    env: str
    default: str
    description: str
    json: bool = False
    json_key: str | None = None


def settings_reference() -> list[SettingDoc]:
    """Every setting, in the model's order, from ``Settings.model_fields``.

    Nested sections are walked into; a dict-valued setting gets its own row and then one row
    per key of the dataclass it feeds (``detector.window`` -> ``monitor.windowing.WindowConfig``,
    ``detector.threshold`` -> ``ThresholdConfig``, ``detector.episodes`` -> ``EpisodeConfig``,
    ``model.hyperparameters`` -> the Config of the default ``model.kind``), with the key's
    default and the description from the dataclass's docstring (``Parameters:`` or
    ``Attributes:`` section) or, where it has none, a pointer to the class.

    >>> rows = {row.key: row for row in settings_reference()}
    >>> rows["kafka.security.sasl_username"].env
    'MONITOR_KAFKA__SECURITY__SASL_USERNAME'
    >>> row = rows["detector.threshold.spot_q"]
    >>> (row.env, row.json_key)
    ('MONITOR_DETECTOR__THRESHOLD', 'spot_q')
    >>> rows["model.path"].default
    'none'
    """
    rows: list[SettingDoc] = []
    _walk_model(Settings, (), rows, _dict_sections())
    return rows


def reference_markdown() -> str:
    """The settings reference as a Markdown table (the README's, between its marker comments)."""
    lines = ["| setting | environment | default | what it is |", "|---|---|---|---|"]
    for row in settings_reference():
        env = f"`{row.env}`"
        if row.json_key is not None:
            env += f" (JSON, key `{row.json_key}`)"
        elif row.json:
            env += " (JSON)"
        default = row.default if row.default == "none" else _code(row.default)
        cells = (f"`{row.key}`", env, default, row.description)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def update_readme(path: str | Path, *, check: bool = False) -> bool:
    """Rewrite the settings reference between the marker comments of ``path`` (the README).

    Returns whether the block was out of date; with ``check`` nothing is written. Raises
    ValueError when the file lacks the markers. Same as
    ``python -m monitor.settings --write-readme README.md``.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    begin, end = text.find(REFERENCE_BEGIN), text.find(REFERENCE_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{path}: no {REFERENCE_BEGIN} ... {REFERENCE_END} block to update")
    head = text[: begin + len(REFERENCE_BEGIN)] + "\n"
    new = head + reference_markdown() + text[end:]
    if new == text:
        return False
    if not check:
        path.write_text(new, encoding="utf-8")
    return True


def _dict_sections() -> dict[str, tuple[type, frozenset[str], str]]:
    """Dict-valued settings -> (the dataclass behind them, keys not to list, a note)."""
    from models import KINDS
    from monitor.episodes import EpisodeConfig
    from monitor.rhythm import RhythmConfig
    from monitor.routine import RoutineConfig
    from monitor.thresholds import ThresholdConfig
    from monitor.windowing import WindowConfig

    kind = ModelSettings.model_fields["kind"].default
    config = KINDS[kind].config_class
    # catalog.build sets the window from model.window; a "window" key is an error there.
    model_note = (
        f"the rows below are the keys of the default kind {kind} (`{_name(config)}`); other "
        "kinds have their own Config in `models/`; the window is `model.window`"
    )
    return {
        "model.hyperparameters": (config, frozenset({"window"}), model_note),
        "detector.window": (WindowConfig, frozenset(), ""),
        "detector.threshold": (ThresholdConfig, frozenset(), ""),
        "detector.routine": (RoutineConfig, frozenset(), ""),
        "detector.rhythm": (RhythmConfig, frozenset(), ""),
        "detector.weekly_rhythm": (RhythmConfig, frozenset(), ""),
        "detector.episodes": (EpisodeConfig, frozenset(), ""),
    }


def _walk_model(
    model: type[BaseModel],
    path: tuple[str, ...],
    rows: list[SettingDoc],
    sections: dict[str, tuple[type, frozenset[str], str]],
) -> None:
    prefix = Settings.model_config.get("env_prefix", "")
    delimiter = Settings.model_config.get("env_nested_delimiter") or "__"
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _walk_model(annotation, (*path, name), rows, sections)
            continue
        key = ".".join((*path, name))
        env = prefix + delimiter.join((*path, name)).upper()
        default = field.get_default(call_default_factory=True)
        parts = [field.description or ""]
        choices = _choices(annotation)
        if choices:
            parts.append("one of " + ", ".join(f"`{c}`" for c in choices))
        if _is_secret(annotation):
            parts.append("secret: never logged, masked by `monitor config`")
        is_dict = typing.get_origin(annotation) is dict or annotation is dict
        section = sections.get(key) if is_dict else None
        if section is not None:
            parts.append(section[2] or f"the rows below are the keys of `{_name(section[0])}`")
        rows.append(SettingDoc(key, env, _render(default), _join(parts), json=is_dict))
        if section is not None:
            rows.extend(_dataclass_rows(key, env, *section[:2], dict(default or {})))


def _dataclass_rows(
    key: str, env: str, cls: type, skip: frozenset[str], given: dict[str, Any]
) -> list[SettingDoc]:
    """One row per field of ``cls``; a key the setting's default dict ``given`` sets shows that
    value (what the monitor runs with) and the dataclass's own default in its text."""
    docs = _field_docs(cls)
    own = set(vars(cls).get("__annotations__", {}))
    inherited = len([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]) > 1
    rows = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # pragma: no cover - every Config field has a default
            default = None
        parts = [docs.get(f.name) or f"see `{_name(cls)}`"]
        if f.name in given:
            parts.append(f"default chosen on NAB; `{cls.__name__}` alone has `{_render(default)}`")
            default = given[f.name]
        if inherited and f.name in own:
            parts.append(f"{getattr(cls, 'kind', '') or cls.__name__} only")
        parts.append(_NOTES.get(f"{key}.{f.name}", ""))
        rows.append(
            SettingDoc(
                f"{key}.{f.name}", env, _render(default), _join(parts), json=True, json_key=f.name
            )
        )
    return rows


_SECTION = re.compile(r"^(\s*)(Parameters|Attributes|Args):\s*$")
_ITEM = re.compile(r"^(\w+)(?::\s+|:$|\s{2,})(.*)$")
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def _field_docs(cls: type) -> dict[str, str]:
    """Field name -> text, from the ``Parameters:``/``Attributes:`` sections of ``cls`` and its
    dataclass bases (the subclass wins). Lines indented deeper continue an item; an item line
    whose first word is not a field ends nothing and is ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for klass in cls.__mro__:
        doc = vars(klass).get("__doc__") if dataclasses.is_dataclass(klass) else None
        for name, text in _docstring_items(doc or "").items():
            if name in names and name not in out:
                out[name] = text
    return out


def _docstring_items(doc: str) -> dict[str, str]:
    items: dict[str, list[str]] = {}
    lines = doc.expandtabs().splitlines()
    i = 0
    while i < len(lines):
        header = _SECTION.match(lines[i])
        i += 1
        if header is None:
            continue
        item_indent: int | None = None
        current: list[str] | None = None
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                i += 1
                continue
            indent = len(line) - len(line.lstrip())
            if indent <= len(header.group(1)):
                break  # the section ended
            if item_indent is None:
                item_indent = indent
            if indent < item_indent:
                break
            match = _ITEM.match(line.strip()) if indent == item_indent else None
            if match is not None:
                current = items.setdefault(match.group(1), [])
                current.append(match.group(2))
            elif current is not None and indent > item_indent:
                current.append(line.strip())
            else:
                current = None
            i += 1
    return {name: _clean(" ".join(parts)) for name, parts in items.items()}


def _clean(text: str) -> str:
    text = _ROLE.sub(r"`\1`", text).replace("``", "`")
    return " ".join(text.split()).rstrip(".")


def _choices(annotation: Any) -> tuple[str, ...]:
    if typing.get_origin(annotation) is Literal:
        return tuple(str(a) for a in typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            return tuple(str(a) for a in typing.get_args(arg))
    return ()


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def _render(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str) and value.lower() in ("none", "null", ""):
        return json.dumps(value)  # not to be read as None
    if isinstance(value, SecretStr):
        return "********"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _code(text: str) -> str:
    return f"``{text}``" if "`" in text else f"`{text}`"


def _join(parts: list[str]) -> str:
    return "; ".join(p.strip() for p in parts if p and p.strip())


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m monitor.settings",
        description="Print the settings reference (Markdown), or update the README's copy.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write-readme", type=Path, metavar="README", help="rewrite its block")
    group.add_argument(
        "--check-readme", type=Path, metavar="README", help="exit 1 if its block is out of date"
    )
    args = parser.parse_args(argv)
    if args.write_readme is not None:
        changed = update_readme(args.write_readme)
        print(f"{args.write_readme}: {'updated' if changed else 'already up to date'}")
        return 0
    if args.check_readme is not None:
        if update_readme(args.check_readme, check=True):
            print(
                f"{args.check_readme}: settings reference out of date; run "
                f"python -m monitor.settings --write-readme {args.check_readme}"
            )
            return 1
        return 0
    print(reference_markdown(), end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
