"""Secrets never leak: the repository password (from the environment, a file or a command) and
the S3 secret key appear in no output, no file lockstep writes, no repository file (raw or
decrypted), and no argv of a process lockstep starts.

Every command a user would run is exercised, including the failing ones, whose error paths are
where secrets usually slip out."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lockstep.repository.blobs import BlobType
from lockstep.repository.repository import Repository
from lockstep.storage.base import FileType
from lockstep.storage.location import open_backend
from lockstep.storage.s3 import parse_location
from tests.conftest import Completed, require_binary, run_lockstep

PASSWORD = "lockstep-leak-probe-" + secrets.token_hex(12)
WRONG_PASSWORD = "wrong-guess-probe-" + secrets.token_hex(12)

# Prints the argv of every process, lockstep's own included (its parent, via /proc).
ARGV_PROBE = "echo '--- ps'; ps -eo args; echo '--- parent'; tr '\\0' ' ' < /proc/$PPID/cmdline; echo"


def encodings(secret: str) -> list[bytes]:
    """The forms a secret could take when it slips out: raw, base64, hex, UTF-16."""
    raw = secret.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode(), secret.encode("utf-16-le")]


def assert_clean(label: str, data: bytes, named_secrets: dict[str, str]) -> None:
    for name, secret in named_secrets.items():
        for form in encodings(secret):
            assert form not in data, f"{label} contains the {name}"  # never print the data itself


def files_under(root: Path, skip: Iterable[Path]) -> Iterator[Path]:
    skipped = [path.resolve() for path in skip]
    for path in sorted(root.rglob("*")):
        resolved = path.resolve()
        if any(resolved == other or other in resolved.parents for other in skipped):
            continue
        if path.is_file() and not path.is_symlink():
            yield path


@dataclass
class Session:
    """Runs lockstep with one password source and a private HOME/TMPDIR, remembering all output."""

    base_env: dict[str, str]
    password_arguments: list[str]
    results: list[tuple[str, Completed]] = field(default_factory=list)

    def run(self, arguments: list[str], input: bytes | None = None, password: bool = True) -> Completed:
        extra = self.password_arguments if password else []
        result = run_lockstep([*arguments[:2], *extra, *arguments[2:]], env=self.base_env, input=input)
        self.results.append((" ".join(arguments), result))
        return result

    def wrong(self, arguments: list[str], wrong_env: dict[str, str]) -> Completed:
        result = run_lockstep(arguments, env={**self.base_env, **wrong_env})
        self.results.append(("wrong password: " + " ".join(arguments), result))
        return result

    def assert_outputs_clean(self, named_secrets: dict[str, str]) -> None:
        for label, result in self.results:
            assert_clean(f"stdout of `{label}`", result.stdout, named_secrets)
            assert_clean(f"stderr of `{label}`", result.stderr, named_secrets)


def private_environment(tmp_path: Path) -> dict[str, str]:
    """HOME, caches and temporary files inside tmp_path, so every file lockstep writes is scanned."""
    environment = {}
    for variable, name in (
        ("HOME", "home"),
        ("TMPDIR", "tmp"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_STATE_HOME", "state"),
    ):
        directory = tmp_path / name
        directory.mkdir()
        environment[variable] = str(directory)
    return environment


def make_source(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    (source / "app").mkdir(parents=True)
    (source / "app" / "settings.py").write_text("DEBUG = False\n")
    (source / "app" / "blob.bin").write_bytes(secrets.token_bytes(300_000))
    return source


def exercise(session: Session, source: Path, tmp_path: Path, wrong_env: dict[str, str]) -> str:
    """Every repository command, good and bad; returns the ID of the argv-probe snapshot."""
    assert session.run(["repo", "init"]).returncode == 0, session.results[-1][1].err
    assert session.run(["repo", "backup", str(source)]).returncode == 0, session.results[-1][1].err
    probe = session.run(
        [
            "repo",
            "backup",
            "--json",
            "--stdin-from-command",
            "--stdin-filename",
            "argv.txt",
            "--",
            "sh",
            "-c",
            ARGV_PROBE,
        ]
    )
    assert probe.returncode == 0, probe.err
    probe_id = str(json.loads(probe.out)["snapshot_id"])
    assert session.run(["repo", "snapshots", "--json"]).returncode == 0
    assert session.run(["repo", "ls", "latest"]).returncode == 0
    assert session.run(["repo", "stats"]).returncode == 0
    assert session.run(["repo", "restore", "latest", "--target", str(tmp_path / "restored")]).returncode == 0
    assert session.run(["repo", "dump", probe_id, "/argv.txt"]).returncode == 0
    if run_lockstep(["repo", "check", "--help"]).returncode == 0:
        assert session.run(["repo", "check", "--read-data"]).returncode == 0, session.results[-1][1].err
    assert session.run(["repo", "unlock"]).returncode == 0
    # Failures: the error paths must be as quiet as the happy ones.
    failing = session.run(
        ["repo", "backup", "--stdin-from-command", "--", "sh", "-c", "echo some data; echo 'dump failed' >&2; exit 4"]
    )
    assert failing.returncode == 15, failing.err
    assert session.run(["repo", "backup", "--stdin"], input=b"").returncode == 15
    assert session.run(["repo", "restore", "deadbeef", "--target", str(tmp_path / "never")]).returncode == 13
    assert session.run(["repo", "init"]).returncode != 0
    assert session.wrong(["repo", "snapshots"], wrong_env).returncode == 11
    assert session.wrong(["--json", "repo", "snapshots"], wrong_env).returncode == 11
    assert session.wrong(["repo", "backup", str(source)], wrong_env).returncode == 11
    assert session.wrong(["--debug", "repo", "ls", "latest"], wrong_env).returncode == 11
    return probe_id


def assert_argv_probe_clean(session: Session, named_secrets: dict[str, str]) -> None:
    """The probe snapshot holds `ps` output naming lockstep itself, and no secret."""
    dumped = next(result for label, result in session.results if label.startswith("repo dump"))
    assert b"--- ps" in dumped.stdout and b"--- parent" in dumped.stdout
    assert b"lockstep" in dumped.stdout and b"--stdin-from-command" in dumped.stdout, "the probe did not see lockstep"
    assert_clean("argv of processes around lockstep", dumped.stdout, named_secrets)


def assert_repository_plaintext_clean(
    location: str, named_secrets: dict[str, str], environment: dict[str, str], password: str = PASSWORD
) -> None:
    """Decrypt every index, snapshot, lock and blob, and scan the plaintext."""
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in environment.items():
            patch.setenv(variable, value)
        repository = Repository.open(open_backend(location), password)
        try:
            repository.load_index()
            for file_type in (FileType.INDEX, FileType.SNAPSHOT, FileType.LOCK):
                for name, _ in repository.backend.list(file_type):
                    document = repository.load_unpacked(file_type, name)
                    assert_clean(
                        f"decrypted {file_type.value}/{name[:8]}", json.dumps(document).encode(), named_secrets
                    )
            blob_count = 0
            for blob_type in (BlobType.DATA, BlobType.TREE):
                for blob_id, _ in repository.index.blobs(blob_type):
                    plaintext = repository.load_blob(blob_type, blob_id)
                    assert_clean(f"decrypted {blob_type.value} blob {blob_id.hex()[:8]}", plaintext, named_secrets)
                    blob_count += 1
            assert blob_count > 3
        finally:
            repository.close()


@pytest.mark.parametrize("password_source", ["environment", "file", "command"])
def test_local_repository_password_never_leaks(tmp_path: Path, password_source: str) -> None:
    require_binary("ps", "apt-get install procps")
    repository = tmp_path / "repository"
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    password_file = secret_dir / "password"
    password_file.write_text(PASSWORD + "\n")
    wrong_file = secret_dir / "wrong"
    wrong_file.write_text(WRONG_PASSWORD + "\n")
    base_env = {
        **private_environment(tmp_path),
        "LOCKSTEP_REPOSITORY": str(repository),
        "LOCKSTEP_PASSWORD": "",
        "LOCKSTEP_PASSWORD_FILE": "",
    }
    password_arguments: list[str] = []
    wrong_env = {"LOCKSTEP_PASSWORD": WRONG_PASSWORD}
    if password_source == "environment":
        base_env["LOCKSTEP_PASSWORD"] = PASSWORD
    elif password_source == "file":
        password_arguments = ["--password-file", str(password_file)]
        wrong_env = {"LOCKSTEP_PASSWORD_FILE": str(wrong_file)}
    else:
        password_arguments = ["--password-command", f"cat {password_file}"]
    session = Session(base_env, password_arguments)
    source = make_source(tmp_path)
    exercise(session, source, tmp_path, wrong_env)

    named_secrets = {"repository password": PASSWORD, "wrong password": WRONG_PASSWORD}
    session.assert_outputs_clean(named_secrets)
    assert_argv_probe_clean(session, named_secrets)
    scanned = 0
    for path in files_under(tmp_path, skip=[source, secret_dir]):
        assert_clean(f"file {path.relative_to(tmp_path)}", path.read_bytes(), named_secrets)
        scanned += 1
    assert scanned > 10 and list(repository.glob("keys/*")), "the scan saw no repository files"
    assert_repository_plaintext_clean(str(repository), named_secrets, {})


def test_s3_password_and_secret_key_never_leak(tmp_path: Path, s3_env: dict[str, str]) -> None:
    require_binary("ps", "apt-get install procps")
    base_env = {**private_environment(tmp_path), **s3_env, "LOCKSTEP_PASSWORD": PASSWORD, "LOCKSTEP_PASSWORD_FILE": ""}
    session = Session(base_env, [])
    source = make_source(tmp_path)
    exercise(session, source, tmp_path, {"LOCKSTEP_PASSWORD": WRONG_PASSWORD})
    # A bad secret key must not be echoed either (moto accepts any key, so this only runs the path).
    session.wrong(["repo", "snapshots"], {"AWS_SECRET_ACCESS_KEY": WRONG_PASSWORD})

    named_secrets = {
        "repository password": PASSWORD,
        "wrong password": WRONG_PASSWORD,
        "S3 secret key": s3_env["AWS_SECRET_ACCESS_KEY"],
    }
    session.assert_outputs_clean(named_secrets)
    assert_argv_probe_clean(session, named_secrets)
    for path in files_under(tmp_path, skip=[source]):
        assert_clean(f"file {path.relative_to(tmp_path)}", path.read_bytes(), named_secrets)

    location = s3_env["LOCKSTEP_REPOSITORY"]
    objects = scan_bucket(location, s3_env, named_secrets)
    assert any("/keys/" in key for key in objects) and any("/data/" in key for key in objects), objects
    assert_repository_plaintext_clean(location, named_secrets, s3_env)


def scan_bucket(location: str, s3_env: dict[str, str], named_secrets: dict[str, str]) -> list[str]:
    """Every object in the repository's bucket, raw, read with a plain boto3 client."""
    import boto3

    endpoint, bucket, _ = parse_location(location)
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=s3_env["AWS_DEFAULT_REGION"],
    )
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            content = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            assert_clean(f"S3 object {item['Key']}", content, named_secrets)
            keys.append(item["Key"])
    return keys


