-- The access log without a tenant-wide serial point, prunable, anchored
-- (design and threat model: functions/core/ACCESS_LOG.md).
--
-- Each tenant's log is 16 hash chains ("lanes") instead of one. An append
-- takes a lane that no other transaction holds (FOR UPDATE SKIP LOCKED,
-- starting at a random lane), so concurrent reads of one tenant do not wait
-- for each other while any lane is free, and a manual result that holds a
-- lane until it commits holds up nobody. Within a lane, records chain as
-- before. Checkpoints (a hash chain of their own) record every lane's
-- (seq, hash) at a moment: at a prune (the cut; verification starts there)
-- and at an anchor (a state that the operator keeps outside the database).

-- Lane of a record and the canonical encoding it was hashed with: records
-- written before this migration are format 1 in lane 0 and stay valid.
ALTER TABLE access_log ADD COLUMN lane smallint NOT NULL DEFAULT 0 CHECK (lane BETWEEN 0 AND 15);
ALTER TABLE access_log ADD COLUMN format smallint NOT NULL DEFAULT 1 CHECK (format IN (1, 2));
ALTER TABLE access_log ALTER COLUMN format SET DEFAULT 2;
-- Order across lanes (newest-first lists, cursors); not part of any hash.
ALTER TABLE access_log ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE access_log DROP CONSTRAINT access_log_pkey;
ALTER TABLE access_log ADD PRIMARY KEY (tenant_id, lane, seq);
CREATE UNIQUE INDEX access_log_order ON access_log (tenant_id, id);
-- Times grow along a lane (taken under its lock): the cut of a prune.
CREATE INDEX access_log_lane_time ON access_log (tenant_id, lane, at);

CREATE FUNCTION access_log_lanes() RETURNS smallint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 16::smallint $$;

ALTER TABLE access_log_heads ADD COLUMN lane smallint NOT NULL DEFAULT 0 CHECK (lane BETWEEN 0 AND 15);
ALTER TABLE access_log_heads DROP CONSTRAINT access_log_heads_pkey;
ALTER TABLE access_log_heads ADD PRIMARY KEY (tenant_id, lane);
ALTER TABLE access_log_heads ALTER COLUMN lane DROP DEFAULT;
INSERT INTO access_log_heads (tenant_id, lane, seq, hash)
    SELECT t.id, l, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
      FROM tenants t, generate_series(1, access_log_lanes() - 1) AS l;

CREATE OR REPLACE FUNCTION access_log_new_tenant() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO access_log_heads (tenant_id, lane, seq, hash)
        SELECT NEW.id, l, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
          FROM generate_series(0, access_log_lanes() - 1) AS l;
    RETURN NEW;
END $$;

-- Format 2: format 1 with the lane after the tenant.
CREATE FUNCTION access_log_canonical_v2(
    tenant_id uuid, lane smallint, seq bigint, at timestamptz, actor uuid, action text, pupil_ids uuid[],
    client_ip text, request_id text
) RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT convert_to(
        'tavle-access-v2' ||
        access_log_field(tenant_id::text) || access_log_field(lane::text) || access_log_field(seq::text) ||
        access_log_field(rfc3339(at)) || access_log_field(actor::text) || access_log_field(action) ||
        access_log_field(array_to_string(pupil_ids, ',')) ||
        access_log_field(client_ip) || access_log_field(request_id),
        'UTF8')
$$;

-- Appends one record to a free lane of the tenant's log; returns its
-- sequence number within that lane. One read of the head under its lock,
-- one insert, one update.
CREATE OR REPLACE FUNCTION access_log_append(
    p_tenant uuid, p_actor uuid, p_action text, p_pupils uuid[], p_client_ip text, p_request_id text
) RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_start smallint := floor(random() * access_log_lanes())::smallint;
    v_lane  smallint;
    v_seq   bigint;
    v_prev  bytea;
    v_hash  bytea;
    v_at    timestamptz;
