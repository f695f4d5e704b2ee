-- No skipped event, whoever writes: every statement that inserts into
-- events first takes one transaction-scoped advisory lock, held to commit.
-- A statement-level BEFORE trigger fires before the statement produces its
-- first row, so before the identity default (nextval) is evaluated: ids are
-- handed out in commit order, and a hole below a visible id is final at
-- once (its transaction rolled back). A plain event_id cursor is then safe.
-- Key 0x65646765_66656564 is "edgefeed" in ASCII.
CREATE FUNCTION events_serialise_appends() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7306916104014849380);
    RETURN NULL;
END
$$;
CREATE TRIGGER events_serialise_appends BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_serialise_appends();

-- Wake-ups: one NOTIFY per inserting statement, delivered at commit (none
-- on rollback; identical ones in a transaction fold into one). Readers
-- always re-read by id range, so this is only a hint; a session may turn
-- it off with SET edge_feed.notify = 'off'.
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('edge_feed.notify', true), '') <> 'off' THEN
        PERFORM pg_notify('edge_feed_events', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();
