-- Households under management (WatchService), their alerts, and the change
-- events already handled.

-- One row per enrolment; request is the encoded hedui.v1.VerificationRequest
-- repeated when a member's data changes.
CREATE TABLE enrolments (
    enrolment_id   TEXT PRIMARY KEY NOT NULL,
    client         TEXT NOT NULL,
    request        BLOB NOT NULL,
    -- The report alerts are compared against: the latest verification.
    last_report_id TEXT NOT NULL,
    active         INTEGER NOT NULL DEFAULT 1,
    created_at     INTEGER NOT NULL
) STRICT;

-- The persons of each enrolment (applicant and registered members): an
-- event about any of them re-verifies the household.
CREATE TABLE enrolment_members (
    person_id    TEXT NOT NULL,
    enrolment_id TEXT NOT NULL REFERENCES enrolments (enrolment_id),
    PRIMARY KEY (person_id, enrolment_id)
) STRICT;

-- Alerts, kept until acknowledged; body is the encoded hedui.v1.Alert.
CREATE TABLE alerts (
    alert_id     TEXT PRIMARY KEY NOT NULL,
    enrolment_id TEXT NOT NULL,
    client       TEXT NOT NULL,
    body         BLOB NOT NULL,
    acknowledged INTEGER NOT NULL DEFAULT 0,
    raised_at    INTEGER NOT NULL
) STRICT;

CREATE INDEX alerts_open ON alerts (client, raised_at) WHERE acknowledged = 0;

-- Change events handled: a redelivered event is not handled twice.
CREATE TABLE change_events (
    event_id   TEXT PRIMARY KEY NOT NULL,
    handled_at INTEGER NOT NULL
) STRICT;
