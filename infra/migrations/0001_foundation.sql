-- Foundation: tenants, school structure, staff users, role grants, sessions,
-- the append-only audit log, and the pupil register used by later components.
-- Every row of personal data carries its tenant_id; cross-table references
-- include tenant_id in composite foreign keys, so the database itself refuses
-- a link between two tenants' rows.

-- Timestamps leave the database as RFC 3339 UTC text (see functions/core/src/db.rs).
CREATE FUNCTION rfc3339(ts timestamptz) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    AS $$ SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE schools (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    external_id text,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, external_id)
);

CREATE TABLE groups (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL,
    school_id   uuid NOT NULL,
    external_id text,
    name        text NOT NULL,
    year_level  int,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, school_id, external_id),
    FOREIGN KEY (tenant_id, school_id) REFERENCES schools (tenant_id, id)
);

CREATE TABLE users (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    username       text NOT NULL,
    display_name   text NOT NULL,
    email          text,
    feide_username text,
    password_hash  text NOT NULL,
    language       text NOT NULL DEFAULT 'nb',
    active         boolean NOT NULL DEFAULT true,
    failed_logins  int NOT NULL DEFAULT 0,
    locked_until   timestamptz,
    last_login_at  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- Soft delete; the retention component pseudonymises within 3 months (seed 001).
    deleted_at     timestamptz,
    UNIQUE (tenant_id, id)
);
-- Usernames are stored lower-cased; unique among the tenant's non-deleted users.
CREATE UNIQUE INDEX users_tenant_username ON users (tenant_id, username) WHERE deleted_at IS NULL;

CREATE TABLE role_grants (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL,
    user_id    uuid NOT NULL,
    role       text NOT NULL CHECK (role IN ('teacher', 'school_leader', 'tenant_admin', 'privacy_officer')),
    school_id  uuid,
    group_id   uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, school_id) REFERENCES schools (tenant_id, id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES groups (tenant_id, id),
    -- Each role carries exactly the scope it needs.
    CHECK (
        (role = 'teacher' AND group_id IS NOT NULL AND school_id IS NULL) OR
        (role = 'school_leader' AND school_id IS NOT NULL AND group_id IS NULL) OR
        (role IN ('tenant_admin', 'privacy_officer') AND school_id IS NULL AND group_id IS NULL)
    )
);
CREATE UNIQUE INDEX role_grants_unique ON role_grants
    (user_id, role, coalesce(school_id, '00000000-0000-0000-0000-000000000000'),
     coalesce(group_id, '00000000-0000-0000-0000-000000000000'));

CREATE TABLE sessions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    user_id         uuid NOT NULL,
    -- SHA-256 of the cookie secret; the secret itself is never stored.
    secret_hash     bytea NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    idle_expires_at timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX sessions_user ON sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE audit_log (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     uuid REFERENCES tenants (id),
    at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_user_id uuid,
    actor         text NOT NULL,
    action        text NOT NULL,
    target_kind   text,
    target_id     text,
    client_ip     text,
    request_id    text,
    details       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at);
CREATE INDEX audit_log_target ON audit_log (tenant_id, target_kind, target_id);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

-- Pupils are not users. Identity numbers are stored encrypted (AES-256-GCM,
-- tenant-bound AAD) and found through a keyed hash (blind index); see
-- functions/core/src/crypto.rs.
CREATE TABLE pupils (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    school_id       uuid NOT NULL,
    identity_enc    bytea,
    identity_index  bytea,
    feide_username  text,
    given_name      text NOT NULL,
    family_name     text NOT NULL,
    year_level      int CHECK (year_level BETWEEN 1 AND 13),
    gender          text CHECK (gender IN ('female', 'male', 'other', 'unknown')),
    special_needs   boolean NOT NULL DEFAULT false,
    restricted      boolean NOT NULL DEFAULT false,
    left_at         date,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, school_id) REFERENCES schools (tenant_id, id)
);
CREATE UNIQUE INDEX pupils_identity_index ON pupils (tenant_id, identity_index) WHERE identity_index IS NOT NULL;
CREATE UNIQUE INDEX pupils_feide ON pupils (tenant_id, feide_username) WHERE feide_username IS NOT NULL;

CREATE TABLE group_memberships (
    tenant_id uuid NOT NULL,
    group_id  uuid NOT NULL,
    pupil_id  uuid NOT NULL,
    PRIMARY KEY (group_id, pupil_id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES groups (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, pupil_id) REFERENCES pupils (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX group_memberships_pupil ON group_memberships (pupil_id);