def test_stdin_command_does_not_inherit_the_repository_password(repository_env: dict[str, str]) -> None:
    """A source command gets lockstep's environment minus the password, so `env` cannot store it."""
    from tests.conftest import run_lockstep

    assert run_lockstep(["repo", "init"], env=repository_env).returncode == 0
    backup = run_lockstep(
        ["repo", "backup", "--stdin-from-command", "--stdin-filename", "env.txt", "--", "env"], env=repository_env
    )
    assert backup.returncode == 0, backup.err
    dumped = run_lockstep(["repo", "dump", "latest", "/env.txt"], env=repository_env)
    assert dumped.returncode == 0, dumped.err
    assert b"PATH=" in dumped.stdout  # the command did run with an environment
    assert repository_env["LOCKSTEP_PASSWORD"].encode() not in dumped.stdout


FROM_PASSWORD = "lockstep-source-probe-" + secrets.token_hex(12)


@pytest.mark.parametrize("password_source", ["environment", "file", "command"])
def test_copy_source_password_never_leaks(tmp_path: Path, password_source: str) -> None:
    """`repo copy` reads a second password, the source repository's (--from-password-file,
    --from-password-command, $LOCKSTEP_FROM_PASSWORD): it stays out of output, --json, --debug,
    errors, argv (the password command itself lists every process while lockstep runs), files
    and the destination's plaintext, like the destination's own."""
    require_binary("ps", "apt-get install procps")
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    password_file = secret_dir / "from-password"
    password_file.write_text(FROM_PASSWORD + "\n")
    source_repository, destination_repository = tmp_path / "source-repository", tmp_path / "destination"
    base_env = {
        **private_environment(tmp_path),
        "LOCKSTEP_PASSWORD_FILE": "",
        "LOCKSTEP_FROM_PASSWORD_FILE": "",
        "LOCKSTEP_FROM_PASSWORD": "",
    }
    source = make_source(tmp_path)
    setup = Session({**base_env, "LOCKSTEP_REPOSITORY": str(source_repository), "LOCKSTEP_PASSWORD": FROM_PASSWORD}, [])
    assert setup.run(["repo", "init"]).returncode == 0
    assert setup.run(["repo", "backup", str(source)]).returncode == 0
    destination_env = {**base_env, "LOCKSTEP_REPOSITORY": str(destination_repository), "LOCKSTEP_PASSWORD": PASSWORD}
    assert Session(destination_env, []).run(["repo", "init"]).returncode == 0

    process_list = tmp_path / "processes-during-copy.txt"
    arguments: list[str] = ["--from-repo", str(source_repository)]
    environment = dict(destination_env)
    if password_source == "environment":
        environment["LOCKSTEP_FROM_PASSWORD"] = FROM_PASSWORD
    elif password_source == "file":
        arguments += ["--from-password-file", str(password_file)]
    else:
        arguments += ["--from-password-command", f"sh -c 'ps -eo args > {process_list}; cat {password_file}'"]
    session = Session(environment, [])
    copied = session.run(["repo", "copy", "--json", *arguments])
    assert copied.returncode == 0, copied.err
    assert len(json.loads(copied.out)["copied"]) == 1
    assert session.run(["--debug", "repo", "copy", *arguments]).returncode == 0
    assert session.run(["repo", "copy", *arguments, "feedface"]).returncode == 13
    wrong = {"LOCKSTEP_FROM_PASSWORD": WRONG_PASSWORD, "LOCKSTEP_FROM_PASSWORD_FILE": ""}
    assert session.wrong(["repo", "copy", "--from-repo", str(source_repository)], wrong).returncode == 11
    assert session.wrong(["--json", "repo", "copy", "--from-repo", str(source_repository)], wrong).returncode == 11

    named_secrets = {
        "source password": FROM_PASSWORD,
        "destination password": PASSWORD,
        "wrong password": WRONG_PASSWORD,
    }
    session.assert_outputs_clean(named_secrets)
    setup.assert_outputs_clean({"destination password": PASSWORD, "wrong password": WRONG_PASSWORD})
    if password_source == "command":
        listed = process_list.read_bytes()
        assert b"repo copy" in listed, "the probe did not see lockstep"
    scanned = 0
    for path in files_under(tmp_path, skip=[source, secret_dir]):
        assert_clean(f"file {path.relative_to(tmp_path)}", path.read_bytes(), named_secrets)
        scanned += 1
    assert scanned > 10
    assert_repository_plaintext_clean(str(destination_repository), named_secrets, {})


