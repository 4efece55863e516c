"""The PostgreSQL key store (:mod:`.store`), its versioned schema (:mod:`.schema`, ``migrations/*.sql``) and the
LISTEN/NOTIFY listener that keeps every gateway's key cache in step (:mod:`.listener`)."""
