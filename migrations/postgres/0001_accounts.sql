-- Accounts and sessions. Times are timestamptz (microseconds, UTC); ids are UUIDs. Constraints
-- are named as the application reports them ("table.column"), so a conflict names the same
-- constraint whichever adapter refused it.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL CONSTRAINT "users.email" UNIQUE,
    name          text NOT NULL,
    password_hash text NOT NULL,
    role          text NOT NULL CONSTRAINT "users.role" CHECK (role IN ('customer', 'operator', 'admin')),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE INDEX users_created ON users (created_at DESC, id DESC);

-- One login. Its refresh tokens form a family; revoking the session ends them all, and ends
-- every access token that names it.
CREATE TABLE sessions (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text,
    -- Opened with the second factor: its refreshed tokens say so too.
    second_factor  boolean NOT NULL DEFAULT false
);

CREATE INDEX sessions_user ON sessions (user_id) WHERE revoked_at IS NULL;
CREATE INDEX sessions_revoked ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- Only the SHA-256 of a refresh token is stored. A used token is kept (used_at set) so that
-- presenting it again is recognised as reuse.
CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);
