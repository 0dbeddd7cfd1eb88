"""The Redactor: every secret pattern, known values longest first, documents, and speed on large output."""

from __future__ import annotations

import hashlib
import time

import pytest

from lockstep.redaction import Redactor, is_secret_name, secret_file_values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://shop:s3cr%2Ft@db:5432/shop", "postgresql://shop:***@db:5432/shop"),
        (
            "mysql://root:hunter2@127.0.0.1/x and redis://:onlypass@cache:6379",
            "mysql://root:***@127.0.0.1/x and redis://:***@cache:6379",
        ),
        ("http://host:8080/path@here", "http://host:8080/path@here"),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "Authorization: ***"),
        ("curl -H 'Authorization: Basic Zm9vOmJhcg==' https://x", "curl -H 'Authorization: ***' https://x"),
        ('{"authorization": "token abc"}', '{"authorization": "***"}'),
        ("Proxy-Authorization: Basic abc", "Proxy-Authorization: ***"),
        ("LOCKSTEP_PASSWORD=correct-horse", "LOCKSTEP_PASSWORD=***"),
        ("export DB_PASSWORD='two words'", "export DB_PASSWORD='***'"),
        ("AWS_SECRET_ACCESS_KEY=AKIAabc123 next", "AWS_SECRET_ACCESS_KEY=*** next"),
        ("STRIPE_SECRET: sk_live_1", "STRIPE_SECRET: ***"),
        ('{"github_token": "ghp_1234"}', '{"github_token": "***"}'),
        ("host=db password=abc user=x", "host=db password=*** user=x"),
        ("nothing secret here: 42", "nothing secret here: 42"),
        ("MONKEY=banana SECRETARY=bob", "MONKEY=banana SECRETARY=bob"),
        (
            'password_env = "SMTP_PASSWORD" password_file=/etc/pw',
            'password_env = "SMTP_PASSWORD" password_file=/etc/pw',
        ),
    ],
)
def test_secret_shapes_are_masked(text: str, expected: str) -> None:
    """Passwords in URLs, Authorization headers and NAME=value with secret-looking names are masked without help."""
    assert Redactor().redact(text) == expected


def test_known_values_are_masked_longest_first() -> None:
    """A secret that contains another is masked whole, not as "***" plus a visible tail."""
    redactor = Redactor(["abcd", "abcdefgh"])
    assert redactor.redact("x abcdefgh y abcd z") == "x *** y *** z"


def test_short_and_trivial_values_are_ignored() -> None:
    """Values under four characters, or true/false, would mangle ordinary text; they are not learnt."""
    redactor = Redactor(["abc", "true", "", "  "])
    assert redactor.secret_count == 0
    assert redactor.redact("abc is true") == "abc is true"


def test_encoded_forms_of_a_known_value_are_masked() -> None:
    """A secret with quotes or slashes is also found JSON-escaped and percent-encoded."""
    secret = 'pa"ss/wo rd'
    redactor = Redactor([secret])
    assert redactor.redact('{"v": "pa\\"ss/wo rd"}') == '{"v": "***"}'
    assert redactor.redact("https://h/?p=pa%22ss%2Fwo%20rd") == "https://h/?p=***"
    assert redactor.redact(f"raw {secret} end") == "raw *** end"


def test_from_environment_learns_secret_named_variables() -> None:
    """Values of *_SECRET, *_TOKEN, *_KEY and *PASSWORD* variables are learnt; others are not."""
    environ = {
        "WEBHOOK_SECRET": "whsec-1111",
        "GITHUB_TOKEN": "ghp-2222",
        "AWS_SECRET_ACCESS_KEY": "aws-3333",
        "LOCKSTEP_PASSWORD": "repo-4444",
        "SMTP_PASSWORD_FILE_CONTENT": "smtp-5555",
        "HOME": "/root/home",
        "KEYBOARD": "us-layout",
    }
    redactor = Redactor.from_environment(environ)
    text = " ".join(environ.values())
    assert redactor.redact(text) == "*** *** *** *** *** /root/home us-layout"


def test_is_secret_name() -> None:
    """The variable-name rule on its own, including lowercase document keys."""
    for name in ("API_KEY", "x_token", "DB_PASSWORD", "password", "passwd", "secret", "Authorization"):
        assert is_secret_name(name), name
    for name in ("KEYBOARD", "TOKENIZER_PATH", "PATH", "keys", "secretary", "password_env", "SMTP_PASSWORD_FILE"):
        assert not is_secret_name(name), name


