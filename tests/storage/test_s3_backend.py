"""The storage contract, checked once for LocalBackend and for S3Backend on a real moto server.

The S3 tests talk HTTP to `python -m moto.server` in a subprocess. Without moto they are skipped,
or fail when LOCKSTEP_REQUIRE_ALL=1 (CI sets it so that a missing dependency cannot hide them).
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from lockstep.errors import LockstepError, RepositoryExists, StorageError, UsageError
from lockstep.storage.base import DOCUMENTS_DIRECTORY as DOCUMENTS
from lockstep.storage.base import Backend, FileMissing, FileType, relative_path
from lockstep.storage.local import LocalBackend
from lockstep.storage.location import open_backend
from lockstep.storage.s3 import (
    EXPECTED_FORM,
    S3Backend,
    addressing_style,
    parse_bucket_lookup,
    parse_location,
    parse_location_options,
)
from tests.s3_fault_proxy import FaultProxy
from tests.s3_server import MotoUnavailable, free_port, moto_missing_reason, start_moto_server

BackendFactory = Callable[[], Backend]
NON_CONFIG_TYPES = [file_type for file_type in FileType if file_type is not FileType.CONFIG]


def new_id() -> str:
    return secrets.token_hex(32)


def name_for(file_type: FileType) -> str:
    return "config" if file_type is FileType.CONFIG else new_id()


def unique_bucket() -> str:
    return f"lockstep-test-{uuid.uuid4().hex[:16]}"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip, unless LOCKSTEP_REQUIRE_ALL=1 says every test must really run."""
    if os.environ.get("LOCKSTEP_REQUIRE_ALL") == "1":
        pytest.fail(f"LOCKSTEP_REQUIRE_ALL=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def raw_client(endpoint: str) -> Any:
    """A plain boto3 client to look behind the backend's back (uses the fixture's credentials)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server for this module, with test credentials in the environment."""
    reason = moto_missing_reason()
    if reason:
        skip_or_fail(reason)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        try:
            endpoint, stop = start_moto_server()
        except MotoUnavailable as error:
            skip_or_fail(str(error))
        try:
            yield endpoint
        finally:
            stop()


@pytest.fixture(params=["local", "s3"])
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendFactory]:
    """Builds backends of one kind, each on a fresh, empty location (not yet created)."""
    made: list[Backend] = []

    def make() -> Backend:
        backend: Backend
        if request.param == "local":
            backend = LocalBackend(tmp_path / f"repo-{len(made)}")
        else:
            endpoint = request.getfixturevalue("s3_endpoint")
            backend = S3Backend.from_location(f"s3:{endpoint}/{unique_bucket()}/some/prefix")
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend(make_backend: BackendFactory) -> Backend:
    backend = make_backend()
    backend.create()
    return backend


# The contract: every test below runs against both backends.


@pytest.mark.parametrize("file_type", list(FileType), ids=lambda file_type: file_type.name)
def test_round_trip_for_every_file_type(backend: Backend, file_type: FileType) -> None:
    name = name_for(file_type)
    data = os.urandom(3000)
    assert not backend.exists(file_type, name)

    backend.save(file_type, name, data)

    assert backend.exists(file_type, name)
    assert backend.size(file_type, name) == len(data)
    assert backend.load(file_type, name) == data
    expected_listing = [] if file_type is FileType.CONFIG else [(name, len(data))]
    assert list(backend.list(file_type)) == expected_listing

    backend.remove(file_type, name)
    assert not backend.exists(file_type, name)
    assert list(backend.list(file_type)) == []
    backend.remove(file_type, name)  # removing again is not an error
    with pytest.raises(FileMissing):
        backend.load(file_type, name)
    with pytest.raises(FileMissing):
        backend.size(file_type, name)


def test_save_replaces_the_whole_file(backend: Backend) -> None:
    name = new_id()
    backend.save(FileType.INDEX, name, b"a much longer first version")
    backend.save(FileType.INDEX, name, b"short")
    assert backend.load(FileType.INDEX, name) == b"short"
    assert backend.size(FileType.INDEX, name) == 5


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, None, slice(0, None)),
        (10, None, slice(10, None)),
        (10, 20, slice(10, 30)),
        (0, 1, slice(0, 1)),
        (1023, 1, slice(1023, 1024)),
        (1000, 100, slice(1000, None)),  # a length past the end reads to the end
        (1024, None, slice(0, 0)),  # at the end: nothing
        (5000, 10, slice(0, 0)),  # past the end: nothing
        (7, 0, slice(0, 0)),
    ],
)
def test_range_reads(backend: Backend, offset: int, length: int | None, expected: slice) -> None:
    data = bytes(range(256)) * 4
    name = new_id()
    backend.save(FileType.PACK, name, data)
    assert backend.load(FileType.PACK, name, offset, length) == data[expected]


@pytest.mark.parametrize(("offset", "length"), [(0, None), (5, None), (5, 10), (0, 0)])
def test_reading_a_missing_file_raises_file_missing(backend: Backend, offset: int, length: int | None) -> None:
    name = new_id()
    with pytest.raises(FileMissing) as caught:
        backend.load(FileType.PACK, name, offset, length)
    assert isinstance(caught.value, StorageError)
    assert name in str(caught.value)


