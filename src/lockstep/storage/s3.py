"""A repository in S3-compatible object storage (AWS S3, MinIO, Ceph, ...), laid out as restic does.

The location uses restic's syntax, with or without a scheme (https when there is none)::

    s3:s3.amazonaws.com/bucket
    s3:s3.eu-central-1.amazonaws.com/bucket/some/prefix
    s3:http://127.0.0.1:9000/bucket
    s3:https://s3.example.com/bucket/some/prefix

The bucket is the first path segment (path style), never part of the host: an AWS or Google
address with the bucket in the host name (``s3:BUCKET.s3.REGION.amazonaws.com/PREFIX``, as the AWS
console shows it) is refused with the path-style form to write, since restic cannot read it either.

Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, plus AWS_SESSION_TOKEN when
temporary credentials are used. When neither key variable is set, they come from where restic
(and the AWS tools) also look: the shared credentials and config files (~/.aws/credentials,
AWS_SHARED_CREDENTIALS_FILE; profile AWS_PROFILE or "default"), then a container or instance
role. The region is the location's, else AWS_DEFAULT_REGION, else an AWS endpoint's, else
us-east-1. Credentials never appear in `location` or in any error message.

Every file is one object at ``PREFIX/`` + `relative_path` and is written with a single PUT, so
writes are atomic: readers see the whole object or none of it. One boto3 client is created per
backend; boto3 clients are thread-safe, so `save` may be called from several threads at once.

How the bucket is addressed is restic's `-o s3.bucket-lookup`, given in the location's query
(``s3:https://HOST/BUCKET?bucket-lookup=dns``; only the URL form takes a query, since restic reads
everything after ``s3:HOST/`` as bucket and prefix), the one place every command, the config's
`[repository] url` and LOCKSTEP_REPOSITORY share (database URLs take their options the same way):
`auto` (the default, as restic's) puts the bucket in the host name (virtual-hosted style) for AWS
and Google endpoints and in the path elsewhere, `dns` always in the host name, `path` always in
the path. restic's `-o s3.region` and `-o s3.storage-class` are the options `region` (it wins over
AWS_DEFAULT_REGION, which wins over the region a regional AWS endpoint names; it signs every
request and places a bucket `create` makes) and `storage-class` (every repository file is PUT in
it, as restic does; archive classes are refused). restic ignores the query, so the same location
string still opens the repository there.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Literal, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    IncompleteReadError,
    ProfileNotFound,
    ProxyConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from lockstep.errors import RepositoryExists, StorageError, UsageError
from lockstep.storage.base import (
    DOCUMENTS_DIRECTORY,
    FileMissing,
    FileType,
    check_document_path,
    is_storage_id,
    relative_path,
)

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType, StorageClassType
    from mypy_boto3_s3.type_defs import PutObjectRequestTypeDef

EXPECTED_FORM = (
    "s3:HOST[:PORT]/BUCKET[/PREFIX] (https) or s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX][?OPTIONS], "
    "OPTIONS being bucket-lookup=auto|dns|path, region=REGION, storage-class=CLASS joined by &"
)
BUCKET_LOOKUPS = ("auto", "dns", "path")
LOCATION_OPTIONS = ("bucket-lookup", "region", "storage-class")
# Storage classes whose objects must be restored (hours) before they can be read. restic keeps
# only data packs there; lockstep cannot tell data packs from tree packs when it writes one, and a
# rollback that waits hours for its snapshot is no rollback, so it refuses them.
ARCHIVE_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
# An AWS endpoint that names its region (s3.eu-central-1.amazonaws.com, s3-us-west-2...,
# s3.dualstack.REGION..., s3-fips.REGION..., s3.cn-north-1.amazonaws.com.cn), as minio-go reads it.
_AWS_REGIONAL_HOST = re.compile(
    r"s3[.-](?:fips[.-])?(?:dualstack\.)?([a-z]{2}(?:-[a-z]+)+-[0-9]+)\.amazonaws\.com(?:\.cn)?"
)
# A bucket in an AWS or Google host name (virtual-hosted style): BUCKET.s3.REGION.amazonaws.com,
# BUCKET.s3.amazonaws.com, BUCKET.s3-REGION.amazonaws.com, BUCKET.storage.googleapis.com.
_VIRTUAL_HOSTED = re.compile(
    r"(?P<bucket>.+)\.(?P<endpoint>s3(?:[.-][a-z0-9-]+)*\.amazonaws\.com(?:\.cn)?|storage\.googleapis\.com)"
)
_OPTION_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
DEFAULT_REGION = "us-east-1"
CREDENTIAL_HINT = "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if you use one)"

# Bucket names as S3 accepts them; MinIO and Ceph apply the same rules.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_USERINFO = re.compile(r"//[^/@]*@")
# HOST[:PORT] of a location without a scheme: a name, an IPv4 address or a bracketed IPv6 one.
_BARE_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]+)?")
_BARE_USERINFO = re.compile(r"^s3:(?!//)[^/@]*@")  # s3:USER:PASSWORD@HOST/..., without a scheme
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Kept as they are when a prefix is written back into a location; the rest is percent-escaped.
_PREFIX_SAFE = "/!$&'()*+,;=:@~"

_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_CREDENTIAL_CODES = frozenset(
    {
        "AccessDenied",
        "Forbidden",
        "403",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
    }
)


_REGION_CODES = frozenset({"AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException"})

# A response body cut off or stalled after its headers arrived. botocore retries a request that
# fails, but not the reading of a body it has already handed over; `_get` does that itself.
_BODY_ERRORS = (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, BotoConnectionError)
_BODY_RETRY_DELAY_SECONDS = 0.5


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))


def _is_missing(error: ClientError) -> bool:
    return _error_code(error) in _MISSING_CODES


def _without_userinfo(location: str) -> str:
    """The location with any ``user:password@`` removed, so it can be shown."""
    return _BARE_USERINFO.sub("s3:***@", _USERINFO.sub("//***@", location))


def _usage(location: str, problem: str) -> UsageError:
    return UsageError(
        f"invalid S3 location {_without_userinfo(location)!r}: {problem}",
        f"use {EXPECTED_FORM}, e.g. s3:s3.amazonaws.com/backups or s3:http://127.0.0.1:9000/backups",
    )


def parse_location(location: str) -> tuple[str, str, str]:
    """Split an S3 location into (endpoint URL, bucket, prefix), as restic's ParseConfig does.

    Two forms, told apart as restic tells them (by a leading ``http``): ``s3:http(s)://HOST[:PORT]/
    BUCKET[/PREFIX][?OPTIONS]`` is a URL, its path percent-decoded; ``s3:HOST[:PORT]/BUCKET[/PREFIX]``
    is https, its first segment the host and the next the bucket, taken literally (restic decodes
    nothing there, so neither does lockstep)."""
    return _split_location(location)[:3]


def _split_location(location: str) -> tuple[str, str, str, str]:
    """(endpoint URL, bucket, prefix, query) of a valid location; a UsageError for anything else."""
    if not location.startswith("s3:"):
        raise _usage(location, "it must start with s3:")
    rest = location[len("s3:") :]
    if rest.startswith("//"):
        # restic reads s3://HOST/BUCKET, but the AWS CLI's s3://BUCKET/PATH means something else:
        # taking the bucket for a host would look for the repository on the wrong server.
        raise _usage(
            location,
            "s3:// is ambiguous (the AWS CLI writes s3://BUCKET, restic once read s3://HOST/BUCKET); "
            "name the host: s3:HOST/BUCKET or s3:https://HOST/BUCKET",
        )
    if rest.startswith(("http://", "https://")):
        url, literal_path = rest, False
    elif rest.startswith("http"):
        # restic parses anything after s3:http as a URL, so a host named http... cannot be
        # written without its scheme for restic either.
        raise _usage(location, "the endpoint must start with http:// or https:// (or be a bare host: s3:HOST/BUCKET)")
    else:
        host, _, path = rest.partition("/")
        if not host:
            raise _usage(location, "the host is missing")
        if "@" in host:
            raise UsageError(
                "credentials must not be part of the S3 location",
                "remove them from the location and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead",
            )
        if not _BARE_HOST.fullmatch(host):
            raise _usage(location, f"{host!r} is not a HOST[:PORT] (the first segment is the host, as for restic)")
        if path.startswith("/"):
            # restic's bucket is what lies between the first two slashes: here, nothing.
            raise _usage(location, "the bucket is missing (one / between host and bucket)")
        if "?" in rest:
            # restic takes everything after the host literally: `?bucket-lookup=dns` would be part
            # of its bucket or prefix, so the same string would name another place for restic.
            raise _usage(
                location,
                "options (?...) need the URL form, s3:https://HOST/BUCKET?OPTIONS "
                "(restic would read them as part of the bucket or prefix)",
            )
        if "#" in rest:
            raise _usage(location, "a fragment is not allowed")
        url, literal_path = f"https://{host}/{path}", True
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as error:
        raise _usage(location, "the host or port is not valid") from error
    if "@" in parts.netloc:
        raise UsageError(
            "credentials must not be part of the S3 location",
            "remove them from the URL and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead",
        )
    if not parts.hostname:
        raise _usage(location, "the host is missing")
    _refuse_virtual_hosted(location, parts.hostname, literal_path)
    if port == 0:
        raise _usage(location, "the port is not valid")
    if parts.fragment or url.endswith("#"):
        raise _usage(location, "a fragment is not allowed")
    _location_options(location, parts.query)
    if literal_path:
        path = parts.path
    else:
        # Percent-escapes are decoded before the path is split, as restic's Go url.Parse does:
        # `.../bucket/my%20backups` is the prefix "my backups" for both tools, not "my%20backups".
        if _BAD_ESCAPE.search(parts.path):
            raise _usage(location, "a % in the path must start an escape of two hex digits (write %25 for %)")
        try:
            path = unquote(parts.path, errors="strict")
        except UnicodeDecodeError as error:
            raise _usage(location, "the escaped path is not UTF-8") from error
    segments = [segment for segment in path.split("/") if segment]
    if not segments:
        raise _usage(location, "the bucket is missing")
    bucket, prefix_segments = segments[0], segments[1:]
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise _usage(
            location,
            f"{bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, dots and hyphens)",
        )
    if any(segment in (".", "..") for segment in prefix_segments):
        raise _usage(location, "the prefix must not contain . or .. segments")
    endpoint = f"{parts.scheme}://{parts.netloc}"
    return endpoint, bucket, "/".join(prefix_segments), parts.query


def _refuse_virtual_hosted(location: str, hostname: str, bare: bool) -> None:
    """A bucket in the host name (BUCKET.s3.REGION.amazonaws.com/PREFIX, as the AWS console
    shows it) would be read as the host, and PREFIX's first segment as the bucket: restic reads
    it so too and then fails in minio-go ("Amazon S3 endpoint should be 's3.amazonaws.com'"), its
    manual saying to write the path-style form. Refused here with that form spelled out."""
    match = _VIRTUAL_HOSTED.fullmatch(hostname.lower())
    if match is None:
        return
    bucket, endpoint = match.group("bucket"), match.group("endpoint")
    rest = location[len("s3:") :]
    if bare:
        host, _, path = rest.partition("/")
        port = host[len(hostname) :]
        form = f"s3:{endpoint}{port}/{bucket}{'/' + path if path else ''}"
    else:
        parts = urlsplit(rest)
        port = f":{parts.port}" if parts.port else ""
        query = f"?{parts.query}" if parts.query else ""
        form = f"s3:{parts.scheme}://{endpoint}{port}/{bucket}{parts.path.rstrip('/')}{query}"
    raise UsageError(
        f"S3 location {_without_userinfo(location)!r} names bucket {bucket!r} in the host name "
        "(virtual-hosted style), which neither lockstep nor restic reads: the host must be the endpoint "
        "and the bucket the first path segment",
        f"write it path-style: {_without_userinfo(form)}",
    )


def _location_options(location: str, query: str) -> dict[str, str]:
    """The location's options (its query), restic's `-o s3.NAME=VALUE` of the same names:
    bucket-lookup (auto, dns or path), region and storage-class, each at most once."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as error:
        raise _usage(location, "the query is not NAME=VALUE pairs") from error
    options: dict[str, str] = {}
    for name, value in pairs:
        if name not in LOCATION_OPTIONS:
            raise _usage(location, f"{name!r} is not an S3 location option (they are: {', '.join(LOCATION_OPTIONS)})")
        if name in options:
            raise _usage(location, f"{name} is given twice")
        if name == "bucket-lookup" and value not in BUCKET_LOOKUPS:
            raise _usage(location, f"bucket-lookup is {value!r}: use auto, dns or path")
        if name != "bucket-lookup" and not _OPTION_VALUE.fullmatch(value):
            raise _usage(
                location, f"{name} is {value!r}: use letters, digits, _, . and - (e.g. eu-central-1, STANDARD_IA)"
            )
        if name == "storage-class":
            _check_storage_class(value)
        options[name] = value
    return options


