"""The README tells the truth: its settings reference is the settings model's, every command it
shows parses, every ``MONITOR_*`` variable it or ``deploy/`` mentions is a setting, and the
quick start's ``make`` targets exist."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_settings import EnvSettingsSource

from monitor.cli import build_parser, cmd_config
from monitor.settings import (
    REFERENCE_BEGIN,
    REFERENCE_END,
    Settings,
    load_settings,
    reference_markdown,
    settings_reference,
    update_readme,
)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
REGENERATE = ".venv/bin/python -m monitor.settings --write-readme README.md"
# Text outside the monitor's own code that names these paths: the README's module references.
PATH_PREFIXES = ("monitor/", "models/", "tests/", "bench/", "deploy/", "sample_streams/", ".ci/")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No MONITOR_* variable from the outside (CI sets MONITOR_BOOTSTRAP for the broker)."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("MONITOR_"):
            monkeypatch.delenv(name)
    return monkeypatch


# -- the settings reference -----------------------------------------------------------------------


def readme_block(text: str) -> str:
    """The text between the settings-reference markers (without the marker lines)."""
    begin, end = text.find(REFERENCE_BEGIN), text.find(REFERENCE_END)
    assert 0 <= begin < end, f"README.md lacks the {REFERENCE_BEGIN} ... {REFERENCE_END} markers"
    return text[begin + len(REFERENCE_BEGIN) : end].removeprefix("\n")


def test_readme_settings_reference_is_generated_from_the_model() -> None:
    block = readme_block(README.read_text(encoding="utf-8"))
    assert block == reference_markdown(), (
        f"README.md's settings reference is out of date: regenerate it with `{REGENERATE}` "
        "(`monitor config --reference` prints it)"
    )


def test_every_documented_key_is_in_the_readme_block() -> None:
    block = readme_block(README.read_text(encoding="utf-8"))
    missing = [row.key for row in settings_reference() if f"| `{row.key}` |" not in block]
    assert not missing, f"not in README.md: {missing}; regenerate with `{REGENERATE}`"


def test_every_setting_has_a_description() -> None:
    bare = [row.key for row in settings_reference() if not row.description.strip()]
    assert not bare, f"add description= to these fields in monitor/settings.py: {bare}"


def _leaf_paths(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _leaf_paths(annotation, (*path, name))
        else:
            yield (*path, name)


def test_reference_lists_every_field_of_the_model_once() -> None:
    rows = [row for row in settings_reference() if row.json_key is None]
    keys = [row.key for row in rows]
    assert len(keys) == len(set(keys))
    assert keys == [".".join(p) for p in _leaf_paths(Settings)]
    for row in rows:
        assert row.env == "MONITOR_" + "__".join(row.key.split(".")).upper()


def _get(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _nested(values: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


def test_scalar_defaults_round_trip_through_their_environment_variables(
    clean_env: pytest.MonkeyPatch,
) -> None:
    baseline = load_settings()
    rows = [r for r in settings_reference() if not r.json and r.default != "none"]
    assert len(rows) > 30
    for row in rows:
        clean_env.setenv(row.env, row.default)
    # Each variable lands on its own key: pydantic-settings reads them back into a nested dict.
    from_env = EnvSettingsSource(Settings)()
    for row in rows:
        assert str(_nested(from_env, row.key)).lower() == row.default.lower(), row.key
    loaded = load_settings()
    for row in rows:
        assert _get(loaded, row.key) == _get(baseline, row.key), row.key


def _value(default: str) -> Any:
    try:
        return json.loads(default)
    except json.JSONDecodeError:
        return default  # a plain string such as "spot"


def test_dict_key_defaults_are_accepted_by_the_dataclasses(clean_env: pytest.MonkeyPatch) -> None:
    import models

    objects: dict[str, dict[str, Any]] = {}
    rows = [r for r in settings_reference() if r.json_key is not None]
    for row in rows:
        if row.default != "none":
            objects.setdefault(row.env, {})[row.json_key] = _value(row.default)
    assert set(objects) == {
        "MONITOR_DETECTOR__WINDOW",
        "MONITOR_DETECTOR__THRESHOLD",
        "MONITOR_DETECTOR__EPISODES",
        "MONITOR_DETECTOR__RHYTHM",
        "MONITOR_DETECTOR__WEEKLY_RHYTHM",
        "MONITOR_DETECTOR__ROUTINE",
        "MONITOR_MODEL__HYPERPARAMETERS",
    }
    for env, value in objects.items():
        clean_env.setenv(env, json.dumps(value))
    s = load_settings()
    d = s.detector
    config = d.config()
    model = models.build(s.model.kind, window=s.model.window, **s.model.hyperparameters)
    # What the default settings run: the dataclasses' defaults with the settings' choices.
    clean_env.delenv("MONITOR_DETECTOR__WINDOW")
    clean_env.delenv("MONITOR_DETECTOR__THRESHOLD")
    clean_env.delenv("MONITOR_DETECTOR__EPISODES")
    clean_env.delenv("MONITOR_DETECTOR__RHYTHM")
    clean_env.delenv("MONITOR_DETECTOR__WEEKLY_RHYTHM")
    clean_env.delenv("MONITOR_DETECTOR__ROUTINE")
    clean_env.delenv("MONITOR_MODEL__HYPERPARAMETERS")
    plain = load_settings()
    plain_config = plain.detector.config()
    plain_model = models.build(
        plain.model.kind, window=plain.model.window, **plain.model.hyperparameters
    )
    defaults = {
        "detector.window": plain_config.window,
        "detector.threshold": plain_config.threshold,
        "detector.episodes": plain_config.episodes,
        "detector.rhythm": plain_config.rhythm,
        "detector.weekly_rhythm": plain_config.weekly_rhythm,
        "detector.routine": plain_config.routine,
        "model.hyperparameters": plain_model.config,
    }
    built = {
        "detector.window": config.window,
        "detector.threshold": config.threshold,
        "detector.episodes": config.episodes,
        "detector.rhythm": config.rhythm,
        "detector.weekly_rhythm": config.weekly_rhythm,
        "detector.routine": config.routine,
        "model.hyperparameters": model.config,
    }
    for row in rows:
        section = row.key.rsplit(".", 1)[0]
        name = row.json_key
        assert name is not None
        assert getattr(built[section], name) == getattr(defaults[section], name), row.key
        value = getattr(defaults[section], name)
        assert row.default == "none" or _value(row.default) == _jsonable(value), row.key


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def test_notes_name_real_keys() -> None:
    from monitor.settings import _NOTES

    keys = {row.key for row in settings_reference()}
    assert set(_NOTES) <= keys


def test_update_readme_rewrites_only_the_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{REFERENCE_BEGIN}\n| stale |\n{REFERENCE_END}\n\nafter\n")
    assert update_readme(readme, check=True)
    assert "| stale |" in readme.read_text()
    assert update_readme(readme)
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith(f"{REFERENCE_END}\n\nafter\n")
    assert readme_block(text) == reference_markdown()
    assert not update_readme(readme)
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="settings-reference"):
        update_readme(readme)


def test_monitor_config_reference_prints_the_table(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # cmd_config itself: main() would also install the process's log handler.
    args = build_parser().parse_args(["config", "--reference"])
    assert cmd_config(args, load_settings()) == 0
    assert capsys.readouterr().out == reference_markdown()


# -- commands -------------------------------------------------------------------------------------

_PROGRAMS = ("monitor", ".venv/bin/monitor")
_INLINE = re.compile(r"`([^`]+)`")
# Usage syntax rather than a command to run: optional parts, alternatives, placeholders.
_PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*(?:[=:][A-Z][A-Z0-9_]*)?|<[^>]*>|\.\.\.)$")


@dataclasses.dataclass(frozen=True)
class Shown:
    """A command line shown in a document: where, and whether it is usage syntax (or just names
    a subcommand in a sentence, "`monitor train` builds") rather than a command to run."""

    line: int
    text: str
    inline: bool = False

    @property
    def usage(self) -> bool:
        words = self.text.split()
        return (
            (self.inline and len(words) == 2)
            or any(c in self.text for c in "[]|")
            or any(_PLACEHOLDER.match(word) for word in words)
        )


def prose(text: str) -> str:
    """``text`` with the lines of fenced code blocks blanked (line numbers kept)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return "\n".join(lines)


