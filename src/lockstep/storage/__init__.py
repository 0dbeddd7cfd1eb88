"""Where repository files live: local disk or S3-compatible object storage.

Each backend stores opaque, immutable files by (type, name) in restic's default layout and
knows nothing about encryption or what the files mean.
"""
