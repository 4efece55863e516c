-- Schema 2: dashboard users, their refresh tokens, and requests per key and UTC day (gateway.accounts and the
-- dashboard's usage chart). Keys and the audit trail are untouched.

CREATE TABLE users (
    id            text PRIMARY KEY,
    email         text NOT NULL UNIQUE,        -- lower-cased (gateway.keys.users.email_key)
    role          text NOT NULL,
    password_hash text NOT NULL,               -- argon2id; never the password
    status        text NOT NULL,
    created_at    timestamptz NOT NULL,
    last_login_at timestamptz
);

CREATE TABLE refresh_tokens (
    token_hash text PRIMARY KEY,               -- SHA-256 of the token; never the token
    family     text NOT NULL,
    user_id    text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);

CREATE TABLE usage_daily (
    key_id text NOT NULL,
    day    date NOT NULL,
    count  bigint NOT NULL,
    PRIMARY KEY (key_id, day)
);
