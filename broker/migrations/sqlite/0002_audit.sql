-- The audit log (docs/audit.md). Same tables and meaning as
-- migrations/postgres/0001_audit.sql.

-- One row per record; seq is the record's leaf index in the Merkle tree.
-- body is the canonical bytes (JSON) the leaf hash is computed over; it is
-- NULL once the record is purged past retention (the leaf hash stays).
CREATE TABLE audit_records (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT NOT NULL,
    client TEXT NOT NULL,
    operator TEXT NOT NULL,
    purpose TEXT NOT NULL,
    outcome TEXT NOT NULL,
    leaf_hash BLOB NOT NULL,
    body TEXT
);
CREATE INDEX audit_records_time ON audit_records (time_ms);

-- What queries look records up by: `subject:<keyed hash of an identity
-- number>`, `client:<client identity>`, `operator:<operator id>`. A commit
-- appends a record's keys to audit_index_recent, in seq order (cheap to
-- write: no random inserts into an index while callers wait); the writer
-- moves them into audit_index in large batches. Queries read both.
CREATE TABLE audit_index (
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)
);
CREATE INDEX audit_index_seq ON audit_index (seq);
CREATE TABLE audit_index_recent (
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (seq, key)
);

-- Signed checkpoints: the Merkle root of the first tree_size records.
CREATE TABLE audit_checkpoints (
    tree_size INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    root BLOB NOT NULL,
    signing_key TEXT NOT NULL,
    signature BLOB NOT NULL
);
CREATE INDEX audit_checkpoints_size ON audit_checkpoints (tree_size);

-- The tip of the log; writers lock it.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    tree_size INTEGER NOT NULL,
    last_leaf BLOB,
    frontier BLOB NOT NULL,
    checkpoint_size INTEGER NOT NULL,
    checkpoint_time_ms INTEGER NOT NULL,
    -- Records below this seq have been purged past retention.
    pruned_before INTEGER NOT NULL
);
INSERT INTO audit_head VALUES (1, 0, NULL, X'0000000000000000', 0, 0, 0);

-- The algorithm suite of the log, written once.
CREATE TABLE audit_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