BEGIN
    SELECT lane, seq + 1, hash INTO v_lane, v_seq, v_prev
      FROM access_log_heads WHERE tenant_id = p_tenant
     ORDER BY (lane - v_start + access_log_lanes()) % access_log_lanes()
       FOR UPDATE SKIP LOCKED LIMIT 1;
    IF NOT FOUND THEN
        -- Every lane is held by another transaction: wait for one.
        SELECT lane, seq + 1, hash INTO v_lane, v_seq, v_prev
          FROM access_log_heads WHERE tenant_id = p_tenant AND lane = v_start FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no access log head for tenant %', p_tenant;
        END IF;
    END IF;
    -- Taken under the lane's lock, so times never go backwards along it;
    -- microseconds, as the RFC 3339 text in the hash carries them.
    v_at := date_trunc('microseconds', clock_timestamp());
    v_hash := sha256(v_prev || access_log_canonical_v2(p_tenant, v_lane, v_seq, v_at, p_actor, p_action, p_pupils,
                                                       p_client_ip, p_request_id));
    INSERT INTO access_log (tenant_id, lane, seq, at, actor_user_id, action, pupil_ids, client_ip, request_id,
                            prev_hash, hash, format)
        VALUES (p_tenant, v_lane, v_seq, v_at, p_actor, p_action, p_pupils, p_client_ip, p_request_id,
                v_prev, v_hash, 2);
    UPDATE access_log_heads SET seq = v_seq, hash = v_hash WHERE tenant_id = p_tenant AND lane = v_lane;
    RETURN v_seq;
END $$;