def shown_commands(text: str) -> list[Shown]:
    """``monitor ...`` command lines of a Markdown text: lines of fenced code blocks, lines
    starting with ``$ monitor`` or ``.venv/bin/monitor``, and inline code spans."""
    shown: list[Shown] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = not fenced
            continue
        command = stripped.removeprefix("$ ").strip()
        if (fenced or stripped.startswith(("$ ", ".venv/bin/monitor"))) and command.startswith(
            tuple(p + " " for p in _PROGRAMS)
        ):
            shown.append(Shown(number, _uncomment(command)))
    # Inline spans may wrap across lines of a paragraph.
    plain = prose(text)
    for match in _INLINE.finditer(plain):
        span = " ".join(match.group(1).replace("\\|", "|").split())
        if span.split(" ", 1)[0] in _PROGRAMS and " " in span:
            shown.append(Shown(plain.count("\n", 0, match.start()) + 1, span, inline=True))
    return shown


def _uncomment(command: str) -> str:
    return " ".join(shlex.split(command, comments=True))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the monitor parser has no subcommands")


def parse_problem(command: str) -> str | None:
    """Why ``command`` (a concrete ``monitor ...`` line) does not parse, or None when it does."""
    argv = shlex.split(command)[1:]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        return err.getvalue().strip().splitlines()[-1] if err.getvalue() else f"exit {exc.code}"
    return None


