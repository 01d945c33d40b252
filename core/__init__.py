"""The neutral core every package imports: error classes (`core.errors`), the typed config
loader and TOML writer (`core.config`), atomic file writes (`core.files`).

Standard library only, and it imports no other nodd package, so the import graph stays
`pipeline -> {data_prep, model, cluster} -> core` with no cycles (tests/test_imports.py checks it).
"""