def _check_storage_class(storage_class: str) -> None:
    if storage_class.upper() in ARCHIVE_STORAGE_CLASSES:
        raise UsageError(
            f"storage class {storage_class} keeps objects offline until they are restored, which takes hours",
            "use STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING or GLACIER_IR (instant retrieval), or move old "
            "data packs to an archive class with a lifecycle rule of the bucket",
        )


def parse_location_options(location: str) -> dict[str, str]:
    """The location's options by name (bucket-lookup, region, storage-class), those it gives."""
    query = _split_location(location)[3]  # the whole location is valid
    return _location_options(location, query)


def parse_bucket_lookup(location: str) -> str:
    """The location's bucket-lookup option (restic's -o s3.bucket-lookup): auto, dns or path."""
    return parse_location_options(location).get("bucket-lookup", "auto")


def region_of_endpoint(endpoint: str) -> str | None:
    """The region an AWS endpoint's host names (``s3.eu-central-1.amazonaws.com``), else None."""
    match = _AWS_REGIONAL_HOST.fullmatch((urlsplit(endpoint).hostname or "").lower())
    return match.group(1) if match else None


def addressing_style(endpoint: str, bucket: str, bucket_lookup: str) -> Literal["virtual", "path"]:
    """botocore's addressing style for restic's bucket lookup: `auto` is minio-go's, virtual-hosted
    for AWS and Google endpoints (but not for a dotted bucket over https, which the wildcard
    certificate does not cover), path-style everywhere else."""
    if bucket_lookup == "dns":
        return "virtual"
    if bucket_lookup == "path":
        return "path"
    parts = urlsplit(endpoint)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and "." in bucket:
        return "path"
    aws = host == "s3.amazonaws.com" or host.endswith((".amazonaws.com", ".amazonaws.com.cn"))
    return "virtual" if aws or host == "storage.googleapis.com" else "path"


