"""Opening ledger.db: readers never write (an older or newer file is one clear line and stays
byte for byte as it was); only the writer migrates."""

import os
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.commands.statusline import read_only_uri as statusline_read_only_uri
from opik_cipx.ledger.db import connect, open_reader, read_only_uri
from opik_cipx.ledger.entry import ledger_entry
from opik_cipx.ledger.schema import LATEST, SchemaError
from opik_cipx.materialize.materializer import Materializer
from opik_cipx.materialize.pricing import load_price_table
from tests.claude_code_corpus import exchanges
from tests.ledger.test_queries import older_ledger
from tests.materialize.test_materializer import config


@pytest.fixture(scope="module")
def entries(tmp_path_factory):
    """The ledger entries of the recorded `tools` session."""
    materializer = Materializer(config(tmp_path_factory.mktemp("db")), load_price_table())
    results = (materializer.materialize(c) for _, c in exchanges("tools"))
    return [ledger_entry(r.call) for r in results if r.call]


def files_of(path) -> dict[str, bytes]:
    """The ledger and its WAL companions, by name, with their content."""
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name)}


def user_version(path) -> int:
    conn = sqlite3.connect(read_only_uri(str(path)), uri=True)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("version", [1, 2])
def test_a_reader_leaves_an_older_ledger_as_it_found_it(tmp_path, entries, version):
    path = tmp_path / "ledger.db"
    older_ledger(path, entries, version)
    os.chmod(path, 0o600)
    before, stat = path.read_bytes(), path.stat()
    with pytest.raises(SchemaError) as refused:
        open_reader(path)
    message = str(refused.value)
    assert message == (f"ledger schema v{version} was written by an older opik-cipx (this one reads v{LATEST}); "
                       "a daemon of this version upgrades it in place when it starts (`opik-cipx restart`)")
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert user_version(path) == version
    assert files_of(path).keys() <= {"ledger.db", "ledger.db-wal", "ledger.db-shm"}
    assert all(len(content) == 0 for name, content in files_of(path).items() if name == "ledger.db-wal")
    assert all((path.parent / name).stat().st_mode & 0o777 == 0o600 for name in files_of(path))
    connect(path, busy_timeout_s=1.0).close()  # the writer migrates it
    assert open_reader(path).execute("SELECT count(*) FROM calls").fetchone()[0] == len(entries)


def test_a_newer_ledger_is_one_line_and_left_alone(tmp_path):
    path = tmp_path / "ledger.db"
    connect(path, busy_timeout_s=1.0).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(SchemaError, match=f"^ledger schema v{LATEST + 1} was written by a newer opik-cipx "
                                          f"\\(this one knows up to v{LATEST}\\); upgrade opik-cipx$"):
        open_reader(path)
    with pytest.raises(SchemaError, match="newer opik-cipx"):
        connect(path, busy_timeout_s=1.0)  # nor does the writer touch it
    assert path.read_bytes() == before


def test_no_ledger_or_one_the_writer_has_not_built_yet_reads_as_none(tmp_path):
    path = tmp_path / "ledger.db"
    assert open_reader(path) is None and not path.exists()
    path.touch()  # the writer creates the file, then migrates it
    assert open_reader(path) is None and path.read_bytes() == b""


def test_a_reader_cannot_write_and_sees_the_writers_commits(tmp_path, entries):
    path = tmp_path / "ledger.db"
    writer = connect(path, busy_timeout_s=1.0)
    reader = open_reader(path)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("DELETE FROM calls")
    older = reader.execute("SELECT count(*) FROM calls").fetchone()[0]
    writer.execute("INSERT INTO days VALUES ('2026-11-24', 1, 2, 3)")
    assert reader.execute("SELECT count(*) FROM days").fetchone()[0] == 1 and older == 0
    reader.close()
    writer.close()


@given(name=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1,
                    max_size=20))
def test_the_status_lines_uri_is_the_readers_and_any_file_name_opens(tmp_path_factory, name):
    directory = tmp_path_factory.getbasetemp() / "uri names"
    directory.mkdir(exist_ok=True)
    path = directory / name
    assert statusline_read_only_uri(str(path)) == read_only_uri(str(path))
    if name in (".", ".."):
        return
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    reader = sqlite3.connect(read_only_uri(str(path)), uri=True)
    assert reader.execute("PRAGMA user_version").fetchone()[0] == 7
    reader.close()


def test_every_reader_says_in_one_line_that_the_daemon_will_upgrade_it_and_changes_nothing(tmp_path, entries):
    """`report`, `status`, the status line and the dashboard on a ledger of schema v2 that a
    running older daemon may still be writing."""
    from opik_cipx.views.dashboard import Dashboard
    from tests.conftest import run_command

    home = tmp_path / "cipx-home"
    home.mkdir()
    path = home / "ledger.db"
    older_ledger(path, entries, version=2)
    before = path.read_bytes()
    report = run_command(home, "report")
    assert report.returncode == 1 and report.stdout == "" and "Traceback" not in report.stderr
    assert report.stderr == (f"opik-cipx: cannot read {path}: ledger schema v2 was written by an older opik-cipx "
                             f"(this one reads v{LATEST}); a daemon of this version upgrades it in place when it "
                             "starts (`opik-cipx restart`)\n")
    status = run_command(home, "status")
    assert status.returncode == 0
    assert "  today        ! ledger schema v2 was written by an older opik-cipx" in status.stdout
    statusline = run_command(home, "statusline", input='{"session_id": "s"}')
    assert (statusline.returncode, statusline.stdout) == (
        0, "opik-cipx: ledger.db is from an older opik-cipx; `opik-cipx restart` upgrades it\n")
    code, _, page = Dashboard(path, home / "captures").route("/")
    assert code == 503 and b"ledger schema v2 was written by an older opik-cipx" in page
    assert b"replay --ledger" not in page  # nothing is damaged
    assert path.read_bytes() == before and user_version(path) == 2
