"""Model settings: layering and validation with errors naming the file, the field and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from plexserve.settings import BatchingSettings, ServerConfig, SettingsError, VersionPolicy


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_layers_apply_in_order_field_by_field(tmp_path: Path) -> None:
    config = write(
        tmp_path / "server.yaml",
        """
model_defaults:
  batching: {max_batch_size: 16, max_queue_delay_us: 100}
models:
  m:
    batching: {instances: 2}
    version_labels: {stable: 1}
""",
    )
    write(
        tmp_path / "repo" / "m" / "config.yaml",
        """
batching: {max_batch_size: 8}
version_policy: {latest: 2}
""",
    )
    settings = ServerConfig.load(config).model_settings(
        "m", tmp_path / "repo" / "m", BatchingSettings(), {"batching": {"max_queue_delay_us": 0}}
    )
    assert settings.batching == BatchingSettings(
        max_batch_size=8, max_queue_delay_us=0, instances=2
    )
    assert settings.version_policy == VersionPolicy("latest", count=2)
    assert settings.version_labels == {"stable": 1}
    assert settings.batching.queue_limit == 8 * 32
    assert settings.batching.warmup_sizes() == tuple(range(1, 9))


def test_allowed_batch_sizes_set_max_batch_size_and_padding() -> None:
    settings = ServerConfig().model_settings(
        "m",
        Path("/nonexistent"),
        BatchingSettings(),
        {"batching": {"allowed_batch_sizes": [1, 4, 16]}},
    )
    batching = settings.batching
    assert batching.max_batch_size == 16
    assert [batching.padded_size(r) for r in (1, 2, 4, 5, 16)] == [1, 4, 4, 16, 16]
    assert batching.warmup_sizes() == (1, 4, 16)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("batching: {max_batch_size: 0}", "batching.max_batch_size: 0 is not an integer >= 1"),
        ("batching: {max_batch_size: many}", "batching.max_batch_size: 'many' is not an integer"),
        ("batching: {enabled: maybe}", "batching.enabled: 'maybe' is not true or false"),
        (
            "batching: {max_queue_delay_us: -5}",
            "batching.max_queue_delay_us: -5 is not an integer >= 0",
        ),
        (
            "batching: {allowed_batch_sizes: [4, 2]}",
            "batching.allowed_batch_sizes: [4, 2] is not strictly increasing",
        ),
        ("batching: {colour: red}", "batching: unknown fields ['colour']"),
        (
            "batching: {allowed_batch_sizes: [1, 8], max_batch_size: 4}",
            "allowed_batch_sizes ends at 8 but batching.max_batch_size is 4",
        ),
        (
            "batching: {max_batch_size: 8, max_queue_size: 4}",
            "max_queue_size 4 is smaller than batching.max_batch_size 8",
        ),
        ("version_policy: {latest: 0}", "version_policy.latest: 0 is not an integer >= 1"),
        ("version_policy: newest", "version_policy: expected a mapping, got 'newest'"),
        ("version_labels: {stable: one}", "version_labels.stable: 'one' is not an integer >= 1"),
        ("warmup: 3", "warmup: 3 is not true or false"),
        ("batchin: {}", "unknown fields ['batchin']"),
        ("batching: [1, 2", "not valid YAML"),
        ("max_request_rows: 0", "max_request_rows: 0 is not an integer >= 1"),
        ("max_request_rows: lots", "max_request_rows: 'lots' is not an integer >= 1"),
        (
            "max_request_rows: 5000\nbatching: {max_batch_size: 8}",
            "max_request_rows 5000 is more than the model's queue holds (256 rows)",
        ),
    ],
)
def test_a_bad_config_yaml_names_the_file_field_and_value(
    tmp_path: Path, text: str, message: str
) -> None:
    config_file = write(tmp_path / "m" / "config.yaml", text)
    with pytest.raises(SettingsError) as caught:
        ServerConfig().model_settings("m", tmp_path / "m", BatchingSettings())
    assert message in str(caught.value)
    assert str(config_file) in str(caught.value) or "model 'm'" in str(caught.value)


def test_a_bad_server_config_names_the_file_and_section(tmp_path: Path) -> None:
    config = write(tmp_path / "server.yaml", "models:\n  m:\n    batching: {instances: 0}\n")
    with pytest.raises(SettingsError, match=r"server.yaml models.m: batching.instances: 0 is not"):
        ServerConfig.load(config)
    with pytest.raises(SettingsError, match="no such file"):
        ServerConfig.load(tmp_path / "absent.yaml")


def test_version_policies_select_versions() -> None:
    found = [1, 2, 5, 7]
    assert VersionPolicy().select(found) == [7]
    assert VersionPolicy("latest", count=2).select(found) == [5, 7]
    assert VersionPolicy("all").select(found) == found
    assert VersionPolicy("specific", versions=(2, 3, 7)).select(found) == [2, 7]


def test_max_request_rows_defaults_to_half_the_queue_and_follows_the_layers(
    tmp_path: Path,
) -> None:
    def rows(text: str = "", **flags: object) -> int:
        write(tmp_path / "m" / "config.yaml", text)
        settings = ServerConfig().model_settings("m", tmp_path / "m", BatchingSettings(), flags)
        return settings.max_request_rows

    assert rows() == 512  # max_batch_size 32: a queue of 1024 rows
    assert rows("batching: {max_batch_size: 8}") == 128
    assert rows("batching: {max_batch_size: 64, max_queue_size: 64}") == 64
    assert rows("max_request_rows: 10") == 10
    assert rows("max_request_rows: 900\nbatching: {max_queue_size: 1000}") == 900
    # the command line's layer wins over config.yaml, and with batching off nothing is queued
    assert rows("max_request_rows: 10", max_request_rows=20) == 20
    assert rows("max_request_rows: 5000\nbatching: {enabled: false}") == 5000
