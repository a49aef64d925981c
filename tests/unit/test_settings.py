"""Settings: file < environment < command line, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.errors import ConfigError
from monitor.settings import load_settings


def test_defaults_are_valid_and_production_session_is_a_few_seconds() -> None:
    s = load_settings()
    assert s.kafka.session_timeout_ms == 6000
    assert (
        s.kafka.session_timeout_ms // 6 <= s.kafka.heartbeat_ms <= s.kafka.session_timeout_ms // 4
    )


def test_precedence_file_then_env_then_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "monitor.toml"
    f.write_text('bootstrap = "file:9092"\n[kafka]\ngroup_id = "from-file"\nevents_topic = "ev"\n')
    assert load_settings(f).bootstrap == "file:9092"
    monkeypatch.setenv("MONITOR_BOOTSTRAP", "env:9092")
    monkeypatch.setenv("MONITOR_KAFKA__GROUP_ID", "from-env")
    s = load_settings(f)
    assert (s.bootstrap, s.kafka.group_id, s.kafka.events_topic) == ("env:9092", "from-env", "ev")
    s = load_settings(f, bootstrap="cli:9092", kafka={"group_id": None})
    assert (s.bootstrap, s.kafka.group_id) == ("cli:9092", "from-env")


def test_unknown_key_is_named(tmp_path: Path) -> None:
    f = tmp_path / "monitor.toml"
    f.write_text("[kafka]\nsession_timeout = 5\n")
    with pytest.raises(ConfigError, match=r"kafka\.session_timeout"):
        load_settings(f)


def test_bad_value_is_named_with_the_value() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.session_timeout_ms.*500"):
        load_settings(kafka={"session_timeout_ms": 500})
    with pytest.raises(ConfigError, match="heartbeat_interval_ms"):
        load_settings(kafka={"session_timeout_ms": 3000, "heartbeat_interval_ms": 2000})
    with pytest.raises(ConfigError, match=r"retrain\.cron='every tuesday' is not a crontab"):
        load_settings(retrain={"cron": "every tuesday"})
    assert load_settings(retrain={"cron": "0 6 * * 1"}).retrain.policy().cron == "0 6 * * 1"


def test_missing_settings_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_a_dict_setting_that_is_not_json_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_DETECTOR__THRESHOLD", "{bad")
    with pytest.raises(ConfigError, match="detector"):
        load_settings()


def test_null_in_the_environment_sets_an_optional_setting_to_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MONITOR_RETRAIN__DRIFT_MAX_ANOMALOUS_SHARE", "null")
    monkeypatch.setenv("MONITOR_RETRAIN__NEW_NORMAL_AFTER_S", "null")
    settings = load_settings()
    assert settings.retrain.drift_trigger() is None
    assert settings.retrain.policy().new_normal_after is None


def test_a_dict_setting_is_merged_over_the_defaults_chosen_on_nab(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = load_settings()
    assert plain.detector.threshold == {"spot_q": 3e-3, "rebaseline_after": 50}
    assert plain.model.window == 16
    assert plain.model.hyperparameters == {"latent_size": 8, "hidden_size": 16, "max_steps": 16}
    monkeypatch.setenv("MONITOR_DETECTOR__THRESHOLD", '{"spot_q": 1e-4}')
    settings = load_settings(model={"hyperparameters": {"hidden_size": 8}})
    assert settings.detector.threshold == {"spot_q": 1e-4, "rebaseline_after": 50}
    assert settings.model.hyperparameters == {"latent_size": 8, "hidden_size": 8, "max_steps": 16}
    assert settings.detector.episodes == {"open_after": 2, "open_within": 2}


@pytest.mark.parametrize("kind", ["lstm", "dense", "conv", "vae"])
def test_every_kind_builds_from_the_default_hyperparameters(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NAB defaults are the LSTM's: another kind takes those its Config has (a dense model
    has no hidden_size), whether the kind comes from a file, the CLI or the environment."""
    import models

    monkeypatch.setenv("MONITOR_MODEL__KIND", kind)
    settings = load_settings().model
    expected = {
        "lstm": {"latent_size": 8, "hidden_size": 16, "max_steps": 16},
        "vae": {"latent_size": 8, "hidden_size": 16, "max_steps": 16},
        "dense": {"latent_size": 8},
        "conv": {"latent_size": 8},
    }
    assert settings.hyperparameters == expected[kind]
    model = models.build(
        kind, channels=("value",), window=settings.window, **settings.hyperparameters
    )
    assert model.kind == kind
    given = load_settings(model={"kind": kind, "hyperparameters": {"latent_size": 4}}).model
    assert given.hyperparameters == {**expected[kind], "latent_size": 4}


def test_the_weekly_rhythm_setting_keeps_its_week_when_one_key_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().detector.config().weekly_rhythm.period_s == 7 * 86_400.0
    monkeypatch.setenv("MONITOR_DETECTOR__WEEKLY_RHYTHM", '{"risk": 1e-3}')
    weekly = load_settings().detector.config().weekly_rhythm
    assert (weekly.period_s, weekly.slots, weekly.warm) == (604_800.0, 336, 2016)
    assert weekly.risk == 1e-3
    monkeypatch.setenv("MONITOR_DETECTOR__WEEKLY_RHYTHM", '{"enabled": false}')
    assert not load_settings().detector.config().weekly_rhythm.enabled
    monkeypatch.setenv("MONITOR_DETECTOR__WEEKLY_RHYTHM", '{"slots": 0}')
    with pytest.raises(ConfigError, match=r"detector\.weekly_rhythm"):
        load_settings().detector.config()


def test_healthz_staleness_defaults_from_the_session_timeout_unless_set() -> None:
    assert load_settings().stale_after_s == 60.0
    assert load_settings(kafka={"session_timeout_ms": 30_000}).stale_after_s == 120.0
    assert load_settings(http_stale_after_s=300).stale_after_s == 300.0
    with pytest.raises(ConfigError, match="http_stale_after_s"):
        load_settings(http_stale_after_s=0)
