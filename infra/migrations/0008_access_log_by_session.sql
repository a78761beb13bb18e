-- The application role appends access records only in the name of a live
-- session: tenant and actor come from the session row, never from the caller.
-- `access_log_append` (0004) took both as arguments and was executable by
-- PUBLIC, so whoever held the application role could write records for any
-- tenant and any actor. It stays, for the owner (operator tools, tests of the
-- chain); the application role gets only the function below.
CREATE FUNCTION access_log_append_for_session(
    p_session uuid, p_action text, p_pupils uuid[], p_client_ip text, p_request_id text
) RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_tenant uuid;
    v_actor  uuid;
BEGIN
    SELECT s.tenant_id, s.user_id INTO v_tenant, v_actor
      FROM sessions s JOIN users u ON u.id = s.user_id AND u.tenant_id = s.tenant_id
     WHERE s.id = p_session AND s.revoked_at IS NULL
       AND now() < s.idle_expires_at AND now() < s.expires_at
       AND u.active AND u.deleted_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'access records are written for a live session only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN access_log_append(v_tenant, v_actor, p_action, p_pupils, p_client_ip, p_request_id);
END $$;

REVOKE ALL ON FUNCTION access_log_append(uuid, uuid, text, uuid[], text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION access_log_append_for_session(uuid, text, uuid[], text, text) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tavle_app') THEN
        -- Default privileges granted EXECUTE on every function to tavle_app.
        REVOKE EXECUTE ON FUNCTION access_log_append(uuid, uuid, text, uuid[], text, text) FROM tavle_app;
        GRANT EXECUTE ON FUNCTION access_log_append_for_session(uuid, text, uuid[], text, text) TO tavle_app;
    END IF;
END $$;
