-- Read-your-writes (ADR 0005): how far each projection (an edge node is
-- `edge:<node_id>`) has applied the log, and what it rejected.
CREATE TABLE projection_checkpoints (
    projection TEXT PRIMARY KEY,
    event_id   BIGINT NOT NULL,
    rejected   JSONB NOT NULL DEFAULT '[]',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Each edge node's lag behind the head of the served stream.
CREATE VIEW edge_lag AS
SELECT substr(c.projection, 6)             AS node_id,
       c.event_id                          AS applied_event_id,
       h.head,
       greatest(h.head - c.event_id, 0)    AS lag_events,
       now() - c.updated_at                AS since_report,
       jsonb_array_length(c.rejected)      AS rejected_objects
FROM projection_checkpoints c
CROSS JOIN (
    SELECT coalesce(greatest(
        (SELECT max(event_id) FROM events WHERE aggregate_type = 'env'),
        (SELECT max(event_id) FROM events WHERE aggregate_type = 'route'),
        (SELECT max(event_id) FROM events WHERE aggregate_type = 'instance')), 0) AS head
) h
WHERE c.projection LIKE 'edge:%';
