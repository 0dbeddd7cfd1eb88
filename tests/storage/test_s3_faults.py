"""S3Backend against a real S3 server (moto) behind a proxy that breaks requests, as a flaky
network or a struggling server does. Without moto these tests skip (fail under
LOCKSTEP_REQUIRE_ALL=1)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import pytest

from lockstep.errors import StorageError
from lockstep.storage.base import FileType
from lockstep.storage.s3 import S3Backend
from tests.s3_fault_proxy import FaultProxy
from tests.storage.test_s3_backend import s3_endpoint

__all__ = ["s3_endpoint"]  # the module-scoped moto server fixture, shared


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def backend(proxy: FaultProxy) -> Iterator[S3Backend]:
    backend = S3Backend(proxy.endpoint, f"lockstep-test-{uuid.uuid4().hex[:16]}", "repo")
    backend.create()
    yield backend
    backend.close()


def test_a_body_cut_off_part_way_is_fetched_again(backend: S3Backend, proxy: FaultProxy) -> None:
    """botocore retries failed requests but not the reading of a body it already returned: one
    dropped connection during a restore or `check --read-data` ended the whole command."""
    name = secrets.token_hex(32)
    data = secrets.token_bytes(256 * 1024)
    backend.save(FileType.PACK, name, data)

    proxy.cut_bodies(2, method="GET", path_contains=f"/data/{name[:2]}/{name}")
    assert backend.load(FileType.PACK, name) == data
    assert len(proxy.broken) == 2

    proxy.cut_bodies(2, method="GET", path_contains=f"/data/{name[:2]}/{name}")
    assert backend.load(FileType.PACK, name, 1000, 5000) == data[1000:6000]
    assert len(proxy.broken) == 4


def test_a_document_read_is_retried_too(backend: S3Backend, proxy: FaultProxy) -> None:
    backend.save_document("locks/production", b'{"holder": "deploy"}' * 100)
    proxy.cut_bodies(1, method="GET", path_contains="/lockstep/locks/production")
    assert backend.load_document("locks/production") == b'{"holder": "deploy"}' * 100
    assert len(proxy.broken) == 1


def test_a_body_that_keeps_breaking_is_a_storage_error(backend: S3Backend, proxy: FaultProxy) -> None:
    """The retries are bounded: a server that never finishes an answer is reported, and the
    message names the object and the endpoint but not the credentials."""
    name = secrets.token_hex(32)
    backend.save(FileType.INDEX, name, secrets.token_bytes(4096))
    proxy.cut_bodies(100, method="GET", path_contains=f"/index/{name}")
    with pytest.raises(StorageError) as raised:
        backend.load(FileType.INDEX, name)
    assert len(proxy.broken) == backend.retries + 1
    assert f"index/{name}" in raised.value.message
    assert "testing" not in str(raised.value)
