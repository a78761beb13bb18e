-- Ingest: webhook sources (school administrative systems and test
-- publishers), their signing secrets, processed deliveries (idempotency),
-- assessments and results.

CREATE TABLE webhook_sources (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    kind        text NOT NULL CHECK (kind IN ('sas', 'publisher')),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz,
    UNIQUE (tenant_id, id)
);

-- A source verifies with a shared secret (Standard Webhooks `v1`, stored
-- encrypted, never returned after creation) or an Ed25519 public key (`v1a`).
-- During rotation the old secret stays valid until `expires_at`.
CREATE TABLE webhook_secrets (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL,
    source_id  uuid NOT NULL,
    secret_enc bytea,
    public_key bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    CHECK ((secret_enc IS NULL) <> (public_key IS NULL)),
    FOREIGN KEY (tenant_id, source_id) REFERENCES webhook_sources (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_secrets_source ON webhook_secrets (source_id);

-- Processed webhook ids per source with their outcome: a re-delivery returns
-- the original response and applies nothing twice.
CREATE TABLE webhook_deliveries (
    source_id     uuid NOT NULL REFERENCES webhook_sources (id) ON DELETE CASCADE,
    webhook_id    text NOT NULL,
    tenant_id     uuid NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    status        int NOT NULL,
    response      jsonb NOT NULL,
    PRIMARY KEY (source_id, webhook_id)
);

CREATE TABLE assessments (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    source_id       uuid NOT NULL,
    external_id     text NOT NULL,
    title           text NOT NULL,
    subject         text NOT NULL,
    year_level      int CHECK (year_level BETWEEN 1 AND 13),
    max_score       float8 NOT NULL CHECK (max_score > 0),
    administered_on date NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    UNIQUE (source_id, external_id),
    FOREIGN KEY (tenant_id, source_id) REFERENCES webhook_sources (tenant_id, id)
);

CREATE TABLE results (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL,
    pupil_id      uuid NOT NULL,
    assessment_id uuid NOT NULL,
    -- Webhook results carry their source and external id; manual results
    -- (students component) carry who recorded them instead.
    source_id     uuid,
    external_id   text,
    recorded_by   uuid,
    score         float8,
    status        text NOT NULL CHECK (status IN ('completed', 'incomplete', 'absent', 'exempt')),
    completed_at  timestamptz,
    items         jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_id, external_id),
    FOREIGN KEY (tenant_id, pupil_id) REFERENCES pupils (tenant_id, id),
    FOREIGN KEY (tenant_id, assessment_id) REFERENCES assessments (tenant_id, id)
);
CREATE INDEX results_pupil ON results (pupil_id, assessment_id);
CREATE INDEX results_assessment ON results (assessment_id);

CREATE INDEX pupils_school ON pupils (tenant_id, school_id);
CREATE INDEX users_feide ON users (tenant_id, feide_username) WHERE feide_username IS NOT NULL AND deleted_at IS NULL;
