-- The audit index in sorted runs (docs/audit.md, "Storage"). Same tables
-- and meaning as migrations/sqlite/0010_audit_index_runs.sql.
--
-- audit_index took the recent keys a chunk at a time into one B-tree
-- ordered by key: the subject keys are keyed hashes, spread evenly, so each
-- one dirtied a page of its own, written to the WAL (in full after each
-- checkpoint), and a move cost more the larger the index grew. Now a move
-- writes the chunk as a new run, sorted, at the end of audit_index_runs
-- (pages written once, full), and the writer merges runs of about one size
-- into one, a chunk at a time (broker/src/audit/store.rs, merge_window).
-- A query probes each run once.

-- The keys, one run after another: within a run ordered by (key, seq).
CREATE TABLE audit_index_runs (
    run BIGINT NOT NULL,
    key TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (run, key, seq)
);

-- The runs: each holds keys of records in [first_seq, end_seq), and
-- key_count of them. into_run is set while the run's keys are being merged
-- into that run (a chunk of keys moves in each of the writer's merge steps;
-- a query finds every key in exactly one of the two).
CREATE TABLE audit_runs (
    run BIGINT PRIMARY KEY,
    first_seq BIGINT NOT NULL,
    end_seq BIGINT NOT NULL,
    key_count BIGINT NOT NULL,
    into_run BIGINT
);

-- What audit_index held is the first run.
INSERT INTO audit_runs (run, first_seq, end_seq, key_count)
    SELECT 1, MIN(seq), MAX(seq) + 1, COUNT(*) FROM audit_index HAVING COUNT(*) > 0;
INSERT INTO audit_index_runs (run, key, seq)
    SELECT 1, key, seq FROM audit_index ORDER BY key, seq;
DROP TABLE audit_index;
