"""What a client sees of a message: lists cut short, no filesystem path, at most 1 KiB."""

from __future__ import annotations

from plexserve.errors import MAX_MESSAGE_BYTES, client_message, name_list, without_paths


def test_name_lists_are_cut_after_ten_with_a_count() -> None:
    assert name_list(["a", "b"]) == "['a', 'b']"
    assert name_list([1, 2]) == "[1, 2]"
    assert name_list([]) == "[]"
    names = [f"n{i}" for i in range(10_000)]
    assert name_list(names) == (
        "['n0', 'n1', 'n2', 'n3', 'n4', 'n5', 'n6', 'n7', 'n8', 'n9', ... and 9990 more]"
    )


def test_absolute_paths_lose_all_but_their_last_part() -> None:
    assert (
        without_paths("Cannot parse file /srv/models/mlp/1/saved_model.pb.")
        == "Cannot parse file .../saved_model.pb."
    )
    assert without_paths("open '/etc/plexserve/server.yaml' failed") == (
        "open '.../server.yaml' failed"
    )
    # routes of the HTTP port, content types, relative paths and lone slashes stay
    kept = [
        "GET is not allowed on /v2/models/mlp/infer; use POST",
        "POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict",
        "send application/octet-stream",
        "<repository>/mlp/1/saved_model.pb",
        "mlp/1",
        "without '/', '\\\\' or a leading '.'",
    ]
    for text in kept:
        assert without_paths(text) == text


def test_client_messages_are_at_most_a_kib_of_utf8() -> None:
    assert client_message("short") == "short"
    long = "x" * 5000
    cut = client_message(long)
    assert len(cut.encode()) <= MAX_MESSAGE_BYTES and cut.endswith("... and 4016 more characters")
    wide = client_message("é" * 5000)  # two bytes each
    assert len(wide.encode()) <= MAX_MESSAGE_BYTES and "more characters" in wide
    assert "/home" not in client_message("at /home/alice/models/x.pb " + "y" * 2000)
