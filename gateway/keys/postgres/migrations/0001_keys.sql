-- Schema 1: keys and their audit trail.
-- Applied by `gateway store migrate` in one transaction with the row in gateway_schema that records it.

CREATE TABLE api_keys (
    id                 text PRIMARY KEY,
    key_hash           text NOT NULL UNIQUE,    -- the keyed hash of the value; never the value
    hint               text NOT NULL,
    name               text NOT NULL,
    permissions        text[] NOT NULL,
    allowed_ips        text[] NOT NULL,
    environment        text NOT NULL,
    created_at         timestamptz NOT NULL,
    expires_at         timestamptz,
    revoked_at         timestamptz,
    rate_limit_tier    text,
    description        text,
    created_by         text NOT NULL,
    auto_rotate        boolean NOT NULL DEFAULT false,
    rotation_period    bigint,
    rotated_from       text,
    rotated_to         text,
    last_used_at       timestamptz,
    last_used_ip       text,
    request_count      bigint NOT NULL DEFAULT 0,
    grace_period       bigint,
    notification_email text,
    held_value         text,                    -- sealed (gateway.keys.sealing), never a plain value
    notices            text
);
CREATE INDEX api_keys_created ON api_keys (created_at, id);

CREATE TABLE audit_log (
    seq     bigserial PRIMARY KEY,
    at      timestamptz NOT NULL,
    actor   text NOT NULL,
    action  text NOT NULL,
    key_id  text NOT NULL,
    details jsonb NOT NULL
);
CREATE INDEX audit_log_key ON audit_log (key_id, seq);

-- Every change to a key that the gate reads announces the key's keyed hash on the channel gateway_keys, so
-- every gateway process drops that cache entry (gateway.keys.postgres.listener). A trigger, not the store's
-- code, so a change made by hand in psql is announced too. Usage counts, notices and the held value are not
-- announced: the gate does not decide on them, and a usage flush every few seconds would empty every cache.
CREATE FUNCTION gateway_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    quiet CONSTANT text[] := ARRAY['request_count', 'last_used_at', 'last_used_ip', 'notices', 'held_value'];
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('gateway_keys', OLD.key_hash);
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF (to_jsonb(NEW) - quiet) = (to_jsonb(OLD) - quiet) THEN
            RETURN NULL;
        END IF;
        IF NEW.key_hash <> OLD.key_hash THEN
            PERFORM pg_notify('gateway_keys', OLD.key_hash);
        END IF;
    END IF;
    PERFORM pg_notify('gateway_keys', NEW.key_hash);
    RETURN NULL;
END
$$;
CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION gateway_key_changed();