COPY_PASSWORD = "lockstep-copy-probe-" + secrets.token_hex(12)


@pytest.mark.parametrize("password_source", ["password_file", "password_env", "password_command"])
def test_repository_copy_password_never_leaks(tmp_path: Path, password_source: str) -> None:
    """A copy's password ([repository.copies.NAME]) stays out of `lockstep backup`'s output,
    --json and --debug, of its failure with a wrong copy password (which names the copy), of
    `doctor`, of argv (the password command lists every process while lockstep runs), files and
    the copy's plaintext."""
    require_binary("ps", "apt-get install procps")
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    copy_password_file = secret_dir / "copy-password"
    copy_password_file.write_text(COPY_PASSWORD + "\n")
    copy_password_file.chmod(0o600)
    wrong_file = secret_dir / "wrong"
    wrong_file.write_text(WRONG_PASSWORD + "\n")
    process_list = tmp_path / "processes-during-backup.txt"
    project, repository, copy_repository = tmp_path / "project", tmp_path / "repository", tmp_path / "copy"
    project.mkdir()
    (project / "settings.ini").write_text("debug = false\n")
    base_env = {
        **private_environment(tmp_path),
        "LOCKSTEP_PASSWORD": PASSWORD,
        "LOCKSTEP_PASSWORD_FILE": "",
        "COPY_SECRET_VALUE_VAR": "",
    }
    setup = Session({**base_env, "LOCKSTEP_PASSWORD": COPY_PASSWORD}, [])
    assert setup.run(["repo", "init", "-r", str(copy_repository)], password=False).returncode == 0
    assert Session(base_env, []).run(["repo", "init", "-r", str(repository)], password=False).returncode == 0
    sources = {
        "password_file": (f'password_file = "{copy_password_file}"', f'password_file = "{wrong_file}"', {}),
        "password_env": (
            'password_env = "COPY_SECRET_VALUE_VAR"',
            'password_env = "COPY_SECRET_VALUE_VAR"',
            {"COPY_SECRET_VALUE_VAR": COPY_PASSWORD},
        ),
        "password_command": (
            f"password_command = \"sh -c 'ps -eo args >> {process_list}; cat {copy_password_file}'\"",
            f'password_command = "cat {wrong_file}"',
            {},
        ),
    }
    right, wrong, extra_env = sources[password_source]

    def write_config(password_line: str) -> None:
        (project / "lockstep.toml").write_text(
            f'[repository]\nurl = "{repository}"\n\n[repository.copies.vault]\nurl = "{copy_repository}"\n'
            f'{password_line}\n\n[files]\nconfig = ["settings.ini"]\n'
        )

    session = Session({**base_env, **extra_env}, [])

    def lockstep(*arguments: str, env: dict[str, str] | None = None) -> Completed:
        result = run_lockstep(list(arguments), cwd=project, env={**session.base_env, **(env or {})})
        session.results.append((" ".join(arguments), result))
        return result

    write_config(right)
    assert lockstep("backup").returncode == 0, session.results[-1][1].err
    assert lockstep("--json", "backup").returncode == 0, session.results[-1][1].err
    assert lockstep("--debug", "backup").returncode == 0, session.results[-1][1].err
    assert lockstep("doctor").returncode in (0, 1)
    if password_source == "password_env":
        failed = lockstep("backup", env={"COPY_SECRET_VALUE_VAR": WRONG_PASSWORD})
    else:
        write_config(wrong)
        failed = lockstep("backup")
    assert failed.returncode == 11 and "copy vault" in failed.err, failed.err
    assert lockstep("--json", "backup", env={"COPY_SECRET_VALUE_VAR": WRONG_PASSWORD}).returncode == 11

    named_secrets = {"copy password": COPY_PASSWORD, "repository password": PASSWORD, "wrong password": WRONG_PASSWORD}
    session.assert_outputs_clean(named_secrets)
    if password_source == "password_command":
        # Every run of the command appends its listing: `doctor` runs it too, after the backups.
        assert b"lockstep backup" in process_list.read_bytes(), "the probe did not see lockstep backup"
        assert_clean("the process list", process_list.read_bytes(), named_secrets)
    scanned = 0
    for path in files_under(tmp_path, skip=[secret_dir]):
        assert_clean(f"file {path.relative_to(tmp_path)}", path.read_bytes(), named_secrets)
        scanned += 1
    assert scanned > 10 and list(copy_repository.glob("snapshots/*"))
    assert_repository_plaintext_clean(str(copy_repository), named_secrets, {}, password=COPY_PASSWORD)