@pytest.mark.parametrize(
    ("offset", "lengths", "expected"),
    [
        (0, [0, 10, 5, 20], [slice(0, 0), slice(0, 10), slice(10, 15), slice(15, 35)]),
        (1000, [4, 100, 10], [slice(1000, 1004), slice(1004, None), slice(0, 0)]),  # past the end: short, then empty
        (2000, [3], [slice(0, 0)]),
        (7, [0], [slice(0, 0)]),
    ],
)
def test_load_pieces_hands_over_consecutive_pieces(
    backend: Backend, offset: int, lengths: list[int], expected: list[slice]
) -> None:
    """A copy reads a run of blobs with one request, a blob at a time (pack_runs.read_run)."""
    data = bytes(range(256)) * 4
    name = new_id()
    backend.save(FileType.PACK, name, data)
    # Each piece copied before the next is asked for: it may be a view the next one overwrites.
    assert [bytes(piece) for piece in backend.load_pieces(FileType.PACK, name, offset, lengths)] == [
        data[part] for part in expected
    ]


@pytest.mark.parametrize("lengths", [[5, 10], [0]])
def test_load_pieces_of_a_missing_file_raises_file_missing(backend: Backend, lengths: list[int]) -> None:
    name = new_id()
    with pytest.raises(FileMissing):
        next(backend.load_pieces(FileType.PACK, name, 0, lengths))


def test_empty_file(backend: Backend) -> None:
    name = new_id()
    backend.save(FileType.LOCK, name, b"")
    assert backend.exists(FileType.LOCK, name)
    assert backend.size(FileType.LOCK, name) == 0
    assert backend.load(FileType.LOCK, name) == b""
    assert backend.load(FileType.LOCK, name, 0, 10) == b""
    assert list(backend.list(FileType.LOCK)) == [(name, 0)]


def test_list_skips_foreign_names_and_other_types(backend: Backend) -> None:
    key, index = new_id(), new_id()
    backend.save(FileType.KEY, key, b"key")
    backend.save(FileType.KEY, "not-a-storage-id", b"junk")
    backend.save(FileType.KEY, key.upper(), b"upper case is not an ID")
    backend.save(FileType.INDEX, index, b"index")
    assert list(backend.list(FileType.KEY)) == [(key, 3)]
    assert list(backend.list(FileType.INDEX)) == [(index, 5)]
    assert list(backend.list(FileType.SNAPSHOT)) == []
    assert list(backend.list(FileType.CONFIG)) == []


def test_list_packs_across_subdirectories(backend: Backend) -> None:
    names = {f"{prefix:02x}" + secrets.token_hex(31) for prefix in (0x00, 0x01, 0x7F, 0xFE, 0xFF)}
    for name in names:
        backend.save(FileType.PACK, name, name.encode())
    assert dict(backend.list(FileType.PACK)) == {name: 64 for name in names}


def test_list_more_than_a_thousand_files_saved_concurrently(backend: Backend) -> None:
    """More than one S3 listing page (1000 keys), written from several threads at once."""
    count = 1050
    names = [new_id() for _ in range(count)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda name: backend.save(FileType.PACK, name, name[:7].encode()), names))

    assert dict(backend.list(FileType.PACK)) == {name: 7 for name in names}
    if isinstance(backend, S3Backend):
        # Prove that one page was not enough, so the backend really paged.
        first_page = raw_client(backend.endpoint).list_objects_v2(Bucket=backend.bucket)
        assert first_page["IsTruncated"]


def test_create_refuses_an_existing_repository(make_backend: BackendFactory) -> None:
    backend = make_backend()
    backend.create()
    backend.create()  # nothing there yet: preparing the location again is harmless
    backend.save(FileType.CONFIG, "config", b"config")
    with pytest.raises(RepositoryExists, match="already exists"):
        backend.create()
    assert backend.load(FileType.CONFIG, "config") == b"config"


def test_location_names_the_place(backend: Backend) -> None:
    assert backend.location.startswith(("local:", "s3:"))
    assert open_backend(backend.location).location == backend.location


# S3 only: location syntax, key layout, buckets and errors.


