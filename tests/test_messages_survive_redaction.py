"""lockstep's own error messages must come out whole: every error passes through the redactor,
whose `password: VALUE` shape would otherwise mask the word after "password:" in a hint
("the URL contains a password: *** it from the URL"), hiding exactly what to do."""

from __future__ import annotations

import ast
from pathlib import Path

from lockstep.exit_codes import ExitCode
from lockstep.redaction import Redactor
from tests.conftest import run_lockstep

SOURCE = Path(__file__).resolve().parent.parent / "src" / "lockstep"


def _literal_text(node: ast.expr) -> str | None:
    """The text of a string literal or f-string (placeholders as X), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "X" for part in node.values)
    return None


def _raised_messages() -> list[tuple[str, str]]:
    """(where, text) of every string literal passed to an exception raised in src/lockstep, and of
    each message with its hint joined as the CLI prints them (`MESSAGE: HINT`): a message ending in
    "token" or "password" turns the hint's first word into `***`."""
    messages = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                where = f"{path.relative_to(SOURCE)}:{node.lineno}"
                texts = [_literal_text(argument) for argument in node.exc.args]
                messages.extend((where, text) for text in texts if text is not None)
                if len(texts) >= 2 and texts[0] is not None:
                    messages.append((where, f"{texts[0]}: {texts[1] or 'X'}"))
    return messages


def test_no_raised_message_is_mangled_by_the_redactor() -> None:
    redactor = Redactor()
    messages = _raised_messages()
    assert len(messages) > 100
    mangled = [f"{where}: {text!r}" for where, text in messages if redactor.redact(text) != text]
    assert not mangled, "reword these (no `password: word`):\n" + "\n".join(mangled)


def test_config_errors_about_passwords_keep_their_advice(tmp_path: Path) -> None:
    """Each of these config mistakes is reported with its whole fix, through the real CLI."""
    cases = {
        'url = "postgresql://shop:hunter2-secret@127.0.0.1/shop"': "remove it from the URL",
        'url = "postgresql://127.0.0.1/shop"\npassword_env = "hunter2 secret"': "set the password in that variable",
    }
    for database, advice in cases.items():
        (tmp_path / "lockstep.toml").write_text(
            f'[repository]\nurl = "repository"\n\n[databases.main]\n{database}\n', encoding="utf-8"
        )
        completed = run_lockstep(["snapshot", "list"], cwd=tmp_path, env={"LOCKSTEP_PASSWORD": "x"})
        assert completed.returncode == ExitCode.USAGE, completed.err
        assert advice in completed.err
        assert "hunter2" not in completed.err
    (tmp_path / "lockstep.toml").write_text(
        '[repository]\nurl = "repository"\n\n[[notifications.channels]]\nkind = "email"\nhost = "smtp.example.com"\n'
        'sender = "a@example.com"\nrecipients = ["b@example.com"]\nusername = "lockstep"\n',
        encoding="utf-8",
    )
    completed = run_lockstep(["snapshot", "list"], cwd=tmp_path, env={"LOCKSTEP_PASSWORD": "x"})
    assert completed.returncode == ExitCode.USAGE, completed.err
    assert "add password_env or password_file" in completed.err


def test_a_pagerduty_channel_without_its_routing_key_says_how_to_give_it(tmp_path: Path) -> None:
    """Through the real CLI: the error names the channel, secret_env and the line to write, whole
    (a message about a "key" must not lose its advice to the redactor), and exits 2 before any work."""
    (tmp_path / "lockstep.toml").write_text(
        '[repository]\nurl = "repository"\n\n[[notifications.channels]]\nkind = "pagerduty"\n', encoding="utf-8"
    )
    completed = run_lockstep(["snapshot", "list"], cwd=tmp_path, env={"LOCKSTEP_PASSWORD": "x"})
    assert completed.returncode == ExitCode.USAGE, completed.err
    assert "notifications.channels.0" in completed.err
    assert "a pagerduty channel needs secret_env" in completed.err
    assert 'write secret_env = "PAGERDUTY_ROUTING_KEY"' in completed.err
    assert "***" not in completed.err
