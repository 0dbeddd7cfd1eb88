"""Database URLs as libpq reads them: percent-decoded hosts, query options, displays without secrets."""

from __future__ import annotations

from lockstep.databases.base import ServerLocation


def test_a_percent_encoded_socket_directory_keeps_its_case() -> None:
    location = ServerLocation.parse("postgresql://app@%2Fvar%2FRun%2Fpostgresql/shop")
    assert location.host == "/var/Run/postgresql"
    assert (location.user, location.port, location.database) == ("app", None, "shop")


def test_hosts_ports_and_ipv6() -> None:
    assert ServerLocation.parse("postgresql://u@[::1]:5433/db").host == "::1"
    assert ServerLocation.parse("postgresql://u@[::1]:5433/db").port == 5433
    assert ServerLocation.parse("mysql://root@Db.Example:3306/x").host == "Db.Example"
    assert ServerLocation.parse("postgresql:///db?host=/tmp").host is None


def test_options_are_kept_in_order_and_shown_without_passwords() -> None:
    location = ServerLocation.parse("postgresql://u@h/db?sslmode=require&application_name=a%20b&sslpassword=hush")
    assert location.options == (("sslmode", "require"), ("application_name", "a b"), ("sslpassword", "hush"))
    assert location.display() == "postgresql://u@h/db?sslmode=require&application_name=a b&sslpassword=***"
    assert "hush" not in location.display()


def test_redact_url_hides_passwords_in_options_as_well() -> None:
    from lockstep.databases.base import redact_url

    assert redact_url("postgresql://u:pw1@h/db") == "postgresql://u:***@h/db"
    redacted = redact_url("postgresql://u@h/db?sslmode=require&password=pw2&sslpassword=pw3")
    assert redacted == "postgresql://u@h/db?sslmode=require&password=***&sslpassword=***"
    assert redact_url("postgresql://u@h/db?sslmode=require") == "postgresql://u@h/db?sslmode=require"
