-- Whether the report's access record is known to be committed. A report
-- is written while its record commits (the two commits overlap): such a
-- row is written with 0 and served by no read until the record has
-- committed; 1 is set lazily once it has. A broker that stopped in
-- between keeps a row left at 0 only if the audit log holds its record
-- (Verifier::settle_unrecorded, at start).
ALTER TABLE reports ADD COLUMN recorded INTEGER NOT NULL DEFAULT 1;
CREATE INDEX reports_unrecorded ON reports (report_id) WHERE recorded = 0;