-- Checkpoints: a hash chain per tenant over the lanes' states.
-- digest = SHA-256(prev_digest || canonical), from 32 zero bytes.
CREATE TABLE access_log_checkpoints (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          bigint NOT NULL CHECK (id > 0),
    kind        text NOT NULL CHECK (kind IN ('prune', 'anchor')),
    at          timestamptz NOT NULL,
    -- A prune: records before this time were deleted.
    cut_before  timestamptz CHECK ((kind = 'prune') = (cut_before IS NOT NULL)),
    -- Lane l's (seq, hash) at index l + 1; seq 0 with 32 zero bytes: empty.
    lane_seqs   bigint[] NOT NULL CHECK (cardinality(lane_seqs) = 16),
    lane_hashes bytea[] NOT NULL CHECK (cardinality(lane_hashes) = 16),
    deleted     bigint NOT NULL DEFAULT 0,
    prev_digest bytea NOT NULL,
    digest      bytea NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX access_log_checkpoint_digest ON access_log_checkpoints (tenant_id, digest);

CREATE FUNCTION access_log_checkpoint_canonical(
    tenant_id uuid, id bigint, kind text, at timestamptz, cut_before timestamptz, lane_seqs bigint[],
    lane_hashes bytea[]
) RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT convert_to(
        'tavle-access-checkpoint-v1' ||
        access_log_field(tenant_id::text) || access_log_field(id::text) || access_log_field(kind) ||
        access_log_field(rfc3339(at)) || access_log_field(rfc3339(cut_before)) ||
        access_log_field(array_to_string(lane_seqs, ',')) ||
        access_log_field((SELECT string_agg(encode(h, 'hex'), ',' ORDER BY n)
                            FROM unnest(lane_hashes) WITH ORDINALITY AS u (h, n))),
        'UTF8')
$$;

-- Appends a checkpoint to the tenant's checkpoint chain; returns its id and digest.
CREATE FUNCTION access_log_checkpoint(
    p_tenant uuid, p_kind text, p_cut_before timestamptz, p_seqs bigint[], p_hashes bytea[], p_deleted bigint
) RETURNS TABLE (checkpoint_id bigint, digest bytea)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_id   bigint;
    v_prev bytea;
    v_at   timestamptz := date_trunc('microseconds', clock_timestamp());
    v_hash bytea;
BEGIN
    -- One checkpoint at a time per tenant: the chain has no forks.
    PERFORM pg_advisory_xact_lock(hashtext('tavle.access_log_checkpoints'), hashtext(p_tenant::text));
    SELECT c.id + 1, c.digest INTO v_id, v_prev
      FROM access_log_checkpoints c WHERE c.tenant_id = p_tenant ORDER BY c.id DESC LIMIT 1;
    IF NOT FOUND THEN
        v_id := 1;
        v_prev := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    END IF;
    v_hash := sha256(v_prev || access_log_checkpoint_canonical(p_tenant, v_id, p_kind, v_at, p_cut_before,
                                                               p_seqs, p_hashes));
    INSERT INTO access_log_checkpoints (tenant_id, id, kind, at, cut_before, lane_seqs, lane_hashes, deleted,
                                        prev_digest, digest)
        VALUES (p_tenant, v_id, p_kind, v_at, p_cut_before, p_seqs, p_hashes, p_deleted, v_prev, v_hash);
    RETURN QUERY SELECT v_id, v_hash;
END $$;

-- Append-only, checked once per statement (not per row: a prune deletes a
-- million rows). Only access_log_prune deletes, and only old records.
CREATE OR REPLACE FUNCTION access_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('tavle.access_log_pruning', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER access_log_no_update_delete ON access_log;
CREATE TRIGGER access_log_no_update_delete BEFORE UPDATE OR DELETE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_is_append_only();
CREATE TRIGGER access_log_checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON access_log_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_is_append_only();

-- Deletes the tenant's access records older than p_before (at least six
-- months back: the customer's floor, enforced here whoever calls) and
-- leaves a prune checkpoint with every lane's last deleted record (or the
-- previous cut, if a lane has nothing older). Returns the checkpoint.
CREATE FUNCTION access_log_prune(p_tenant uuid, p_before timestamptz)
RETURNS TABLE (checkpoint_id bigint, digest bytea, deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_seqs    bigint[];
    v_hashes  bytea[];
    v_deleted bigint := 0;
    v_n       bigint;
    v_lane    smallint;
BEGIN
    IF p_before IS NULL OR p_before > now() - interval '6 months' THEN
        RAISE EXCEPTION 'access records are kept at least 6 months: cannot prune records from % on', p_before
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = p_tenant) THEN
        RAISE EXCEPTION 'no tenant %', p_tenant USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Each lane's cut: its last record before p_before, else the last cut.
    SELECT array_agg(coalesce(r.seq, c.seq, 0) ORDER BY l),
           array_agg(coalesce(r.hash, c.hash,
                              '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea) ORDER BY l)
      INTO v_seqs, v_hashes
      FROM generate_series(0, access_log_lanes() - 1) AS l
      LEFT JOIN LATERAL (
          SELECT a.seq, a.hash FROM access_log a
           WHERE a.tenant_id = p_tenant AND a.lane = l AND a.at < p_before
           ORDER BY a.at DESC, a.seq DESC LIMIT 1) r ON true
      LEFT JOIN LATERAL (
          SELECT k.lane_seqs[l + 1] AS seq, k.lane_hashes[l + 1] AS hash FROM access_log_checkpoints k
           WHERE k.tenant_id = p_tenant AND k.kind = 'prune' ORDER BY k.id DESC LIMIT 1) c ON true;
    PERFORM set_config('tavle.access_log_pruning', 'on', true);
    FOR v_lane IN 0 .. access_log_lanes() - 1 LOOP
        DELETE FROM access_log a WHERE a.tenant_id = p_tenant AND a.lane = v_lane AND a.seq <= v_seqs[v_lane + 1];
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_deleted := v_deleted + v_n;
    END LOOP;
    PERFORM set_config('tavle.access_log_pruning', 'off', true);
    RETURN QUERY SELECT c.checkpoint_id, c.digest, v_deleted
                   FROM access_log_checkpoint(p_tenant, 'prune', p_before, v_seqs, v_hashes, v_deleted) c;
END $$;

-- Owner only (operator binary; the retention component will get EXECUTE
-- on access_log_prune through a role of its own). The application role
-- keeps only access_log_append_for_session (0008).
REVOKE ALL ON FUNCTION access_log_append(uuid, uuid, text, uuid[], text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION access_log_checkpoint(uuid, text, timestamptz, bigint[], bytea[], bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION access_log_prune(uuid, timestamptz) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tavle_app') THEN
        REVOKE EXECUTE ON FUNCTION access_log_append(uuid, uuid, text, uuid[], text, text) FROM tavle_app;
        REVOKE EXECUTE ON FUNCTION access_log_checkpoint(uuid, text, timestamptz, bigint[], bytea[], bigint)
            FROM tavle_app;
        REVOKE EXECUTE ON FUNCTION access_log_prune(uuid, timestamptz) FROM tavle_app;
        REVOKE ALL ON access_log_checkpoints FROM tavle_app;
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON access_log, access_log_heads FROM tavle_app;
        REVOKE SELECT ON access_log_heads FROM tavle_app;
    END IF;
END $$;
