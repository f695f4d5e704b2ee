-- ADR 0006: the append-only event log, its identity, and who may write it.

CREATE TABLE events (
    event_id       BIGINT GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    occurred_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    aggregate_seq  INT NOT NULL,
    event_type     TEXT NOT NULL,
    actor_id       TEXT,
    payload        JSONB NOT NULL,
    CONSTRAINT events_aggregate_seq_unique UNIQUE (aggregate_type, aggregate_id, aggregate_seq)
);

-- "Latest version of an aggregate" (ADR 0006).
CREATE INDEX events_aggregate_latest ON events (aggregate_type, aggregate_id, aggregate_seq DESC);
-- Consumers that filter by type (ADR 0006).
CREATE INDEX events_type_id ON events (event_type, event_id);
-- edge-feed's head: the newest event_id of each served aggregate type.
CREATE INDEX events_aggregate_type_id ON events (aggregate_type, event_id);

-- The identity of this log: created once, so a restored backup keeps it
-- and any other database has another.
CREATE TABLE feed_identity (
    only_row   BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    feed_id    TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO feed_identity DEFAULT VALUES;

-- Immutability, second guardrail (the first is the role below): no row of
-- the log is ever changed or removed, whoever asks.
CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- The application's role: it reads and appends, nothing else. Grant it to
-- the platform's login roles (GRANT edge_events_writer TO app).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'edge_events_writer') THEN
        CREATE ROLE edge_events_writer NOLOGIN;
    END IF;
END
$$;
REVOKE ALL ON events FROM PUBLIC;
GRANT SELECT, INSERT ON events TO edge_events_writer;
GRANT SELECT ON feed_identity TO edge_events_writer;