def usage_problem(usage: str) -> str | None:
    """Why usage syntax such as ``monitor train CSV --out DIR [--kind lstm]`` names something
    that does not exist: the subcommand, an option, or a choice of a positional argument."""
    words = usage.replace("[", " ").replace("]", " ").replace("|", " ").split()
    subcommands = _subcommands(build_parser())
    if len(words) < 2 or words[1] not in subcommands:
        return f"no subcommand {words[1:2]}; expected one of {sorted(subcommands)}"
    sub = subcommands[words[1]]
    options = set(sub._option_string_actions)
    choices = {
        str(c) for a in sub._actions if not a.option_strings and a.choices for c in a.choices
    }
    after_option = False
    for word in words[2:]:
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            if option not in options:
                return f"monitor {words[1]} has no option {option}"
            after_option = True
            continue
        if choices and not after_option and not _PLACEHOLDER.match(word) and word not in choices:
            return f"monitor {words[1]}: {word!r} is not one of {sorted(choices)}"
        after_option = False
    return None


def problem(shown: Shown) -> str | None:
    return usage_problem(shown.text) if shown.usage else parse_problem(shown.text)


def test_helpers_find_and_reject_bad_commands() -> None:
    text = (
        "Run `monitor run --model DIR [--print-events]` or `monitor\nconfig`.\n\n"
        "```sh\nmonitor models rollback   # back one\nmake test\n```\n"
        "$ monitor retrain\n"
        "| `monitor models list\\|show V` | x |\n"
    )
    shown = shown_commands(text)
    assert [(s.line, s.text, s.usage) for s in shown] == [
        (5, "monitor models rollback", False),
        (8, "monitor retrain", False),
        (1, "monitor run --model DIR [--print-events]", True),
        (1, "monitor config", True),
        (9, "monitor models list|show V", True),
    ]
    assert all(problem(s) is None for s in shown)
    assert parse_problem("monitor rnu --model m") is not None
    assert parse_problem("monitor run --modle m") is not None
    assert parse_problem("monitor models lsit") is not None
    assert parse_problem("monitor train") is not None  # a command line lacking its arguments
    assert usage_problem("monitor train") is None  # ... but fine as a name in a sentence
    assert usage_problem("monitor trian") is not None
    assert usage_problem("monitor rnu [--print-events]") is not None
    assert usage_problem("monitor run --model DIR [--print-event]") is not None
    assert usage_problem("monitor models lsit|show V") is not None


