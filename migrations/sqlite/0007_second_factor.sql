-- A second factor per account: a TOTP secret (enabled_at NULL while it waits for its first
-- code), the last step a code was accepted for (no code works twice), and single-use recovery
-- codes stored only as SHA-256.
CREATE TABLE totp (
    user_id    BLOB PRIMARY KEY NOT NULL REFERENCES users (id),
    secret     BLOB NOT NULL,
    enabled_at INTEGER,
    last_step  INTEGER,
    created_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE totp_recovery_codes (
    user_id   BLOB NOT NULL REFERENCES users (id),
    code_hash BLOB NOT NULL,
    used_at   INTEGER,
    PRIMARY KEY (user_id, code_hash)
) STRICT, WITHOUT ROWID;

-- Whether a session was opened with the second factor: its refreshed tokens say so too.
ALTER TABLE sessions ADD COLUMN second_factor INTEGER NOT NULL DEFAULT 0;
