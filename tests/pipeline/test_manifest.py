"""The manifest survives a trip through JSON, and a damaged one is reported, not half-read."""

from __future__ import annotations

import json

import pytest

from lockstep.errors import IntegrityError
from lockstep.pipeline.manifest import (
    FORMAT_VERSION,
    CodeRecord,
    DatabaseRecord,
    FileRecord,
    LargeObjectsRecord,
    Manifest,
    MaterializedViewRecord,
    SequenceRecord,
    TableRecord,
)


def sample_manifest() -> Manifest:
    return Manifest(
        message="before the price change",
        author="Ada <ada@example.org>",
        created="2026-01-02T03:04:05Z",
        environment="production",
        tags=["release"],
        lockstep_version="0.1.0",
        hostname="web-1",
        code=CodeRecord(kind="git", commit="a" * 40, branch="main", author="Ada <ada@example.org>", dirty=False),
        databases={
            "main": DatabaseRecord(
                engine="postgresql",
                server_version="15.4",
                dump_format="postgresql-custom",
                path="/databases/main.dump",
                size=1234,
                sha256="b" * 64,
                tables=[TableRecord("public.customers", 500, "c" * 32)],
                migration_version="42",
                migration_table="alembic_version",
            )
        },
        files=[
            FileRecord("/files/config/config/app.yml", "config", 10, "d" * 64),
            FileRecord("/files/secrets/.env", "secret", 20, "e" * 64),
        ],
    )


def test_manifest_round_trips_through_its_stored_json() -> None:
    """What is stored as /manifest.json reads back equal, field for field."""
    manifest = sample_manifest()
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_consistency_markers_round_trip_and_stay_out_of_ordinary_manifests() -> None:
    """`consistent: false` and `inspected_note` are written only when they say something."""
    manifest = sample_manifest()
    plain = json.loads(manifest.to_json())["databases"]["main"]
    assert "inspected_note" not in plain and "consistent" not in plain["tables"][0]
    record = manifest.databases["main"]
    marked = DatabaseRecord(
        **{
            **record.__dict__,
            "tables": [TableRecord("shop.sessions", 3, "f" * 16, consistent=False)],
            "inspected": "dump-except-nontransactional",
            "inspected_note": "shop.sessions (MyISAM) is outside the dump's snapshot",
        }
    )
    document = marked.to_document()
    assert document["tables"][0]["consistent"] is False
    assert DatabaseRecord.from_document(json.loads(json.dumps(document))) == marked


def test_history_and_warnings_round_trip_and_stay_out_of_ordinary_manifests() -> None:
    """A system-versioned table's history fingerprint and a dump's warnings are written only
    when there are some; the manifest's `warnings` name their database."""
    manifest = sample_manifest()
    plain = json.loads(manifest.to_json())["databases"]["main"]
    assert "warnings" not in plain and "history_rows" not in plain["tables"][0]
    assert manifest.warnings == []
    record = DatabaseRecord(
        **{
            **manifest.databases["main"].__dict__,
            "tables": [TableRecord("prices", 2, "7" * 20, history_rows=5, history_checksum="9" * 20)],
            "warnings": ["FLOAT column prices.net: rounded"],
        }
    )
    document = json.loads(json.dumps(record.to_document()))
    assert document["tables"][0]["history_rows"] == 5 and document["warnings"] == ["FLOAT column prices.net: rounded"]
    assert DatabaseRecord.from_document(document) == record
    with_warning = Manifest(**{**manifest.__dict__, "databases": {"shop": record}})
    assert with_warning.warnings == ["database shop: FLOAT column prices.net: rounded"]


def test_manifest_document_has_the_documented_fields() -> None:
    """Scripts read these keys: their names and the format version are API."""
    document = json.loads(sample_manifest().to_json())
    assert document["format_version"] == FORMAT_VERSION == 1
    assert document["kind"] == "manual"
    assert set(document) >= {"message", "author", "created", "environment", "tags", "lockstep_version", "hostname"}
    assert document["code"] == {
        "kind": "git",
        "commit": "a" * 40,
        "branch": "main",
        "author": "Ada <ada@example.org>",
        "dirty": False,
        "path": None,
    }
    database = document["databases"]["main"]
    assert database["tables"] == [{"name": "public.customers", "rows": 500, "checksum": "c" * 32}]
    assert database["inspected"] == "after-dump"
    assert document["files"][1] == {"path": "/files/secrets/.env", "kind": "secret", "size": 20, "sha256": "e" * 64}
    assert "id" not in document  # the ID exists only once the snapshot is written


