-- Schema 4: the keys the rotation pass looks after (auto-rotating, or with an address for notices) have their
-- own partial index, so each pass reads those few rather than every active key (gateway.rotation.runner).

CREATE INDEX api_keys_watched ON api_keys (created_at, id) WHERE auto_rotate OR notification_email IS NOT NULL;
