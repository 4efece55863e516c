-- Schema 3: when a user's password was last reset; a token the gateway signed before it is refused
-- (gateway.accounts.status). Existing users get NULL: never reset.

ALTER TABLE users ADD COLUMN password_changed_at timestamptz;
