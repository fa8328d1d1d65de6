-- A second factor per account: a TOTP secret (enabled_at NULL while it waits for its first
-- code), the last step a code was accepted for (no code works twice), and single-use recovery
-- codes stored only as SHA-256.
CREATE TABLE totp (
    user_id    uuid PRIMARY KEY REFERENCES users (id),
    secret     bytea NOT NULL,
    enabled_at timestamptz,
    last_step  bigint,
    created_at timestamptz NOT NULL
);

CREATE TABLE totp_recovery_codes (
    user_id   uuid NOT NULL REFERENCES users (id),
    code_hash bytea NOT NULL,
    used_at   timestamptz,
    PRIMARY KEY (user_id, code_hash)
);
