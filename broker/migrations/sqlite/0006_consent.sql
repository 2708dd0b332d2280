-- Authorization letters (授权书) platforms register (ConsentService). A
-- reference is unique per platform (the client identity that may use the
-- letter). body is the encoded hedui.v1.Consent as registered; revoked_at
-- (Unix milliseconds) is set once, when the letter is revoked.
CREATE TABLE consents (
    platform      TEXT NOT NULL,
    reference     TEXT NOT NULL,
    body          BLOB NOT NULL,
    registered_at INTEGER NOT NULL,
    revoked_at    INTEGER,
    PRIMARY KEY (platform, reference)
) STRICT;