def test_every_command_in_the_readme_exists() -> None:
    shown = shown_commands(README.read_text(encoding="utf-8"))
    assert len(shown) >= 15, "the README's commands were not found: is the extraction broken?"
    bad = [f"README.md:{s.line}: {s.text!r}: {p}" for s in shown if (p := problem(s))]
    assert not bad, "\n".join(bad)


def test_every_path_the_readme_names_exists() -> None:
    spans = _INLINE.findall(prose(README.read_text(encoding="utf-8")))
    paths = sorted({s for s in spans if s.startswith(PATH_PREFIXES) and " " not in s})
    assert "monitor/pipeline.py" in paths
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"README.md names paths that do not exist: {missing}"


# -- environment variables ------------------------------------------------------------------------

_ENV = re.compile(r"MONITOR_[A-Z0-9_]*[A-Z0-9]")


def env_problems(text: str, source: str, envs: set[str]) -> list[str]:
    """Mentions of MONITOR_* variables that are not settings. ``MONITOR_KAFKA__*`` or
    ``MONITOR_RETRAIN__...`` (a section followed by a wildcard) counts when it prefixes one."""
    problems = []
    for match in _ENV.finditer(text):
        name, after = match.group(), text[match.end() : match.end() + 5]
        wildcard = re.match(r"_*(\*|\.\.\.|…)", after) is not None
        if name in envs or (wildcard and any(e.startswith(name + "_") for e in envs)):
            continue
        line = text.count("\n", 0, match.start()) + 1
        problems.append(f"{source}:{line}: {name}")
    return problems


def test_env_helper_rejects_unknown_variables() -> None:
    envs = {"MONITOR_BOOTSTRAP", "MONITOR_KAFKA__GROUP_ID"}
    text = "MONITOR_BOOTSTRAP, MONITOR_KAFKA__*, MONITOR_* and MONITOR_KAFKA__GROUP"
    assert env_problems(text, "x", envs) == ["x:1: MONITOR_KAFKA__GROUP"]


def test_every_environment_variable_mentioned_is_a_setting() -> None:
    envs = {row.env for row in settings_reference()}
    assert "MONITOR_BOOTSTRAP" in envs  # the tests' external-broker switch is a real setting
    files = [README, *sorted(p for p in (ROOT / "deploy").rglob("*") if p.is_file())]
    problems = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        problems += env_problems(text, str(path.relative_to(ROOT)), envs)
    assert not problems, "not settings (see `monitor config --reference`):\n" + "\n".join(problems)


# -- the quick start ------------------------------------------------------------------------------


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.MULTILINE)}


def test_quick_start_make_commands_exist_and_ci_runs_the_tests() -> None:
    text = README.read_text(encoding="utf-8")
    quick = text[text.index("## Quick start") :]
    quick = quick[: quick.index("\n## ", 1)]
    block = quick[quick.index("```") :].split("\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    assert commands == [["make", "demo"], ["make", "test"]]
    targets = _make_targets()
    assert {"demo", "test"} <= targets
    # Any other `make X` the README shows must exist too.
    for span in _INLINE.findall(prose(text)):
        words = span.split()
        if words[:1] == ["make"]:
            assert set(w for w in words[1:] if "=" not in w) <= targets, span
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    calls = [shlex.split(line, comments=True) for line in ci.splitlines()]
    assert ["make", "test"] in calls, ".ci/run must run the README's test command, make test"
