-- Retention (component `retention`): run reports and their lock, leavers'
-- reports, the audit log's pruning, and what the k-anonymity rule of
-- anonymised results needs. Policies: README "Retention".

-- One row per call of POST /internal/retention/run: what it did, per policy,
-- in `totals` (all tenants: the scheduler's view) and per tenant in
-- retention_run_counts (a privacy officer sees their own tenant's only).
-- No personal data: counts, times, a problem title on failure.
CREATE TABLE retention_runs (
    id               uuid PRIMARY KEY,
    trigger          text NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    dry_run          boolean NOT NULL,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    status           text NOT NULL CHECK (status IN ('running', 'completed', 'more_remaining', 'failed')),
    batches          int NOT NULL DEFAULT 0,
    longest_batch_ms int NOT NULL DEFAULT 0,
    -- The policies the run applied (days, months; no personal data).
    policies         jsonb NOT NULL,
    totals           jsonb NOT NULL DEFAULT '{}'::jsonb,
    error            text
);
CREATE INDEX retention_runs_started ON retention_runs (started_at DESC, id DESC);

CREATE TABLE retention_run_counts (
    run_id    uuid NOT NULL REFERENCES retention_runs (id) ON DELETE CASCADE,
    tenant_id uuid NOT NULL REFERENCES tenants (id),
    counts    jsonb NOT NULL,
    PRIMARY KEY (run_id, tenant_id)
);
CREATE INDEX retention_run_counts_tenant ON retention_run_counts (tenant_id, run_id);

-- The lock that keeps two runs from working at once: a lease taken by an
-- atomic UPDATE and renewed after every batch. A run that is killed leaves
-- its lease, which expires (`held_until`) and the next run takes over; it
-- works across connection pools and Spin's one-connection-per-request alike.
CREATE TABLE retention_lock (
    id         int PRIMARY KEY CHECK (id = 1),
    run_id     uuid,
    held_until timestamptz NOT NULL
);
INSERT INTO retention_lock (id, run_id, held_until) VALUES (1, NULL, '-infinity');

-- Leavers' reports (seed 003): pupils who leave from the final year level
-- keep a report of their results, written when retention erases them after
-- the grace period and deleted `delete_on` (at most 12 months after leaving).
-- The report holds names and results, never the identity number or Feide
-- username. `pupil_id` is the erased pupil's old (random) id.
CREATE TABLE leaver_reports (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    school_id  uuid NOT NULL,
    pupil_id   uuid NOT NULL,
    left_on    date NOT NULL,
    delete_on  date NOT NULL,
    report     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, pupil_id),
    FOREIGN KEY (tenant_id, school_id) REFERENCES schools (tenant_id, id)
);
CREATE INDEX leaver_reports_due ON leaver_reports (tenant_id, delete_on);
CREATE INDEX leaver_reports_school ON leaver_reports (tenant_id, school_id, left_on DESC);

-- k-anonymity: rows are `pending` until retention has seen their cell
-- (assessment, school, year level, gender) hold at least 5 results, or has
-- generalised or dropped them. Statistics read only rows that are not pending.
ALTER TABLE anonymised_results ADD COLUMN pending boolean NOT NULL DEFAULT true;
DROP INDEX anonymised_results_assessment;
CREATE INDEX anonymised_results_cell ON anonymised_results
    (tenant_id, assessment_id, coalesce(school_id, '00000000-0000-0000-0000-000000000000'::uuid),
     coalesce(year_level, 0), coalesce(gender, ''));
-- Pending rows level by level, by assessment (a batch spans few cells).
CREATE INDEX anonymised_results_pending ON anonymised_results
    (tenant_id, (school_id IS NULL), (gender IS NULL), assessment_id, id) WHERE pending;
-- The tenant is already checked by the (tenant_id, assessment_id) foreign key
-- to assessments; a second per-row check cost a tenth of every erasure batch.
ALTER TABLE anonymised_results DROP CONSTRAINT anonymised_results_tenant_id_fkey;

-- What the policies look for.
CREATE INDEX pupils_left ON pupils (tenant_id, left_at, id) WHERE left_at IS NOT NULL;
CREATE INDEX users_deleted ON users (tenant_id, deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX sessions_expiry ON sessions (tenant_id, expires_at);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (tenant_id, received_at);

-- The audit log stays append-only for everyone but this function, which
-- deletes at most p_limit of the tenant's records from before p_before (at
-- least six months back, whoever calls: the customer's floor, seed 004).
-- The flag alone is not enough (any role can set it): the DELETE must run
-- as the table's owner, which only the SECURITY DEFINER function does.
CREATE OR REPLACE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('tavle.audit_log_pruning', true) = 'on'
       AND current_user = (SELECT c.relowner::regrole::text FROM pg_class c WHERE c.oid = TG_RELID) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE FUNCTION audit_log_prune(p_tenant uuid, p_before timestamptz, p_limit int)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_n bigint;
BEGIN
    IF p_before IS NULL OR p_before > now() - interval '6 months' THEN
        RAISE EXCEPTION 'audit records are kept at least 6 months: cannot prune records from % on', p_before
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'prune 1 to 10000 records at a time' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('tavle.audit_log_pruning', 'on', true);
    DELETE FROM audit_log WHERE id IN (
        SELECT a.id FROM audit_log a WHERE a.tenant_id = p_tenant AND a.at < p_before ORDER BY a.at, a.id LIMIT p_limit);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    PERFORM set_config('tavle.audit_log_pruning', 'off', true);
    RETURN v_n;
END $$;
REVOKE ALL ON FUNCTION audit_log_prune(uuid, timestamptz, int) FROM PUBLIC;

-- Least privilege. The application role can no longer change the audit log
-- at all (the trigger was its only guard; the pruning flag must not be
-- enough). The retention role (tavle_retention, a member of tavle_app with
-- its own login, infra/README.md 3.2) alone may prune both logs and
-- generalise anonymised results.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tavle_app') THEN
        REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON audit_log FROM tavle_app;
        REVOKE EXECUTE ON FUNCTION audit_log_prune(uuid, timestamptz, int) FROM tavle_app;
        -- Retention's own tables are retention's alone (reports are the
        -- controller's proof; the lock must not be wedged; a kept cell of
        -- anonymised results must never shrink).
        REVOKE ALL ON retention_runs, retention_run_counts, retention_lock, leaver_reports FROM tavle_app;
        REVOKE DELETE ON anonymised_results FROM tavle_app;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tavle_retention') THEN
        GRANT EXECUTE ON FUNCTION access_log_prune(uuid, timestamptz) TO tavle_retention;
        GRANT EXECUTE ON FUNCTION audit_log_prune(uuid, timestamptz, int) TO tavle_retention;
        GRANT UPDATE, DELETE ON anonymised_results TO tavle_retention;
        GRANT SELECT, INSERT, UPDATE, DELETE ON retention_runs, retention_run_counts, retention_lock, leaver_reports
            TO tavle_retention;
    END IF;
END $$;

-- The record of processing (0012) for the new tables and column.
INSERT INTO data_inventory_tables (table_name, purpose, legal_basis, retention, pupil_filter, user_filter) VALUES
('retention_runs', 'Reports of retention runs: when, what each policy did (counts only).', 'Not personal data.',
 'Kept as the controller''s proof that retention runs.', NULL, NULL),
('retention_run_counts', 'Per tenant, what a retention run did (counts only).', 'Not personal data.',
 'As long as the run''s report.', NULL, NULL),
('retention_lock', 'The lease that keeps two retention runs from working at once.', 'Not personal data.',
 'One row.', NULL, NULL),
('leaver_reports', 'Leavers'' reports: the results of a pupil who left from the final year, kept after the pupil is erased (seed 003).',
 'GDPR Art. 6(1)(e): the controller''s public task (transition to the next school).',
 'At most 12 months after leaving, then deleted by the retention component. Written when the pupil is erased, so no subject request can name its pupil: a guardian''s request is served from the report itself (GET /retention/leaver-reports).',
 NULL, NULL);

INSERT INTO data_inventory_columns (table_name, column_name, category) VALUES
('retention_runs', 'id', 'none'), ('retention_runs', 'trigger', 'none'), ('retention_runs', 'dry_run', 'none'),
('retention_runs', 'started_at', 'none'), ('retention_runs', 'finished_at', 'none'),
('retention_runs', 'status', 'none'), ('retention_runs', 'batches', 'none'),
('retention_runs', 'longest_batch_ms', 'none'), ('retention_runs', 'totals', 'none'),
('retention_runs', 'policies', 'none'),
('retention_runs', 'error', 'none'),
('retention_run_counts', 'run_id', 'none'), ('retention_run_counts', 'tenant_id', 'none'),
('retention_run_counts', 'counts', 'none'),
('retention_lock', 'id', 'none'), ('retention_lock', 'run_id', 'none'), ('retention_lock', 'held_until', 'none'),
('leaver_reports', 'id', 'none'), ('leaver_reports', 'tenant_id', 'none'), ('leaver_reports', 'school_id', 'none'),
('leaver_reports', 'pupil_id', 'pseudonymous'), ('leaver_reports', 'left_on', 'personal'),
('leaver_reports', 'delete_on', 'personal'), ('leaver_reports', 'report', 'personal'),
('leaver_reports', 'created_at', 'personal'),
('anonymised_results', 'pending', 'none');
UPDATE data_inventory_tables SET retention = 'Indefinitely; cells with fewer than 5 results generalised (school to tenant, then gender dropped) or dropped by the retention component.'
 WHERE table_name = 'anonymised_results';
UPDATE data_inventory_tables SET retention = 'The configured retention (default 12 months, at least 6), then pruned by the retention component (audit_log_prune).'
 WHERE table_name = 'audit_log';
UPDATE data_inventory_tables SET retention = 'The configured retention (default 12 months, at least 6), then pruned at a checkpoint by the retention component (access_log_prune).'
 WHERE table_name = 'access_log';
UPDATE data_inventory_tables SET retention = 'Until the session expires or is revoked, then deleted by the retention component; removed with the account.'
 WHERE table_name = 'sessions';
UPDATE data_inventory_tables SET retention = 'The configured replay window (default 30 days), then deleted by the retention component.'
 WHERE table_name = 'webhook_deliveries';
UPDATE data_inventory_tables SET retention = '7 days after the export was made, then deleted (by the subject-requests component or the retention component).'
 WHERE table_name = 'subject_exports';
