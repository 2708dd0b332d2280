-- Bulk reviews of enrolled households (WatchService.Review): each review
-- lists its households; a household done is not verified again when the
-- review is resumed after a crash.
CREATE TABLE reviews (
    review_id   TEXT PRIMARY KEY NOT NULL,
    client      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    -- Unix milliseconds when every household was done; NULL until then.
    finished_at INTEGER
) STRICT;

CREATE TABLE review_items (
    review_id    TEXT NOT NULL REFERENCES reviews (review_id),
    enrolment_id TEXT NOT NULL,
    done         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (review_id, enrolment_id)
) STRICT;
