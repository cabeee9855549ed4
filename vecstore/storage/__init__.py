"""Durable storage: Arrow segment files, a write-ahead log and an atomically swapped manifest.

Knows codecs only through their config dicts. See ``database_dir`` for the layout of a
database and ``collection_store`` for that of a collection.
"""
