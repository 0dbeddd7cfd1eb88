"""The hosts of a multi-host environment: addresses, per-host tables, [ssh] defaults, mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from lockstep.config.model import ProjectConfig


def config(source: dict[str, object], base: Path | None = None) -> ProjectConfig:
    return ProjectConfig.from_source({"repository": {"url": "local:repo"}, **source}, base)


def test_host_entries_take_what_they_do_not_say_from_ssh(tmp_path: Path) -> None:
    loaded = config(
        {
            "hosts": ["deploy@web1.example.com", "web2.example.com:2222", {"address": "web3", "project_dir": "/x"}],
            "ssh": {"user": "ops", "port": 2200, "project_dir": "/srv/shop", "known_hosts": "keys/known_hosts"},
        },
        tmp_path,
    )
    targets = loaded.host_targets()
    assert [(t.name, t.user, t.host, t.port, t.project_dir) for t in targets] == [
        ("deploy@web1.example.com", "deploy", "web1.example.com", 2200, "/srv/shop"),
        ("web2.example.com:2222", "ops", "web2.example.com", 2222, "/srv/shop"),
        ("web3", "ops", "web3", 2200, "/x"),
    ]
    assert loaded.ssh.known_hosts == tmp_path / "keys" / "known_hosts"


def test_two_project_directories_on_one_host_are_named_apart() -> None:
    loaded = config(
        {"hosts": [{"address": "10.0.0.5", "project_dir": "/srv/a"}, {"address": "10.0.0.5", "project_dir": "/srv/b"}]}
    )
    assert [target.name for target in loaded.host_targets()] == ["10.0.0.5:/srv/a", "10.0.0.5:/srv/b"]


def test_hosts_are_set_per_environment() -> None:
    loaded = config({"ssh": {"project_dir": "/srv/shop"}, "environments": {"production": {"hosts": ["web1", "web2"]}}})
    assert loaded.resolve("production").host_targets()[1].host == "web2"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"hosts": ["web1"]}, "no project_dir"),
        ({"hosts": ["web1", "web1"], "ssh": {"project_dir": "/srv"}}, "more than once"),
        ({"hosts": ["web1:http"], "ssh": {"project_dir": "/srv"}}, "[user@]host[:port]"),
        ({"hosts": [{"address": "web1", "dir": "/srv"}]}, "dir"),
    ],
)
def test_mistakes_are_refused_with_what_to_write(source: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[")):
        config(source)
