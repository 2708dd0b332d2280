-- Whether a report's access record is known to be committed is kept apart
-- from the report: a row of unrecorded_reports for each report written
-- while its record commits, deleted once the record has committed. Setting
-- reports.recorded instead rewrote each report's whole row (its body and
-- overflow pages) a second time, for one bit (docs/benchmarks.md, S4).
--
-- reports.recorded now says only how a row was written (0: ahead of its
-- record); the triggers keep the marks in step with the rows, in the same
-- statement as the write.
DROP INDEX reports_unrecorded;
CREATE TABLE unrecorded_reports (
    report_id TEXT PRIMARY KEY NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO unrecorded_reports (report_id)
    SELECT report_id FROM reports WHERE recorded = 0;

CREATE TRIGGER reports_mark_unrecorded AFTER INSERT ON reports
WHEN NEW.recorded = 0
BEGIN
    INSERT OR IGNORE INTO unrecorded_reports (report_id) VALUES (NEW.report_id);
END;

-- A later revision replaces a row (an upsert): it is marked as it was
-- written.
CREATE TRIGGER reports_remark_unrecorded AFTER UPDATE OF recorded ON reports
BEGIN
    DELETE FROM unrecorded_reports WHERE report_id = NEW.report_id AND NEW.recorded = 1;
    INSERT OR IGNORE INTO unrecorded_reports (report_id)
        SELECT NEW.report_id WHERE NEW.recorded = 0;
END;

CREATE TRIGGER reports_unmark_deleted AFTER DELETE ON reports
BEGIN
    DELETE FROM unrecorded_reports WHERE report_id = OLD.report_id;
END;