@pytest.mark.parametrize(
    ("location", "parsed"),
    [
        ("s3:http://127.0.0.1:9000/bucket", ("http://127.0.0.1:9000", "bucket", "")),
        ("s3:http://127.0.0.1:9000/bucket/", ("http://127.0.0.1:9000", "bucket", "")),
        (
            "s3:http://127.0.0.1:9000/bucket/optional/prefix",
            ("http://127.0.0.1:9000", "bucket", "optional/prefix"),
        ),
        ("s3:https://s3.example.com/my.bucket-1/p/", ("https://s3.example.com", "my.bucket-1", "p")),
        ("s3:https://host/bucket", ("https://host", "bucket", "")),
        ("s3:http://[::1]:9000/bucket/x", ("http://[::1]:9000", "bucket", "x")),
        # Escapes are decoded as restic's Go url.Parse decodes them (they were kept literally,
        # so the same location string named another prefix than restic's).
        ("s3:http://host/bucket/my%20backups", ("http://host", "bucket", "my backups")),
        ("s3:http://host/bucket/a%2Fb", ("http://host", "bucket", "a/b")),
        ("s3:http://host/bucket/100%25/x%c3%a9", ("http://host", "bucket", "100%/xé")),
        ("s3:http://host/bucket/plus+sign", ("http://host", "bucket", "plus+sign")),
        ("s3:http://host/bucket%2Fprefix", ("http://host", "bucket", "prefix")),
        # Without a scheme, as restic documents for AWS: https, the first segment is the host.
        ("s3:s3.amazonaws.com/bucket", ("https://s3.amazonaws.com", "bucket", "")),
        (
            "s3:s3.eu-central-1.amazonaws.com/bucket/prefix/",
            ("https://s3.eu-central-1.amazonaws.com", "bucket", "prefix"),
        ),
        ("s3:minio.internal:9000/bucket/a/b", ("https://minio.internal:9000", "bucket", "a/b")),
        ("s3:[::1]:9000/bucket", ("https://[::1]:9000", "bucket", "")),
        ("s3:eu-central-1/foobar/prefix/directory", ("https://eu-central-1", "foobar", "prefix/directory")),
        # restic's url.Parse runs only for s3:http..., so escapes in a bare location are literal.
        ("s3:host.example/bucket/my%20backups", ("https://host.example", "bucket", "my%20backups")),
    ],
)
def test_parse_location(location: str, parsed: tuple[str, str, str]) -> None:
    assert parse_location(location) == parsed


@pytest.mark.parametrize(
    "location",
    [
        "s3:",
        "s3:bucket",
        "s3:/bucket",
        "s3:host",
        "s3:host/",
        "s3:host:99999/bucket",
        "s3:host:0/bucket",
        "s3:host/Upper_Case",
        "s3:host/bucket/../elsewhere",
        "s3:host/bucket?bucket-lookup=dns",  # restic would read the query as part of the bucket
        "s3:host/bucket/prefix?bucket-lookup=dns",
        "s3:host/bucket#fragment",
        "s3://s3.amazonaws.com/bucket",  # the AWS CLI's s3://BUCKET reads otherwise
        "s3:httpbin.example/bucket",  # restic parses s3:http... as a URL
        "s3:ftp://host/bucket",
        "s3:http://",
        "s3:http:///bucket",
        "s3:http://host",
        "s3:http://host/",
        "s3:http://host:99999/bucket",
        "s3:http://host:port/bucket",
        "s3:http://host:0/bucket",
        "s3:http://host/Upper_Case",
        "s3:http://host/ab",
        "s3:http://host/bucket?versionId=1",
        "s3:http://host/bucket/../elsewhere",
        "s3:http://host/bucket/%2E%2E/elsewhere",
        "s3:http://host/bucket/100%",
        "s3:http://host/bucket/%zz",
        "s3:http://host/bucket/%ff",
        "s3:http://host/bucket?bucket-lookup=virtual",
        "s3:http://host/bucket?bucket-lookup=dns&color=blue",
        "s3:http://host/bucket?region=",
        "s3:http://host/bucket?region=eu%20west",
        "s3:http://host/bucket?region=eu-west-1&region=us-east-1",
        "s3:http://host/bucket?storage-class=STANDARD%2FIA",
        "s3:http://host/bucket#fragment",
    ],
)
def test_bad_location_syntax_is_a_usage_error(location: str) -> None:
    with pytest.raises(UsageError) as caught:
        S3Backend.from_location(location)
    assert EXPECTED_FORM in str(caught.value)
    with pytest.raises(UsageError):
        open_backend(location)


@pytest.mark.parametrize(
    ("location", "path_style"),
    [
        ("s3:backups.s3.eu-west-1.amazonaws.com/prefix", "s3:s3.eu-west-1.amazonaws.com/backups/prefix"),
        (
            "s3:https://backups.s3.eu-west-1.amazonaws.com/prefix",
            "s3:https://s3.eu-west-1.amazonaws.com/backups/prefix",
        ),
        ("s3:my.backups.s3.amazonaws.com", "s3:s3.amazonaws.com/my.backups"),
        ("s3:backups.s3-us-west-2.amazonaws.com:443/a/b", "s3:s3-us-west-2.amazonaws.com:443/backups/a/b"),
        (
            "s3:https://backups.s3.dualstack.us-east-1.amazonaws.com/p/?region=us-east-1",
            "s3:https://s3.dualstack.us-east-1.amazonaws.com/backups/p?region=us-east-1",
        ),
        ("s3:backups.s3.cn-north-1.amazonaws.com.cn/p", "s3:s3.cn-north-1.amazonaws.com.cn/backups/p"),
        ("s3:http://backups.storage.googleapis.com/p", "s3:http://storage.googleapis.com/backups/p"),
    ],
)
def test_a_bucket_in_the_host_name_is_refused_with_the_path_style_form(location: str, path_style: str) -> None:
    """BUCKET.s3.REGION.amazonaws.com/PREFIX (the AWS console's virtual-hosted address) was read
    as endpoint BUCKET.s3..., bucket PREFIX, as restic reads it before failing in minio-go; it is
    refused, the error naming the form to write, which parses to that bucket and prefix."""
    with pytest.raises(UsageError) as caught:
        parse_location(location)
    assert "virtual-hosted" in str(caught.value) and path_style in str(caught.value)
    bucket = "my.backups" if "my.backups" in location else "backups"
    assert parse_location(path_style)[1] == bucket


