"""Settings: the document's defaults, strict validation with one-line errors, and derived values."""

from __future__ import annotations

import math

import pytest

from echokit.settings import (
    ENV_VARS,
    FaultSettings,
    SettingsError,
    UpstreamSettings,
    service_a_settings,
    service_b_settings,
    settings_table,
    worker_settings,
)


def load(service: str, env: dict[str, str]) -> object:
    return service_a_settings(env) if service == "A" else service_b_settings(env)


def test_service_a_defaults_are_the_documents_values() -> None:
    """With nothing set, A listens on 127.0.0.1:8080, logs text at INFO and injects no faults."""
    settings = service_a_settings({})
    assert settings.server.bind == "127.0.0.1:8080"
    assert settings.server.service == "service_a"
    assert (settings.server.log_level, settings.server.log_format) == ("INFO", "text")
    assert settings.faults == FaultSettings(0, 0, 0.0, 503)
    assert not settings.faults.enabled


def test_service_b_defaults_are_the_documents_values() -> None:
    """With nothing set, B listens on 127.0.0.1:8081 and calls http://127.0.0.1:8080 with a 2 s budget."""
    settings = service_b_settings({})
    assert settings.server.bind == "127.0.0.1:8081"
    assert settings.upstream.url == "http://127.0.0.1:8080"
    assert settings.upstream.timeout_s == 2.0
    assert settings.upstream == UpstreamSettings(
        "http://127.0.0.1:8080", 2.0, 0.5, 256, 3, 0.025, 0.25, 0.2, 3, 10.0, 5, 0.5, 20, 10.0, 3.0,
        5.0, "p2c_ewma", True, None, 0.1, 5, 5.0, 60.0, 50,
    )


def test_defaults_do_not_read_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit mapping is the only source: exported variables do not leak into it."""
    monkeypatch.setenv("SERVICE_A_PORT", "9999")
    assert service_a_settings({}).server.port == 8080


def test_process_environment_is_read_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a mapping, the real environment decides (how the services start)."""
    monkeypatch.setenv("SERVICE_B_PORT", "9998")
    assert service_b_settings().server.port == 9998


def test_blank_values_fall_back_to_defaults() -> None:
    """An empty or whitespace-only variable means "use the default", as if unset."""
    settings = service_b_settings({"SERVICE_B_PORT": "", "UPSTREAM_TIMEOUT_SECONDS": "   "})
    assert settings.server.port == 8081
    assert settings.upstream.timeout_s == 2.0


def test_service_a_url_follows_service_a_port() -> None:
    """Moving A to another port moves B's default target with it."""
    assert service_b_settings({"SERVICE_A_PORT": "9090"}).upstream.url == "http://127.0.0.1:9090"


def test_explicit_service_a_url_wins_and_loses_its_trailing_slash() -> None:
    """SERVICE_A_URL, when set, is used as given (minus a trailing slash), whatever SERVICE_A_PORT says."""
    settings = service_b_settings({"SERVICE_A_URL": "http://a.internal:7000/", "SERVICE_A_PORT": "9090"})
    assert settings.upstream.url == "http://a.internal:7000"


def test_values_are_parsed_to_their_units() -> None:
    """Milliseconds become seconds, words become lower or upper case as each setting expects."""
    settings = service_b_settings({
        "RETRY_BACKOFF_INITIAL_MS": "40", "RETRY_BACKOFF_MAX_MS": "400", "LOG_LEVEL": "debug",
        "LOG_FORMAT": "JSON", "LOG_PROBES": "off", "UPSTREAM_TIMEOUT_SECONDS": " 1.5 ",
    })
    assert settings.upstream.retry_backoff_initial_s == 0.04
    assert settings.upstream.retry_backoff_max_s == 0.4
    assert settings.upstream.timeout_s == 1.5
    server = settings.server
    assert (server.log_level, server.log_format, server.log_probes) == ("DEBUG", "json", False)