class S3Backend:
    """Files as objects in one bucket, under an optional key prefix."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        prefix: str = "",
        *,
        retries: int = 3,
        connect_timeout: float = 5,
        read_timeout: float = 60,
        bucket_lookup: str = "auto",
        region: str | None = None,
        storage_class: str | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        if bucket_lookup not in BUCKET_LOOKUPS:
            raise UsageError(f"bucket-lookup is {bucket_lookup!r}", "use auto, dns or path")
        self.bucket_lookup = bucket_lookup
        if storage_class is not None:
            _check_storage_class(storage_class)
        # restic's -o s3.storage-class: every repository file is PUT in it (see `save`).
        self.storage_class = storage_class
        self._region_option = region
        self.retries = retries
        self.prefix = prefix.strip("/")
        access_key = os.environ.get("AWS_ACCESS_KEY_ID", "")
        secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        session_token = os.environ.get("AWS_SESSION_TOKEN") or None
        if bool(access_key) != bool(secret_key):
            raise UsageError(
                f"incomplete credentials for {self.location}",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (both of them)",
            )
        # As restic: the location's region, else AWS_DEFAULT_REGION, else the one an AWS
        # endpoint's host names (minio-go's), else us-east-1. It signs every request and is where
        # `create` makes a missing bucket.
        self.region = (
            region or os.environ.get("AWS_DEFAULT_REGION") or region_of_endpoint(self.endpoint) or DEFAULT_REGION
        )
        config = Config(
            s3={"addressing_style": addressing_style(self.endpoint, bucket, bucket_lookup)},
            # botocore's "max_attempts" counts retries after the first attempt, not attempts.
            retries={"max_attempts": retries, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=10,
            # Newer botocore adds CRC checksums and aws-chunked uploads by default, which many
            # S3-compatible servers reject; PUTs carry Content-MD5 instead (see `save`).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session of our own: the default session is shared and not thread-safe.
        if access_key:
            # Keys passed explicitly: nothing comes from ~/.aws files or instance metadata, and
            # AWS_PROFILE is ignored, so a profile that exists only for other tools cannot break us.
            core_session = botocore.session.Session(session_vars={"profile": (None, None, None, None)})
            session = boto3.session.Session(
                botocore_session=core_session,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                aws_session_token=session_token,
                region_name=self.region,
            )
            found: tuple[str | None, ...] = (access_key, secret_key, session_token)
        else:
            core_session, found = self._session_from_aws_configuration()
            session = boto3.session.Session(botocore_session=core_session, region_name=self.region)
        # Kept only to scrub them from any server text we repeat in an error.
        self._secrets = tuple(value for value in found if value)
        self._client: S3Client = session.client("s3", endpoint_url=self.endpoint, config=config)

    def _session_from_aws_configuration(self) -> tuple[botocore.session.Session, tuple[str | None, ...]]:
        """A session with the credentials restic would find without the key variables: the
        shared credentials and config files for AWS_PROFILE (or "default"), then a container or
        instance role. Refreshable role credentials stay refreshable."""
        hint = (
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or put them in "
            "~/.aws/credentials (AWS_PROFILE chooses the profile)"
        )
        core_session = botocore.session.Session()
        try:
            credentials = core_session.get_credentials()
        except ProfileNotFound as error:
            raise UsageError(
                f"AWS_PROFILE names the profile {os.environ.get('AWS_PROFILE', '')!r}, which no AWS "
                f"config or credentials file defines, so there are no credentials for {self.location}",
                hint,
            ) from error
        except BotoCoreError as error:  # a malformed file, a failing credential_process, ...
            raise UsageError(
                f"cannot read the AWS credentials for {self.location}: {type(error).__name__}", hint
            ) from error
        if credentials is None:
            raise UsageError(f"no credentials for {self.location}", hint)
        frozen = credentials.get_frozen_credentials()
        return core_session, (frozen.access_key, frozen.secret_key, frozen.token)

    @classmethod
    def from_location(cls, location: str) -> S3Backend:
        """Build a backend from ``s3:[http(s)://]HOST[:PORT]/BUCKET[/PREFIX]``; nothing is contacted."""
        endpoint, bucket, prefix = parse_location(location)
        options = parse_location_options(location)
        return cls(
            endpoint,
            bucket,
            prefix,
            bucket_lookup=options.get("bucket-lookup", "auto"),
            region=options.get("region"),
            storage_class=options.get("storage-class"),
        )

    @property
    def location(self) -> str:
        """The location string: escaped, so that it parses back to this very prefix."""
        location = f"s3:{self.endpoint}/{self.bucket}"
        if self.prefix:
            location += f"/{quote(self.prefix, safe=_PREFIX_SAFE)}"
        options = [
            (name, value)
            for name, value in (
                ("bucket-lookup", None if self.bucket_lookup == "auto" else self.bucket_lookup),
                ("region", self._region_option),
                ("storage-class", self.storage_class),
            )
            if value is not None
        ]
        return f"{location}?{urlencode(options)}" if options else location

    def __repr__(self) -> str:
        return f"S3Backend({self.location!r})"

    def _key(self, file_type: FileType, name: str) -> str:
        path = relative_path(file_type, name)
        return f"{self.prefix}/{path}" if self.prefix else path

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _missing(self, key: str) -> FileMissing:
        return FileMissing(f"{key} is missing from {self.location}")

    def _storage_error(self, error: Exception, action: str, key: str | None = None) -> StorageError:
        """Describe a failed request in terms the user can act on, without any credentials."""
        target = f"{key} in {self.location}" if key else self.location
        if isinstance(error, SSLError):
            return StorageError(
                f"TLS connection to S3 endpoint {self.endpoint} failed",
                "check the certificate (AWS_CA_BUNDLE names a custom CA) or use http:// for a local server",
            )
        if isinstance(error, ProxyConnectionError):
            return StorageError(
                f"cannot reach S3 endpoint {self.endpoint} through the proxy",
                "check HTTP_PROXY/HTTPS_PROXY/NO_PROXY",
            )
        if isinstance(error, BotoConnectionError):
            return StorageError(
                f"cannot reach S3 endpoint {self.endpoint}", "check the URL and that the server is running"
            )
        if isinstance(error, ClientError):
            code = _error_code(error)
            if code in _CREDENTIAL_CODES:
                return StorageError(
                    f"the S3 server refused the credentials ({code}) when trying to {action} {target}",
                    f"{CREDENTIAL_HINT}, and that they may access bucket {self.bucket}",
                )
            if code == "NoSuchBucket":
                return StorageError(
                    f"bucket {self.bucket} does not exist at {self.endpoint}",
                    "create the repository first, or check the bucket name",
                )
            if code in _REGION_CODES:
                return StorageError(
                    f"cannot {action} {target}: {code}: {self._scrub(_error_message(error))}",
                    "set AWS_DEFAULT_REGION to the bucket's region",
                )
            detail = self._scrub(_error_message(error)) or "no details"
            return StorageError(f"cannot {action} {target}: {code or 'error'}: {detail}")
        if isinstance(error, BotoCoreError):
            return StorageError(
                f"cannot {action} {target}: {self._scrub(str(error))}",
                "check the network connection to the S3 endpoint and try again",
            )
        return StorageError(f"cannot {action} {target}: {type(error).__name__}")

    def _ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as error:
            if not _is_missing(error):
                raise self._storage_error(error, "check bucket") from error
        except BotoCoreError as error:
            raise self._storage_error(error, "check bucket") from error
        try:
            if self.region == DEFAULT_REGION:
                self._client.create_bucket(Bucket=self.bucket)
            else:
                self._client.create_bucket(
                    Bucket=self.bucket,
                    # Other S3-compatible servers accept regions the AWS stubs do not list.
                    CreateBucketConfiguration={"LocationConstraint": cast("BucketLocationConstraintType", self.region)},
                )
        except ClientError as error:
            code = _error_code(error)
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists":
                raise StorageError(
                    f"bucket {self.bucket} already exists and belongs to someone else",
                    "choose another bucket name",
                ) from error
            raise self._storage_error(error, "create bucket") from error
        except BotoCoreError as error:
            raise self._storage_error(error, "create bucket") from error

    def create(self) -> None:
        self._ensure_bucket()
        if self.exists(FileType.CONFIG, "config"):
            raise RepositoryExists(self.location)

    def save(self, file_type: FileType, name: str, data: bytes | bytearray) -> None:
        # restic PUTs every file in the storage class (archive classes, refused here, only data
        # packs). lockstep's own documents (records, history) stay in the bucket's default: they
        # are small and rewritten, which infrequent-access classes bill by 128 KiB and 30 days.
        self._put(self._key(file_type, name), data, storage_class=self.storage_class)

    def _put(
        self, key: str, data: bytes | bytearray, only_if_absent: bool = False, storage_class: str | None = None
    ) -> bool:
        """PUT an object; with only_if_absent, a conditional create (If-None-Match: *)."""
        digest = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
        request: PutObjectRequestTypeDef = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": cast("bytes", data),  # botocore takes a bytearray too (a pack: PackWriter)
            "ContentType": "application/octet-stream",
            "ContentMD5": digest,
        }
        if only_if_absent:
            request["IfNoneMatch"] = "*"
        elif storage_class is not None:
            # Any server's class name (Ceph's are configurable), not only AWS's.
            request["StorageClass"] = cast("StorageClassType", storage_class)
        try:
            self._client.put_object(**request)
        except ClientError as error:
            if only_if_absent and _error_code(error) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise self._storage_error(error, "write", key) from error
        except BotoCoreError as error:
            raise self._storage_error(error, "write", key) from error
        return True

    def load(self, file_type: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"offset and length must not be negative (got {offset}, {length})")
        key = self._key(file_type, name)
        if length == 0:
            self.size(file_type, name)  # still raises FileMissing for a missing file
            return b""
        try:
            if offset == 0 and length is None:
                return self._get(key)
            end = "" if length is None else str(offset + length - 1)
            return self._get(key, f"bytes={offset}-{end}")
        except ClientError as error:
            if _error_code(error) in ("InvalidRange", "416"):
                return b""  # the range starts at or past the end: like reading past EOF on disk
            if _is_missing(error):
                raise self._missing(key) from error
            raise self._storage_error(error, "read", key) from error
        except BotoCoreError as error:
            raise self._storage_error(error, "read", key) from error

    def load_pieces(
        self, file_type: FileType, name: str, offset: int, lengths: Sequence[int]
    ) -> Generator[bytes | memoryview, None, None]:
        key = self._key(file_type, name)
        if offset < 0 or any(length < 0 for length in lengths):
            raise ValueError(f"offset and lengths must not be negative (got {offset}, {list(lengths)})")
        if not sum(lengths):
            self.size(file_type, name)  # still raises FileMissing for a missing file
        try:
            yield from self._get_pieces(key, offset, lengths)
        except ClientError as error:
            if _is_missing(error):
                raise self._missing(key) from error
            raise self._storage_error(error, "read", key) from error
        except BotoCoreError as error:
            raise self._storage_error(error, "read", key) from error

    def _get_pieces(self, key: str, offset: int, lengths: Sequence[int]) -> Generator[bytes | memoryview, None, None]:
        """`_get` of a range, streamed piece by piece; a body that breaks off or stalls is asked
        for again from where it broke, up to `retries` times in all."""
        position, end = offset, offset + sum(lengths)
        body = self._open_range(key, position, end)
        attempt = 0
        try:
            for length in lengths:
                parts: list[bytes] = []
                wanted = length
                while wanted and body is not None:
                    try:
                        part = body.read(wanted)
                    except _BODY_ERRORS:
                        attempt += 1
                        if attempt > self.retries:
                            raise
                        body.close()
                        time.sleep(_BODY_RETRY_DELAY_SECONDS * 2 ** (attempt - 1))
                        body = self._open_range(key, position, end)
                        continue
                    if not part:  # the object ends here
                        body.close()
                        body = None
                        break
                    parts.append(part)
                    wanted -= len(part)
                    position += len(part)
                yield parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            if body is not None:
                body.close()

    def _open_range(self, key: str, start: int, end: int) -> StreamingBody | None:
        """The body of a GET of bytes start..end-1; None when the object ends before `start`."""
        if start >= end:
            return None
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"]
        except ClientError as error:
            if _error_code(error) in ("InvalidRange", "416"):
                return None
            raise

    def _get(self, key: str, byte_range: str | None = None) -> bytes:
        """GET an object (or a range of it) and read the whole body. A body that breaks off or
        stalls part-way is fetched again, up to `retries` times, as restic's backends retry a
        failed load: one dropped connection must not end a restore or check of many gigabytes."""
        attempt = 0
        while True:
            if byte_range is None:
                response = self._client.get_object(Bucket=self.bucket, Key=key)
            else:
                response = self._client.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
            body = response["Body"]
            try:
                return body.read()
            except _BODY_ERRORS:
                attempt += 1
                if attempt > self.retries:
                    raise
            finally:
                body.close()
            time.sleep(_BODY_RETRY_DELAY_SECONDS * 2 ** (attempt - 1))

    def _head(self, file_type: FileType, name: str) -> int | None:
        """The object's size, or None when it (or the bucket) does not exist."""
        key = self._key(file_type, name)
        try:
            return self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except ClientError as error:
            if _is_missing(error):
                return None
            raise self._storage_error(error, "look up", key) from error
        except BotoCoreError as error:
            raise self._storage_error(error, "look up", key) from error

    def size(self, file_type: FileType, name: str) -> int:
        size = self._head(file_type, name)
        if size is None:
            raise self._missing(self._key(file_type, name))
        return size

    def exists(self, file_type: FileType, name: str) -> bool:
        return self._head(file_type, name) is not None

    def list(self, file_type: FileType) -> Iterator[tuple[str, int]]:
        if file_type is FileType.CONFIG:
            return
        directory = f"{self.prefix}/{file_type.value}/" if self.prefix else f"{file_type.value}/"
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=directory):
                for item in page.get("Contents", []):
                    key = item.get("Key", "")
                    name = key.rpartition("/")[2]
                    # Only objects where `load` will look for them: packs in data/XX/, others flat.
                    if is_storage_id(name) and key == self._key(file_type, name):
                        yield name, item.get("Size", 0)
        except ClientError as error:
            if _error_code(error) == "NoSuchBucket":
                return
            raise self._storage_error(error, "list", directory) from error
        except BotoCoreError as error:
            raise self._storage_error(error, "list", directory) from error

    def remove(self, file_type: FileType, name: str) -> None:
        key = self._key(file_type, name)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _is_missing(error):
                return
            raise self._storage_error(error, "delete", key) from error
        except BotoCoreError as error:
            raise self._storage_error(error, "delete", key) from error

    def _document_key(self, path: str) -> str:
        relative = f"{DOCUMENTS_DIRECTORY}/{check_document_path(path)}"
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def remove_stale_temporary_files(self, older_than_seconds: float) -> int:
        """A PUT is atomic and leaves no object behind when it is cut off, but a multipart upload
        (restic's client sends large packs in parts) cut off by a kill stays, its parts billed,
        until aborted or a lifecycle rule expires it: abort those (see abort_stale_multipart_uploads)."""
        return self.abort_stale_multipart_uploads(older_than_seconds)

    def abort_stale_multipart_uploads(self, older_than_seconds: float, now: float | None = None) -> int:
        """Abort the unfinished multipart uploads under the prefix initiated more than
        `older_than_seconds` before `now` (the current time; a parameter only so that tests can
        age an upload, the server setting its initiation time); how many were aborted. A server
        without the API (NotImplemented) or a policy that denies listing them (AccessDenied:
        prune needs no such permission otherwise) leaves them, and prune goes on."""
        limit = (time.time() if now is None else now) - older_than_seconds
        listing: dict[str, str] = {"Bucket": self.bucket}
        if self.prefix:
            listing["Prefix"] = f"{self.prefix}/"  # not the repository at PREFIX2 beside it
        stale: list[tuple[str, str]] = []
        try:
            for page in self._client.get_paginator("list_multipart_uploads").paginate(**listing):  # type: ignore[arg-type]
                for upload in page.get("Uploads", []):
                    initiated = upload.get("Initiated")
                    if "Key" in upload and "UploadId" in upload and initiated and initiated.timestamp() <= limit:
                        stale.append((upload["Key"], upload["UploadId"]))
        except ClientError as error:
            if _error_code(error) in ("NoSuchBucket", "NotImplemented", "AccessDenied"):
                return 0
            raise self._storage_error(error, "list the multipart uploads in", None) from error
        except BotoCoreError as error:
            raise self._storage_error(error, "list the multipart uploads in", None) from error
        aborted = 0
        for key, upload_id in stale:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError as error:
                if _error_code(error) == "NoSuchUpload":
                    continue  # finished or aborted meanwhile
                raise self._storage_error(error, "abort the multipart upload of", key) from error
            except BotoCoreError as error:
                raise self._storage_error(error, "abort the multipart upload of", key) from error
            aborted += 1
        return aborted

    def save_document(self, path: str, data: bytes) -> None:
        self._put(self._document_key(path), data)

    def create_document(self, path: str, data: bytes) -> bool:
        return self._put(self._document_key(path), data, only_if_absent=True)

    def load_document(self, path: str) -> bytes:
        key = self._document_key(path)
        try:
            return self._get(key)
        except ClientError as error:
            if _is_missing(error):
                raise self._missing(key) from error
            raise self._storage_error(error, "read", key) from error
        except BotoCoreError as error:
            raise self._storage_error(error, "read", key) from error

    def list_documents(self, directory: str) -> Iterator[str]:
        prefix = self._document_key(directory) + "/"
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for item in page.get("Contents", []):
                    name = item.get("Key", "")[len(prefix) :]
                    if name and not name.startswith("."):
                        yield f"{directory}/{name}"
        except ClientError as error:
            if _error_code(error) == "NoSuchBucket":
                return
            raise self._storage_error(error, "list", prefix) from error
        except BotoCoreError as error:
            raise self._storage_error(error, "list", prefix) from error

    def remove_document(self, path: str) -> None:
        key = self._document_key(path)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _is_missing(error):
                return
            raise self._storage_error(error, "delete", key) from error
        except BotoCoreError as error:
            raise self._storage_error(error, "delete", key) from error

    def close(self) -> None:
        self._client.close()
