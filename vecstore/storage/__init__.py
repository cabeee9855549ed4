"""Durable storage: Arrow segment files, a write-ahead log and an atomically swapped manifest.

Knows codecs only through their config dicts (a rescoring codec is rebuilt from its
config only to learn its code size, when log records holding its codes are checked).
See ``database_dir`` for the layout of a database and ``collection_store`` for that of
a collection.
"""
