-- Reports returned with PENDING sources, which the broker completes when
-- their late answers arrive (1), or complete ones (0).
ALTER TABLE reports ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
-- Report.revision: a stored report is replaced only by a later revision.
ALTER TABLE reports ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;

CREATE INDEX reports_pending ON reports (pending) WHERE pending = 1;
