"""The repository engine: a deduplicated, compressed, encrypted store in restic's format v2.

It knows nothing about deploys. Layers inside it, from the bottom:
crypto → packs, index, trees, snapshots, locks → repository → archiver, restorer, checker, pruner.
"""
