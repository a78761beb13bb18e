-- Webhook sources bound to schools. A `sas` source may be bound to a set of
-- schools, named by their `external_id` within the tenant (as rosters name
-- them): it may create or sync those schools only, and a roster for any
-- other school is refused (403) before anything is applied. A source with no
-- rows here is unbound and may sync any school of its tenant (the behaviour
-- before this migration; binding is recommended).
--
-- A bound school need not exist yet ("schools it may create"), so there is
-- no foreign key to `schools`; the composite foreign key keeps every row in
-- its source's tenant, and the source's kind in it keeps bindings to `sas`
-- sources (publishers post no rosters).
ALTER TABLE webhook_sources ADD CONSTRAINT webhook_sources_tenant_id_kind UNIQUE (tenant_id, id, kind);

CREATE TABLE webhook_source_schools (
    tenant_id          uuid NOT NULL,
    source_id          uuid NOT NULL,
    source_kind        text NOT NULL DEFAULT 'sas' CHECK (source_kind = 'sas'),
    -- As rosters send it, trimmed (functions/ingest/src/sources.rs checks the rest).
    school_external_id text NOT NULL CHECK (length(school_external_id) BETWEEN 1 AND 200
                                            AND school_external_id = btrim(school_external_id)),
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, school_external_id),
    FOREIGN KEY (tenant_id, source_id, source_kind) REFERENCES webhook_sources (tenant_id, id, kind) ON DELETE CASCADE
);

-- A pupil whom a roster moves from another school of the tenant is recorded
-- in the audit log (action `pupil.transferred`, target the pupil, details
-- {from_school_id, to_school_id, source_id}; never names or identity
-- numbers). The privacy officer pages through them newest first
-- (`GET /admin/transfers`); this index keeps that a short index scan.
CREATE INDEX audit_log_pupil_transfers ON audit_log (tenant_id, id) WHERE action = 'pupil.transferred';
