"""The ledger stage: a local SQLite record of every Messages API call, after `materialize`.

`entry` derives a call's ledger rows from its capture and the records the materializer made
for it (a pure function); `store` keeps them in `$CIPX_HOME/ledger.db` (schema, migrations,
upserts keyed by capture id, retention); `queries` answers `report` and the dashboard. See
docs/ARCHITECTURE.md, "Ledger".
"""