def test_redact_document_walks_structures_and_masks_secret_keys() -> None:
    """Nested dicts and lists: strings are redacted, values under secret-named keys replaced whole."""
    redactor = Redactor(["topsecret-value"])
    document = {
        "summary": "used topsecret-value",
        "database_password": "anything",
        "api_key": None,
        "count": 3,
        "nested": [{"url": "postgresql://u:pw1234@h/db"}, ("Authorization: Bearer x",), 1.5, True],
    }
    assert redactor.redact_document(document) == {
        "summary": "used ***",
        "database_password": "***",
        "api_key": None,
        "count": 3,
        "nested": [{"url": "postgresql://u:***@h/db"}, ["Authorization: ***"], 1.5, True],
    }


def test_adding_a_value_later_takes_effect() -> None:
    """The compiled pattern is rebuilt when a secret is learnt after the first use."""
    redactor = Redactor(["first-secret"])
    assert redactor.redact("first-secret second-secret") == "*** second-secret"
    redactor.add("second-secret")
    assert redactor.redact("first-secret second-secret") == "*** ***"


def test_bytes_of_unknown_encoding() -> None:
    """Hook output that is not UTF-8 is still redacted."""
    assert Redactor(["s3cret-bytes"]).redact_bytes(b"\xff s3cret-bytes \xfe") == "\ufffd *** \ufffd".encode()


def test_large_output_is_fast() -> None:
    """8 MB of log text with 200 unrelated known secrets is redacted in well under the time a deploy would notice."""
    secrets = [hashlib.sha256(str(index).encode()).hexdigest()[: 16 + index % 17] for index in range(200)]
    redactor = Redactor(secrets)
    line = "2026-11-22T06:00:00Z step=migrate status=ok rows=1234 url=https://example.com/path?q=1 done\n"
    text = line * 90_000 + f"leak {secrets[150]} and postgresql://a:b@c/d\n"
    assert len(text) > 8_000_000
    started = time.monotonic()
    redacted = redactor.redact(text)
    elapsed = time.monotonic() - started
    assert redacted.endswith("leak *** and postgresql://a:***@c/d\n")
    assert elapsed < 10, f"redacting 8 MB took {elapsed:.1f} s"


def test_long_multi_line_secret_file_is_masked() -> None:
    """A secret file's whole content (a 5 kB key) is one value; it is masked wherever it appears."""
    key = "-----BEGIN PRIVATE KEY-----\n" + "\n".join("A" * 64 + str(index) for index in range(80)) + "\n-----END"
    redactor = Redactor([key, key[:40]])
    assert redactor.redact(f"before\n{key}\nafter {key[:40]}") == "before\n***\nafter ***"


def test_a_secret_file_hides_its_lines_and_secret_values_but_not_ordinary_ones() -> None:
    """A hook may print one variable of a .env file or one line of a key: those are hidden; a short
    value under an ordinary name (RAILS_ENV=production) is not, or every "production" would go."""
    dotenv = 'RAILS_ENV=production\nexport STRIPE_KEY="sk_live_51abc"\n# comment\nDATABASE_URL_HOST=db\n'
    key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
    redactor = Redactor([*secret_file_values(dotenv), *secret_file_values(key), *secret_file_values("tok-1234\n")])
    text = "env production, stripe sk_live_51abc, key line MIIEvQIBADANBgkqhkiG9w0BAQEFAASC, host db, tok-1234"
    assert redactor.redact(text) == "env production, stripe ***, key line ***, host db, ***"


def test_a_yes_or_no_after_password_is_not_a_secret() -> None:
    """MySQL's "Access denied ... (using password: YES)" came out as "(using password: ***":
    the flag masked, the parenthesis eaten. Real values are still masked."""
    redactor = Redactor()
    denied = "ERROR 1045 (28000): Access denied for user 'app'@'db' (using password: YES)"
    assert redactor.redact(denied) == denied
    assert redactor.redact("(using password: NO)") == "(using password: NO)"
    assert redactor.redact("DB_PASSWORD=s3cr3t-value end") == "DB_PASSWORD=*** end"
    assert redactor.redact('password: "hunter22"') == 'password: "***"'


def test_the_ping_urls_password_is_a_project_secret_as_written_and_as_sent() -> None:
    """[backup] healthchecks_url's password goes out decoded in a basic-auth header: the redactor
    must know that form too, which the URL-shape rule (it sees only `user:WRITTEN@`) cannot."""
    from lockstep.config.model import ProjectConfig
    from lockstep.pipeline.project_secrets import teach_project_secrets

    config = ProjectConfig.from_source(
        {
            "repository": {"url": "/tmp/unused"},
            "backup": {"healthchecks_url": "https://hc-user:pa%40ss-w0rd@hc.example/ping/5f1c0b7e"},
        }
    )
    redactor = teach_project_secrets(config, Redactor())
    assert redactor.redact("sent pa@ss-w0rd, written pa%40ss-w0rd") == "sent ***, written ***"