@pytest.mark.parametrize("prefix", ["my backups", "100%/x", "é?#", "a+b"])
def test_an_escaped_location_parses_back_to_its_prefix(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`location` escapes what parsing decodes: it names the same place when used again."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    backend = S3Backend("http://127.0.0.1:9000", "bucket", prefix)
    assert parse_location(backend.location) == ("http://127.0.0.1:9000", "bucket", prefix)


@pytest.mark.parametrize(
    ("location", "lookup", "style"),
    [
        ("s3:https://s3.amazonaws.com/bucket", "auto", "virtual"),
        ("s3:https://s3.eu-central-1.amazonaws.com/bucket/prefix", "auto", "virtual"),
        ("s3:https://storage.googleapis.com/bucket", "auto", "virtual"),
        ("s3:https://s3.amazonaws.com/dotted.bucket", "auto", "path"),  # the wildcard certificate
        ("s3:http://127.0.0.1:9000/bucket", "auto", "path"),
        ("s3:https://minio.example.com/bucket?bucket-lookup=auto", "auto", "path"),
        ("s3:https://minio.example.com/bucket?bucket-lookup=dns", "dns", "virtual"),
        ("s3:https://s3.amazonaws.com/bucket/p?bucket-lookup=path", "path", "path"),
    ],
)
def test_bucket_lookup_is_restics(location: str, lookup: str, style: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """restic's -o s3.bucket-lookup, as the location's query: lockstep always addressed the bucket
    in the path, which AWS buckets that only take virtual-hosted requests refuse."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert parse_bucket_lookup(location) == lookup
    endpoint, bucket, _ = parse_location(location)
    assert addressing_style(endpoint, bucket, lookup) == style
    backend = S3Backend.from_location(location)
    assert parse_bucket_lookup(backend.location) == lookup and parse_location(backend.location) == parse_location(
        location
    )
    backend.close()


@pytest.mark.parametrize("lookup", ["dns", "path"])
def test_bucket_lookup_addresses_the_bucket_as_asked(s3_endpoint: str, lookup: str) -> None:
    """Through a forward proxy that records the requests (no DNS for BUCKET.localhost needed): dns
    names the bucket in the host, path in the path; both reach the same bucket on the server."""
    port = urlsplit(s3_endpoint).port
    bucket = unique_bucket()
    with FaultProxy(s3_endpoint) as proxy, pytest.MonkeyPatch.context() as patch:
        patch.setenv("HTTP_PROXY", proxy.endpoint)
        patch.delenv("NO_PROXY", raising=False)
        patch.delenv("no_proxy", raising=False)
        backend = S3Backend.from_location(f"s3:http://localhost:{port}/{bucket}/repo?bucket-lookup={lookup}")
        try:
            backend.create()
            backend.save(FileType.CONFIG, "config", b"addressed")
            assert backend.load(FileType.CONFIG, "config") == b"addressed"
        finally:
            backend.close()
        seen = [request for request in proxy.requests if "/repo/config" in request]
    expected = (
        f"http://{bucket}.localhost:{port}/repo/config"
        if lookup == "dns"
        else f"http://localhost:{port}/{bucket}/repo/config"
    )
    assert seen and all(request.split(" ", 1)[1] == expected for request in seen), seen
    stored = raw_client(s3_endpoint).get_object(Bucket=bucket, Key="repo/config")["Body"].read()
    assert stored == b"addressed"


@pytest.mark.parametrize(
    "location",
    [
        "s3:http://AKIDEXAMPLE:hunter2-secret@127.0.0.1:9000/bucket",
        "s3:AKIDEXAMPLE:hunter2-secret@s3.amazonaws.com/bucket",
        # Refused for another reason first: the message still shows no credentials.
        "s3:AKIDEXAMPLE:hunter2-secret@s3.amazonaws.com/bucket?bucket-lookup=dns",
        "s3://AKIDEXAMPLE:hunter2-secret@s3.amazonaws.com/bucket",
    ],
)
def test_credentials_in_the_url_are_refused_without_repeating_them(location: str) -> None:
    with pytest.raises(UsageError) as caught:
        S3Backend.from_location(location)
    assert "hunter2-secret" not in str(caught.value)
    assert "AKIDEXAMPLE" not in str(caught.value)
    assert "AWS_SECRET_ACCESS_KEY" in str(caught.value) or EXPECTED_FORM in str(caught.value)


def test_a_location_without_a_scheme_opens_over_https(monkeypatch: pytest.MonkeyPatch) -> None:
    """restic's documented AWS form, s3:HOST/BUCKET, is https; its location string, written back
    in the URL form, names the same place (an escape in a bare location stays literal)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    backend = S3Backend.from_location("s3:s3.eu-central-1.amazonaws.com/bucket/my%20repo")
    try:
        assert backend.endpoint == "https://s3.eu-central-1.amazonaws.com"
        assert (backend.bucket, backend.prefix) == ("bucket", "my%20repo")
        assert parse_location(backend.location) == parse_location(open_backend(backend.location).location)
        assert parse_location(backend.location)[2] == "my%20repo"
    finally:
        backend.close()


@pytest.mark.parametrize("missing", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_missing_credentials_are_a_usage_error(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv(missing)
    with pytest.raises(UsageError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        S3Backend.from_location("s3:http://127.0.0.1:9000/bucket")


def test_an_unrelated_aws_profile_does_not_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_PROFILE", "a-profile-that-does-not-exist")
    backend = S3Backend.from_location("s3:http://127.0.0.1:9000/bucket")
    assert backend.location == "s3:http://127.0.0.1:9000/bucket"
    backend.close()


def _only_file_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, profile: str | None) -> str:
    """No key variables; a credentials file with a `backup` profile; no instance metadata.
    Returns the secret in the file."""
    secret = "file-secret-" + secrets.token_hex(8)
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(f"[backup]\naws_access_key_id = AKIDFROMFILE\naws_secret_access_key = {secret}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if profile is not None:
        monkeypatch.setenv("AWS_PROFILE", profile)
    return secret


def test_credentials_come_from_the_shared_credentials_file_without_key_variables(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """restic finds the keys in ~/.aws/credentials (AWS_PROFILE picks the profile); lockstep
    refused such a setup with "no credentials", so a restic user's cron job could not switch."""
    _only_file_credentials(monkeypatch, tmp_path, profile="backup")
    backend = S3Backend.from_location(f"s3:{s3_endpoint}/{unique_bucket()}/repo")
    try:
        backend.create()
        name = new_id()
        backend.save(FileType.SNAPSHOT, name, b"from the profile")
        assert backend.load(FileType.SNAPSHOT, name) == b"from the profile"
    finally:
        backend.close()


def test_refused_file_credentials_are_reported_without_the_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = _only_file_credentials(monkeypatch, tmp_path, profile="backup")
    try:
        endpoint, stop = start_moto_server(enforce_auth=True)
    except MotoUnavailable as error:
        skip_or_fail(str(error))
    try:
        backend = S3Backend.from_location(f"s3:{endpoint}/{unique_bucket()}")
        with pytest.raises(StorageError) as caught:
            backend.load(FileType.CONFIG, "config")
        backend.close()
    finally:
        stop()
    assert "refused the credentials" in caught.value.message
    assert secret not in str(caught.value) and "AKIDFROMFILE" not in str(caught.value)


def test_a_profile_that_does_not_exist_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _only_file_credentials(monkeypatch, tmp_path, profile="nightly")
    with pytest.raises(UsageError, match="'nightly'") as caught:
        S3Backend.from_location("s3:http://127.0.0.1:9000/bucket")
    assert "AWS_PROFILE" in str(caught.value)


def test_no_credentials_anywhere_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _only_file_credentials(monkeypatch, tmp_path, profile=None)  # the file has no "default" profile
    with pytest.raises(UsageError, match="no credentials") as caught:
        S3Backend.from_location("s3:http://127.0.0.1:9000/bucket")
    assert "AWS_ACCESS_KEY_ID" in str(caught.value) and "~/.aws/credentials" in str(caught.value)


def test_open_backend_builds_an_s3_backend(s3_endpoint: str) -> None:
    backend = open_backend(f"s3:{s3_endpoint}/bucket/some/prefix/")
    assert isinstance(backend, S3Backend)
    assert backend.location == f"s3:{s3_endpoint}/bucket/some/prefix"
    backend.close()


@pytest.mark.parametrize("prefix", ["", "some/prefix"])
def test_objects_are_laid_out_like_restic(s3_endpoint: str, prefix: str) -> None:
    bucket = unique_bucket()
    location = f"s3:{s3_endpoint}/{bucket}" + (f"/{prefix}" if prefix else "")
    backend = S3Backend.from_location(location)
    backend.create()
    saved = {FileType.CONFIG: "config"} | {file_type: new_id() for file_type in NON_CONFIG_TYPES}
    for file_type, name in saved.items():
        backend.save(file_type, name, b"x")

    client = raw_client(s3_endpoint)
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]}
    lead = f"{prefix}/" if prefix else ""
    assert keys == {lead + relative_path(file_type, name) for file_type, name in saved.items()}
    pack = saved[FileType.PACK]
    assert f"{lead}data/{pack[:2]}/{pack}" in keys
    head = client.head_object(Bucket=bucket, Key=f"{lead}data/{pack[:2]}/{pack}")
    assert head["ContentType"] == "application/octet-stream"
    backend.close()


def test_prefixes_in_one_bucket_are_separate_repositories(s3_endpoint: str) -> None:
    bucket = unique_bucket()
    first = S3Backend.from_location(f"s3:{s3_endpoint}/{bucket}/first")
    second = S3Backend.from_location(f"s3:{s3_endpoint}/{bucket}/second")
    first.create()
    first.save(FileType.CONFIG, "config", b"first")
    second.create()  # the bucket exists and holds another repository: still fine
    name = new_id()
    first.save(FileType.SNAPSHOT, name, b"snap")
    assert list(second.list(FileType.SNAPSHOT)) == []
    assert not second.exists(FileType.CONFIG, "config")
    # A prefix that merely starts like another one sees nothing of it either.
    similar = S3Backend.from_location(f"s3:{s3_endpoint}/{bucket}/firs")
    assert list(similar.list(FileType.SNAPSHOT)) == []
    for backend in (first, second, similar):
        backend.close()


def test_create_uses_an_existing_bucket(s3_endpoint: str) -> None:
    bucket = unique_bucket()
    raw_client(s3_endpoint).create_bucket(Bucket=bucket)
    backend = S3Backend.from_location(f"s3:{s3_endpoint}/{bucket}")
    backend.create()
    backend.save(FileType.CONFIG, "config", b"c")
    with pytest.raises(RepositoryExists, match="already exists"):
        backend.create()
    backend.close()


def start_upload(client: Any, bucket: str, key: str) -> tuple[str, float]:
    """A multipart upload with one part, left unfinished as a kill leaves it: (its ID, when the
    server says it was initiated)."""
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"p" * 1024)
    (listed,) = [
        item for item in client.list_multipart_uploads(Bucket=bucket)["Uploads"] if item["UploadId"] == upload_id
    ]
    return upload_id, float(listed["Initiated"].timestamp())


def open_uploads(client: Any, bucket: str) -> set[str]:
    return {item["UploadId"] for item in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def test_prune_aborts_multipart_uploads_a_kill_left_once_an_hour_old(s3_endpoint: str) -> None:
    """Unfinished multipart uploads under the prefix are aborted once initiated an hour before;
    a younger one (a writer that may still run) and those of the repository beside it stay."""
    bucket = unique_bucket()
    backend = S3Backend.from_location(f"s3:{s3_endpoint}/{bucket}/repo")
    backend.create()
    client = raw_client(s3_endpoint)
    ours, initiated = start_upload(client, bucket, f"repo/data/ab/{new_id()}")
    beside, _ = start_upload(client, bucket, f"repo2/data/ab/{new_id()}")
    # The server sets the initiation time, so the clock moves instead of the upload aging.
    assert backend.abort_stale_multipart_uploads(3600, now=initiated + 60) == 0
    assert open_uploads(client, bucket) == {ours, beside}
    assert backend.abort_stale_multipart_uploads(3600, now=initiated + 3601) == 1
    assert open_uploads(client, bucket) == {beside}
    # What prune calls: with no age limit, any upload under the prefix goes.
    start_upload(client, bucket, f"repo/index/{new_id()}")
    assert backend.remove_stale_temporary_files(0) == 1
    assert open_uploads(client, bucket) == {beside}
    backend.close()


def test_a_missing_bucket_looks_empty(s3_endpoint: str) -> None:
    backend = S3Backend.from_location(f"s3:{s3_endpoint}/{unique_bucket()}/prefix")
    name = new_id()
    with pytest.raises(FileMissing):
        backend.load(FileType.PACK, name)
    with pytest.raises(FileMissing):
        backend.load(FileType.PACK, name, 3, 4)
    with pytest.raises(FileMissing):
        backend.size(FileType.PACK, name)
    assert not backend.exists(FileType.CONFIG, "config")
    assert list(backend.list(FileType.PACK)) == []
    backend.remove(FileType.PACK, name)
    with pytest.raises(StorageError, match="does not exist") as caught:
        backend.save(FileType.PACK, name, b"data")
    assert not isinstance(caught.value, FileMissing)
    backend.close()


def test_an_unreachable_endpoint_fails_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNREACHABLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unreachable-secret-value")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    backend = S3Backend.from_location(f"s3:{endpoint}/bucket/prefix")  # default retries

    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        backend.exists(FileType.CONFIG, "config")
    assert time.monotonic() - started < 15

    assert str(caught.value) == (f"cannot reach S3 endpoint {endpoint}: check the URL and that the server is running")
    impatient = S3Backend(endpoint, "bucket", "prefix", retries=0)
    calls: list[Callable[[], object]] = [
        impatient.create,
        lambda: impatient.save(FileType.PACK, new_id(), b"x"),
        lambda: impatient.load(FileType.PACK, new_id()),
        lambda: impatient.load(FileType.PACK, new_id(), 1, 2),
        lambda: impatient.size(FileType.PACK, new_id()),
        lambda: list(impatient.list(FileType.PACK)),
        lambda: impatient.remove(FileType.PACK, new_id()),
    ]
    for call in calls:
        with pytest.raises(StorageError, match=f"cannot reach S3 endpoint {endpoint}") as caught:
            call()
        assert not isinstance(caught.value, FileMissing)
        assert "unreachable-secret-value" not in str(caught.value)
        assert "AKIDUNREACHABLE" not in str(caught.value)
    backend.close()
    impatient.close()


def test_refused_credentials_name_the_variables_not_their_values(monkeypatch: pytest.MonkeyPatch) -> None:
    if moto_missing_reason():
        skip_or_fail(str(moto_missing_reason()))
    access_key, secret_key = "AKIDREFUSED123", "refused-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    endpoint, stop = start_moto_server(enforce_auth=True)
    try:
        backend = S3Backend.from_location(f"s3:{endpoint}/{unique_bucket()}")
        calls: list[Callable[[], object]] = [
            backend.create,
            lambda: backend.save(FileType.KEY, new_id(), b"x"),
            lambda: backend.load(FileType.KEY, new_id()),
            lambda: backend.exists(FileType.KEY, new_id()),
            lambda: list(backend.list(FileType.KEY)),
        ]
        for call in calls:
            with pytest.raises(StorageError) as caught:
                call()
            message = str(caught.value)
            assert "refused the credentials" in message
            assert "AWS_ACCESS_KEY_ID" in message
            assert "AWS_SECRET_ACCESS_KEY" in message
            assert access_key not in message
            assert secret_key not in message
        backend.close()
    finally:
        stop()


def test_the_secret_never_appears_in_errors_or_location(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_values = {
        "AWS_ACCESS_KEY_ID": "AKIDLEAKCHECK" + secrets.token_hex(4).upper(),
        "AWS_SECRET_ACCESS_KEY": "leak-check-secret-" + secrets.token_hex(16),
        "AWS_SESSION_TOKEN": "leak-check-token-" + secrets.token_hex(16),
    }
    for variable, value in secret_values.items():
        monkeypatch.setenv(variable, value)
    bucket = unique_bucket()
    backend = S3Backend.from_location(f"s3:{s3_endpoint}/{bucket}/prefix")
    missing_bucket = S3Backend.from_location(f"s3:{s3_endpoint}/{unique_bucket()}")
    unreachable = S3Backend(f"http://127.0.0.1:{free_port()}", "bucket", retries=0)
    backend.create()
    backend.save(FileType.CONFIG, "config", b"c")

    errors: list[LockstepError] = []
    attempts: list[Callable[[], object]] = [
        lambda: backend.load(FileType.PACK, new_id()),
        lambda: backend.size(FileType.SNAPSHOT, new_id()),
        backend.create,
        lambda: missing_bucket.save(FileType.KEY, new_id(), b"x"),
        lambda: unreachable.load(FileType.KEY, new_id()),
        lambda: S3Backend.from_location(f"s3:http://user:{secret_values['AWS_SECRET_ACCESS_KEY']}@h/b"),
        lambda: S3Backend.from_location("s3:not a location"),
    ]
    for attempt in attempts:
        with pytest.raises(LockstepError) as caught:
            attempt()
        errors.append(caught.value)

    shown = [str(error) for error in errors] + [repr(error) for error in errors]
    shown += [str(error.__cause__) for error in errors if error.__cause__ is not None]
    for candidate in (backend, missing_bucket, unreachable):
        shown += [candidate.location, repr(candidate)]
    for text in shown:
        for value in secret_values.values():
            assert value not in text
    for candidate in (backend, missing_bucket, unreachable):
        candidate.close()


def test_require_all_turns_a_skip_into_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCKSTEP_REQUIRE_ALL", raising=False)
    with pytest.raises(pytest.skip.Exception, match="pip install"):
        skip_or_fail("moto server needs moto: pip install 'moto[s3]>=5'")
    monkeypatch.setenv("LOCKSTEP_REQUIRE_ALL", "1")
    with pytest.raises(pytest.fail.Exception, match="LOCKSTEP_REQUIRE_ALL"):
        skip_or_fail("moto server needs moto: pip install 'moto[s3]>=5'")


def test_documents_round_trip_list_and_remove(backend: Backend) -> None:
    """lockstep's own documents live under lockstep/, listed per directory, removable."""
    backend.save_document("locks/production", b"first")
    backend.save_document("locks/production", b"second")
    backend.save_document("locks/staging", b"other")
    backend.save_document("verifications/abc", b"record")
    assert backend.load_document("locks/production") == b"second"
    assert sorted(backend.list_documents("locks")) == ["locks/production", "locks/staging"]
    assert list(backend.list_documents("nothing-here")) == []
    backend.remove_document("locks/staging")
    backend.remove_document("locks/staging")  # a missing document is not an error
    assert list(backend.list_documents("locks")) == ["locks/production"]
    with pytest.raises(FileMissing):
        backend.load_document("locks/staging")


def test_create_document_is_exclusive(backend: Backend) -> None:
    """Two deployers racing for the same lock: exactly one create succeeds, the first one's data stays."""
    assert backend.create_document("locks/production", b"first holder")
    assert not backend.create_document("locks/production", b"second holder")
    assert backend.load_document("locks/production") == b"first holder"
    backend.remove_document("locks/production")
    assert backend.create_document("locks/production", b"second holder")


def test_create_document_race_has_one_winner(backend: Backend) -> None:
    """Eight concurrent creators of one document: one wins, the others are told it exists."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: backend.create_document("locks/race", f"{n}".encode()), range(8)))
    assert results.count(True) == 1
    assert backend.load_document("locks/race") == str(results.index(True)).encode()


@pytest.mark.parametrize("path", ["", "../config", "locks/../../x", "/abs", "locks//x", ".hidden", "locks/."])
def test_document_paths_cannot_escape(backend: Backend, path: str) -> None:
    """A document path never reaches outside lockstep/ (a lock name comes from user input)."""
    with pytest.raises(ValueError):
        backend.save_document(path, b"x")


def test_region_and_storage_class_are_location_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """restic's -o s3.region and -o s3.storage-class, in the query beside bucket-lookup; the
    location written back carries them, so it opens the same backend again."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    location = "s3:https://s3.eu-west-1.amazonaws.com/bucket/p?storage-class=STANDARD_IA&region=eu-west-1"
    assert parse_location_options(location) == {"storage-class": "STANDARD_IA", "region": "eu-west-1"}
    backend = S3Backend.from_location(location)
    try:
        assert (backend.region, backend.storage_class) == ("eu-west-1", "STANDARD_IA")
        again = S3Backend.from_location(backend.location)
        assert (again.region, again.storage_class, again.location) == ("eu-west-1", "STANDARD_IA", backend.location)
        again.close()
    finally:
        backend.close()
    plain = S3Backend.from_location("s3:https://s3.amazonaws.com/bucket")
    assert (plain.region, plain.storage_class) == ("us-east-1", None)  # AWS_DEFAULT_REGION when not given
    assert plain.location == "s3:https://s3.amazonaws.com/bucket"
    plain.close()


@pytest.mark.parametrize("storage_class", ["GLACIER", "DEEP_ARCHIVE", "glacier"])
def test_archive_storage_classes_are_refused(storage_class: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects in them must be restored for hours before a rollback could read them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with pytest.raises(UsageError, match="restored"):
        S3Backend.from_location(f"s3:http://host/bucket?storage-class={storage_class}")


def test_region_and_storage_class_reach_the_server(s3_endpoint: str) -> None:
    """On the S3 server: the bucket `create` makes is in the location's region (not in
    AWS_DEFAULT_REGION's), and every repository file carries the storage class, as restic PUTs
    them; lockstep's own documents keep the bucket's default class."""
    bucket = unique_bucket()
    backend = S3Backend.from_location(f"s3:{s3_endpoint}/{bucket}/repo?region=eu-west-1&storage-class=STANDARD_IA")
    try:
        backend.create()
        names = {file_type: name_for(file_type) for file_type in FileType}
        for file_type, name in names.items():
            backend.save(file_type, name, b"payload")
        backend.save_document("records/one.json", b"{}")
        assert backend.load(FileType.PACK, names[FileType.PACK]) == b"payload"
    finally:
        backend.close()
    client = raw_client(s3_endpoint)
    assert client.get_bucket_location(Bucket=bucket)["LocationConstraint"] == "eu-west-1"
    classes = {item["Key"]: item["StorageClass"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]}
    repository_keys = {f"repo/{relative_path(file_type, name)}" for file_type, name in names.items()}
    assert {key for key, storage_class in classes.items() if storage_class == "STANDARD_IA"} == repository_keys
    assert [key for key in classes if key not in repository_keys] == [f"repo/{DOCUMENTS}/records/one.json"]
    for key in repository_keys:
        assert client.head_object(Bucket=bucket, Key=key)["StorageClass"] == "STANDARD_IA"
    assert "StorageClass" not in client.head_object(Bucket=bucket, Key=f"repo/{DOCUMENTS}/records/one.json")


@pytest.mark.parametrize(
    ("location", "region"),
    [
        ("s3:s3.eu-central-1.amazonaws.com/bucket", "eu-central-1"),
        ("s3:https://s3-us-west-2.amazonaws.com/bucket", "us-west-2"),
        ("s3:s3.dualstack.ap-southeast-2.amazonaws.com/bucket", "ap-southeast-2"),
        ("s3:s3.cn-north-1.amazonaws.com.cn/bucket", "cn-north-1"),
        ("s3:s3-fips.us-gov-west-1.amazonaws.com/bucket", "us-gov-west-1"),
        ("s3:s3.amazonaws.com/bucket", "us-east-1"),
        ("s3:minio.eu-west-1.example.com/bucket", "us-east-1"),
    ],
)
def test_an_aws_endpoint_names_the_region(location: str, region: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """restic's AWS example, s3:s3.REGION.amazonaws.com/BUCKET, needs no region besides: minio-go
    takes it from the host when neither -o s3.region nor AWS_DEFAULT_REGION gives one."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    backend = S3Backend.from_location(location)
    assert backend.region == region
    backend.close()
    monkeypatch.setenv("AWS_DEFAULT_REGION", "sa-east-1")  # the environment wins, as in restic
    backend = S3Backend.from_location(location)
    assert backend.region == "sa-east-1"
    backend.close()
