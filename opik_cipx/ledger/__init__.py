"""The ledger stage: a local SQLite record of every Messages API call, after `materialize`.

`entry` derives a call's ledger rows from its capture and the records the materializer made
for it (a pure function); `schema` holds the tables and their forward migrations; `db` opens
`$CIPX_HOME/ledger.db` for the writer (migrated) and for readers (read-only); `store` is the
writer (upserts keyed by capture id, retries, retention); `queries` answers `report` and the
dashboard; `figures` is how every reader computes and words a call's or a group's figures;
`periods` reads `7d` and ISO dates and names local days and weeks. See
docs/ARCHITECTURE.md, "Ledger".
"""