@pytest.mark.parametrize("text", ["1", "true", "YES", "On"])
def test_true_flags(text: str) -> None:
    """1/true/yes/on (any case) switch a flag on."""
    assert service_a_settings({"LOG_PROBES": text}).server.log_probes is True


def test_fault_settings_turn_injection_on() -> None:
    """Any nonzero FAULT_* value switches fault injection on."""
    assert service_a_settings({"FAULT_DELAY_MS": "10"}).faults.enabled
    assert service_a_settings({"FAULT_DELAY_JITTER_MS": "10"}).faults.enabled
    assert service_a_settings({"FAULT_ERROR_RATE": "0.1"}).faults.enabled


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after start-up."""
    settings = service_b_settings({})
    with pytest.raises(AttributeError):
        settings.upstream.timeout_s = 5.0  # type: ignore[misc]


BAD_VALUES = [
    ("A", "SERVICE_A_PORT", "0"),
    ("A", "SERVICE_A_PORT", "65536"),
    ("A", "SERVICE_A_PORT", "80.5"),
    ("A", "SERVICE_A_HOST", "bad host"),
    ("A", "SERVICE_A_HOST", "http://x/"),
    ("B", "SERVICE_B_PORT", "-1"),
    ("B", "SERVICE_A_URL", "https://127.0.0.1:8080"),
    ("B", "SERVICE_A_URL", "127.0.0.1:8080"),
    ("B", "SERVICE_A_URL", "http://127.0.0.1:99999"),
    ("B", "SERVICE_A_URL", "http://127.0.0.1:8080/?x=1"),
    ("B", "SERVICE_A_URL", "http://:8080"),
    ("A", "LOG_LEVEL", "VERBOSE"),
    ("B", "LOG_FORMAT", "xml"),
    ("A", "LOG_PROBES", "maybe"),
    ("A", "MAX_MSG_BYTES", "0"),
    ("A", "DRAIN_DELAY_SECONDS", "-1"),
    ("B", "DRAIN_TIMEOUT_SECONDS", "nan"),
    ("B", "UPSTREAM_TIMEOUT_SECONDS", "0"),
    ("B", "UPSTREAM_TIMEOUT_SECONDS", "inf"),
    ("B", "UPSTREAM_TIMEOUT_SECONDS", "2s"),
    ("B", "UPSTREAM_CONNECT_TIMEOUT_SECONDS", "0"),
    ("B", "UPSTREAM_MAX_IN_FLIGHT", "0"),
    ("B", "RETRY_ATTEMPTS", "0"),
    ("B", "RETRY_ATTEMPTS", "11"),
    ("B", "RETRY_BACKOFF_INITIAL_MS", "0.5"),
    ("B", "RETRY_BUDGET_RATIO", "1.5"),
    ("B", "BREAKER_FAILURE_THRESHOLD", "0"),
    ("B", "BREAKER_FAILURE_RATE", "0"),
    ("B", "BREAKER_RESET_SECONDS", "-3"),
    ("A", "FAULT_DELAY_MS", "-1"),
    ("A", "FAULT_DELAY_MS", "60001"),
    ("A", "FAULT_ERROR_RATE", "2"),
    ("A", "FAULT_ERROR_STATUS", "404"),
    ("A", "FAULT_ERROR_STATUS", "600"),
]


@pytest.mark.parametrize(("service", "name", "value"), BAD_VALUES)
def test_bad_values_raise_a_one_line_error_naming_the_variable(service: str, name: str, value: str) -> None:
    """A value a service cannot run with raises SettingsError whose single line names the variable."""
    with pytest.raises(SettingsError) as caught:
        load(service, {name: value})
    message = str(caught.value)
    assert message.startswith(f"{name} must be ")
    assert "\n" not in message


FREE_TEXT = {"PROMETHEUS_MULTIPROC_DIR", "OTEL_SERVICE_NAME"}  # any text is a directory or a name


@pytest.mark.parametrize("name", sorted(n for n in ENV_VARS if not n.endswith("_HOST") and n not in FREE_TEXT))
def test_every_declared_variable_is_read_and_rejects_garbage(name: str) -> None:
    """Every declared variable (hosts, paths, names aside) is read by a loader, which refuses 'garbage!' naming it."""
    messages = []
    for loader in (service_a_settings, service_b_settings, worker_settings):
        try:
            loader({name: "garbage!"})
        except SettingsError as exc:
            messages.append(str(exc))
    assert messages, f"{name} is declared but no settings loader reads it"
    # B reports a bad SERVICE_A_PORT through the URL derived from it, so "some loader names it" suffices.
    assert any(message.startswith(f"{name} must be ") for message in messages)
    assert all("\n" not in message for message in messages)


@pytest.mark.parametrize("name", sorted(n for n, v in ENV_VARS.items() if v.services in ("A", "B")))
def test_single_service_variables_are_read_by_that_service(name: str) -> None:
    """A variable declared for one service is validated when that service's settings are loaded."""
    with pytest.raises(SettingsError, match=f"^{name} must be "):
        load(ENV_VARS[name].services, {name: "garbage!" if not name.endswith("_HOST") else "bad host"})


