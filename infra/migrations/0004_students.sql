-- Students component: manual results and the tamper-evident access log.

-- A manual result is recorded by a teacher (no source, no external id);
-- one per pupil and assessment, corrected in place with the previous value
-- kept in the audit log.
ALTER TABLE results ADD CONSTRAINT results_origin CHECK (
    (source_id IS NOT NULL AND external_id IS NOT NULL) OR (source_id IS NULL AND recorded_by IS NOT NULL)
);
CREATE UNIQUE INDEX results_manual ON results (pupil_id, assessment_id) WHERE source_id IS NULL;
-- Assessments offered for manual registration are found by tenant.
CREATE INDEX assessments_tenant ON assessments (tenant_id, administered_on);
-- Name search and listing by school and year.
CREATE INDEX pupils_school_name ON pupils (tenant_id, school_id, family_name, given_name, id);

-- Every response carrying pupil data writes one access record, in the same
-- statement as the read. Records chain per tenant: hash = SHA-256(previous
-- hash || canonical encoding of the record), starting from 32 zero bytes.
-- `tavle verify-access-log` recomputes the chain (functions/core/src/access_log.rs
-- holds the same encoding in Rust).
CREATE TABLE access_log (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    seq           bigint NOT NULL,
    at            timestamptz NOT NULL,
    actor_user_id uuid NOT NULL,
    action        text NOT NULL,
    -- One-dimensional, no NULLs: the canonical text (ids joined by commas)
    -- then names exactly the stored array.
    pupil_ids     uuid[] NOT NULL CHECK (cardinality(pupil_ids) > 0 AND array_ndims(pupil_ids) = 1
                                         AND array_position(pupil_ids, NULL) IS NULL),
    client_ip     text,
    request_id    text,
    prev_hash     bytea NOT NULL,
    hash          bytea NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX access_log_pupils ON access_log USING gin (pupil_ids);

-- The head of each tenant's chain; its row lock orders concurrent appends.
CREATE TABLE access_log_heads (
    tenant_id uuid PRIMARY KEY REFERENCES tenants (id),
    seq       bigint NOT NULL,
    hash      bytea NOT NULL
);
INSERT INTO access_log_heads (tenant_id, seq, hash)
    SELECT id, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea FROM tenants;
CREATE FUNCTION access_log_new_tenant() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO access_log_heads (tenant_id, seq, hash)
        VALUES (NEW.id, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    RETURN NEW;
END $$;
CREATE TRIGGER tenants_access_log_head AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION access_log_new_tenant();

-- Length-prefixed fields, so no value can imitate a field boundary; NULL is "-".
CREATE FUNCTION access_log_field(v text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN v IS NULL THEN '-' ELSE octet_length(v)::text || ':' || v END $$;

CREATE FUNCTION access_log_canonical(
    tenant_id uuid, seq bigint, at timestamptz, actor uuid, action text, pupil_ids uuid[],
    client_ip text, request_id text
) RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT convert_to(
        'tavle-access-v1' ||
        access_log_field(tenant_id::text) || access_log_field(seq::text) || access_log_field(rfc3339(at)) ||
        access_log_field(actor::text) || access_log_field(action) ||
        access_log_field(array_to_string(pupil_ids, ',')) ||
        access_log_field(client_ip) || access_log_field(request_id),
        'UTF8')
$$;

-- Appends one record to a tenant's chain and returns its sequence number.
-- SECURITY DEFINER: the application role may append through this function
-- only; it holds no INSERT/UPDATE/DELETE on the log or its heads (below).
CREATE FUNCTION access_log_append(
    p_tenant uuid, p_actor uuid, p_action text, p_pupils uuid[], p_client_ip text, p_request_id text
) RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_seq  bigint;
    v_prev bytea;
    v_hash bytea;
    v_at   timestamptz;
BEGIN
    UPDATE access_log_heads SET seq = seq + 1 WHERE tenant_id = p_tenant RETURNING seq, hash INTO v_seq, v_prev;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no access log head for tenant %', p_tenant;
    END IF;
    -- Taken under the head's lock, so times never go backwards along the
    -- chain; microseconds, as the RFC 3339 text in the hash carries them.
    v_at := date_trunc('microseconds', clock_timestamp());
    v_hash := sha256(v_prev || access_log_canonical(p_tenant, v_seq, v_at, p_actor, p_action, p_pupils,
                                                    p_client_ip, p_request_id));
    INSERT INTO access_log (tenant_id, seq, at, actor_user_id, action, pupil_ids, client_ip, request_id,
                            prev_hash, hash)
        VALUES (p_tenant, v_seq, v_at, p_actor, p_action, p_pupils, p_client_ip, p_request_id, v_prev, v_hash);
    UPDATE access_log_heads SET hash = v_hash WHERE tenant_id = p_tenant;
    RETURN v_seq;
END $$;

-- Append-only, like the audit log (the chain shows it if someone with more
-- rights than the application bypasses this).
CREATE FUNCTION access_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'access_log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER access_log_no_update_delete BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION access_log_is_append_only();
CREATE TRIGGER access_log_no_truncate BEFORE TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION access_log_is_append_only();

-- Least privilege in production (infra/README.md: the runtime role
-- `tavle_app` gets table rights by default privileges): it reads the log
-- for the privacy officer, and writes it only through access_log_append.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tavle_app') THEN
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON access_log, access_log_heads FROM tavle_app;
        REVOKE SELECT ON access_log_heads FROM tavle_app;
    END IF;
END $$;