def test_stored_size_sums_dumps_and_files() -> None:
    assert sample_manifest().stored_size == 1234 + 10 + 20


def test_manifest_without_code_reads_back_as_none() -> None:
    manifest = Manifest(
        message=None,
        author="ops",
        created="2026-01-02T03:04:05Z",
        environment=None,
        tags=[],
        lockstep_version="0.1.0",
        hostname="h",
        code=None,
    )
    assert Manifest.from_json(manifest.to_json()).code is None


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"format_version": 2, "created": "x"}).encode(),
        json.dumps({"format_version": 1}).encode(),
        json.dumps(
            {"format_version": 1, "created": "x", "files": [{"path": "/p", "kind": "other", "size": 1, "sha256": ""}]}
        ).encode(),
    ],
)
def test_a_damaged_manifest_is_an_integrity_error(data: bytes) -> None:
    with pytest.raises(IntegrityError, match="not a valid lockstep manifest"):
        Manifest.from_json(data)


def test_the_checksum_algorithm_is_recorded_and_optional() -> None:
    """New manifests name how their checksums were computed; older ones, without the key, read as None."""
    manifest = sample_manifest()
    record = manifest.databases["main"]
    named = DatabaseRecord(**{**record.__dict__, "checksum_algorithm": "row-hash-sum"})
    document = named.to_document()
    assert document["checksum_algorithm"] == "row-hash-sum"
    assert DatabaseRecord.from_document(document) == named
    assert "checksum_algorithm" not in record.to_document()
    assert DatabaseRecord.from_document(record.to_document()).checksum_algorithm is None


def test_sequences_large_objects_and_materialized_views_round_trip_under_readable_names() -> None:
    """PostgreSQL's fields beyond tables are written under names a `restic dump` reader
    understands, read back equal, and are absent (None: not checked) in older manifests."""
    manifest = sample_manifest()
    plain = json.loads(manifest.to_json())["databases"]["main"]
    assert not {"sequences", "large_objects", "materialized_views"} & set(plain)
    assert DatabaseRecord.from_document(plain).sequences is None
    record = DatabaseRecord(
        **{
            **manifest.databases["main"].__dict__,
            "sequences": [SequenceRecord("invoice_numbers", 4242, True)],
            "large_objects": LargeObjectsRecord(2, "0123456789abcdef"),
            "materialized_views": [
                MaterializedViewRecord("big_orders", True, 10, "fedcba9876543210"),
                MaterializedViewRecord("report", False, 0, "0" * 16),
            ],
        }
    )
    document = json.loads(json.dumps(record.to_document()))
    assert document["sequences"] == [{"name": "invoice_numbers", "last_value": 4242, "is_called": True}]
    assert document["large_objects"] == {"count": 2, "checksum": "0123456789abcdef"}
    assert document["materialized_views"][1] == {"name": "report", "populated": False, "rows": 0, "checksum": "0" * 16}
    assert DatabaseRecord.from_document(document) == record


def test_rows_excluded_round_trips_and_an_older_manifest_has_none() -> None:
    """The tables dumped without rows are listed only when there are some; a manifest written
    before exclude_table_data existed reads back with none."""
    manifest = sample_manifest()
    plain = json.loads(manifest.to_json())["databases"]["main"]
    assert "rows_excluded" not in plain
    assert DatabaseRecord.from_document(plain).rows_excluded == []
    record = DatabaseRecord(**{**manifest.databases["main"].__dict__, "rows_excluded": ["sessions", "audit.log"]})
    document = json.loads(json.dumps(record.to_document()))
    assert document["rows_excluded"] == ["sessions", "audit.log"]
    assert DatabaseRecord.from_document(document) == record