def test_combined_fault_delay_is_capped() -> None:
    """FAULT_DELAY_MS + FAULT_DELAY_JITTER_MS over 60 s is refused even if each alone is allowed."""
    with pytest.raises(SettingsError, match=r"^FAULT_DELAY_MS \+ FAULT_DELAY_JITTER_MS must be at most 60000"):
        service_a_settings({"FAULT_DELAY_MS": "40000", "FAULT_DELAY_JITTER_MS": "30000"})


def test_settings_table_lists_every_variable_with_its_default() -> None:
    """The table used by the docs has one row per declared variable, defaults included."""
    rows = {row["name"]: row for row in settings_table()}
    assert set(rows) == set(ENV_VARS)
    assert rows["SERVICE_A_PORT"]["default"] == "8080"
    assert rows["UPSTREAM_TIMEOUT_SECONDS"]["default"] == "2"


def test_declared_defaults_are_themselves_valid() -> None:
    """Every default in ENV_VARS parses: settings built from the declared defaults equal the built-in ones."""
    defaults = {v.name: v.default for v in ENV_VARS.values() if "${" not in v.default}
    assert service_a_settings(defaults) == service_a_settings({})
    assert service_b_settings(defaults) == service_b_settings({})
    assert not math.isnan(service_b_settings(defaults).upstream.breaker_failure_rate)


@pytest.mark.parametrize("value", ["", "none", "none,none", " None , none "])
def test_tracing_is_off_unless_an_exporter_is_named(value: str) -> None:
    """OTEL_TRACES_EXPORTER unset, none or a list of nothing but none means tracing off."""
    tracing = service_a_settings({"OTEL_TRACES_EXPORTER": value}).server.tracing
    assert tracing.exporters == ()
    assert not tracing.enabled


def test_tracing_exporters_are_a_list_and_the_sdk_switch_wins() -> None:
    """console and otlp may be listed together; OTEL_SDK_DISABLED=true turns tracing off anyway."""
    tracing = service_b_settings({"OTEL_TRACES_EXPORTER": "Console, otlp,none"}).server.tracing
    assert tracing.exporters == ("console", "otlp")
    assert tracing.enabled
    disabled = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    assert not service_b_settings(disabled).server.tracing.enabled


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
    ],
)
def test_tracing_settings_refuse_what_is_not_installed(env: dict[str, str], named: str) -> None:
    """An exporter or OTLP protocol this project does not install stops start-up naming the variable."""
    with pytest.raises(SettingsError, match=f"^{named} must be "):
        service_a_settings(env)


def test_metrics_directory_comes_from_the_settings() -> None:
    """PROMETHEUS_MULTIPROC_DIR is read with the other settings; unset means single-process metrics."""
    assert service_a_settings({}).server.metrics_dir is None
    assert service_a_settings({"PROMETHEUS_MULTIPROC_DIR": "/tmp/m"}).server.metrics_dir == "/tmp/m"
