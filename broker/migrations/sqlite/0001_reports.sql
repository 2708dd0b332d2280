-- Reports as returned to the caller, encoded as hedui.v1.Report.
CREATE TABLE reports (
    report_id    TEXT PRIMARY KEY NOT NULL,
    -- Unix milliseconds when the report was closed.
    completed_at INTEGER NOT NULL,
    -- Overall verdict (hedui.v1.Outcome number), for listing without decoding.
    verdict      INTEGER NOT NULL,
    -- The encoded hedui.v1.Report.
    body         BLOB NOT NULL
) STRICT;

CREATE INDEX reports_completed_at ON reports (completed_at);
