-- The audit index in sorted runs (docs/audit.md, "Storage"). PostgreSQL
-- keeps audit_index (migrations/postgres/0001_audit.sql): it logs rows,
-- not pages, and recorded fewer records a second with runs.
--
-- audit_index took the recent keys a chunk at a time into one B-tree
-- ordered by key: the subject keys are keyed hashes, spread evenly, so each
-- one dirtied a page of its own, written to the WAL and again at the
-- checkpoint, and a move cost more the larger the index grew. Now a move
-- writes the chunk as a new run, sorted, at the end of audit_index_runs
-- (pages written once, full), and the writer merges runs of about one size
-- into one, a chunk at a time (broker/src/audit/store.rs, merge_window).
-- A query probes each run once.

-- The keys, one run after another: within a run ordered by (key, seq).
CREATE TABLE audit_index_runs (
    run INTEGER NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (run, key, seq)
) WITHOUT ROWID;

-- The runs: each holds keys of records in [first_seq, end_seq), and
-- key_count of them. into_run is set while the run's keys are being merged
-- into that run (a chunk of keys moves in each of the writer's merge steps;
-- a query finds every key in exactly one of the two).
CREATE TABLE audit_runs (
    run INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    end_seq INTEGER NOT NULL,
    key_count INTEGER NOT NULL,
    into_run INTEGER
);

-- What audit_index held is the first run.
INSERT INTO audit_runs (run, first_seq, end_seq, key_count)
    SELECT 1, MIN(seq), MAX(seq) + 1, COUNT(*) FROM audit_index HAVING COUNT(*) > 0;
INSERT INTO audit_index_runs (run, key, seq)
    SELECT 1, key, seq FROM audit_index ORDER BY key, seq;
DROP TABLE audit_index;
