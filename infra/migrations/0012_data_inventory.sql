-- The data inventory: every column of every table in schema `public`
-- carries a data category, and every table its purpose, legal basis and
-- retention (GDPR Art. 30, the record of processing).
--
-- Why the access export is derived from it (component `subject-requests`,
-- functions/subject-requests/src/export.rs): a hand-written export lists
-- the tables its author knew of, and a later migration that adds a table
-- or a column about pupils silently escapes every access request. Here the
-- export reads these two tables and, for each table with a filter for the
-- subject's kind, selects the rows about the subject with every column
-- (`to_jsonb`), so a new column appears in exports as soon as it exists.
-- Tests keep the inventory complete
-- (tests/tests/subject_requests_export.rs): one fails when a column of any
-- table in `public` is not classified here (or a row here names a column
-- that does not exist), another when a column of a subject-filtered table
-- is missing from an export. `GET /privacy/inventory` serves the same rows
-- joined with the catalogue (data types).
--
-- Categories:
--   identifier    directly identifying (names, identity number and its blind
--                 index, Feide username, username, e-mail)
--   personal      other personal data (scores, items and answers, year level,
--                 gender, client IP, times of a person's activity, free text
--                 about a request ...)
--   special       special category or especially protected (special needs)
--   pseudonymous  a reference to a person by internal id
--   credential    an authentication secret: held, never disclosed in exports
--   none          not personal data
--
-- Filters (`pupil_filter`, `user_filter`): an SQL boolean expression over the
-- alias `t`, with `$1::uuid` the tenant and `$2::uuid` the subject, that
-- selects the rows of the table about that subject; NULL: the table holds no
-- rows about such a subject. Every parameter is written with its `::uuid`
-- cast (both database drivers take parameter types from the first cast),
-- and every filter constrains the tenant. The filter text is SQL run by the
-- component: only the owner writes these tables (the application role may
-- only read them, below), and a migration that adds a table adds its rows
-- here.

CREATE TABLE data_inventory_tables (
    table_name   text PRIMARY KEY,
    purpose      text NOT NULL,
    legal_basis  text NOT NULL,
    retention    text NOT NULL,
    pupil_filter text NULL,
    user_filter  text NULL
);

CREATE TABLE data_inventory_columns (
    table_name  text REFERENCES data_inventory_tables ON DELETE CASCADE,
    column_name text,
    category    text NOT NULL CHECK (category IN ('identifier', 'personal', 'special', 'pseudonymous',
                                                  'credential', 'none')),
    PRIMARY KEY (table_name, column_name)
);

INSERT INTO data_inventory_tables (table_name, purpose, legal_basis, retention, pupil_filter, user_filter) VALUES
('tenants', 'The controllers (municipalities, private school owners) whose data Tavle processes.',
 'Not personal data.', 'While the controller is a customer.', NULL, NULL),
('schools', 'The schools of a controller.', 'Not personal data.', 'While the school is in use.', NULL, NULL),
('groups', 'Groups and classes of a school.', 'Not personal data.', 'While the group is in use.', NULL, NULL),
('users', 'Staff accounts: login, display, access control.',
 'GDPR Art. 6(1)(e): staff accounts are needed to perform the controller''s public task (following up pupils) securely (Art. 32).',
 'While the account exists; a deleted account''s personal data is pseudonymised within 3 months.',
 NULL, 't.tenant_id = $1::uuid AND t.id = $2::uuid'),
('role_grants', 'Which roles and scopes (group, school) a staff user holds: access control.',
 'GDPR Art. 6(1)(e) with Art. 32 (access control).', 'While the grant is held; removed with the account.',
 NULL, 't.tenant_id = $1::uuid AND t.user_id = $2::uuid'),
('sessions', 'Login sessions of staff users (when, until when, revoked).',
 'GDPR Art. 6(1)(e) with Art. 32 (authentication).', 'Until the session expires or is revoked; removed with the account.',
 NULL, 't.tenant_id = $1::uuid AND t.user_id = $2::uuid'),
('audit_log', 'Append-only record of security events, administrative changes, searches, transfers and data-subject requests.',
 'GDPR Art. 6(1)(c) with Art. 5(2) and 32: accountability and security of processing.',
 'Append-only; kept as the controller''s proof of processing. Erasure removes identifying details of the subject.',
 't.tenant_id = $1::uuid AND ((t.target_kind = ''pupil'' AND t.target_id = $2::uuid::text) OR t.details->>''pupil_id'' = $2::uuid::text OR (t.target_kind = ''subject_request'' AND t.target_id IN (SELECT s.id::text FROM subject_requests s WHERE s.tenant_id = $1::uuid AND s.subject_kind = ''pupil'' AND s.subject_id = $2::uuid)))',
 't.tenant_id = $1::uuid AND (t.actor_user_id = $2::uuid OR (t.target_kind = ''user'' AND t.target_id = $2::uuid::text) OR (t.target_kind = ''subject_request'' AND t.target_id IN (SELECT s.id::text FROM subject_requests s WHERE s.tenant_id = $1::uuid AND s.subject_kind = ''user'' AND s.subject_id = $2::uuid)))'),
('pupils', 'The pupil register: identity, names, school, year level, the special-needs flag, restriction of processing.',
 'GDPR Art. 6(1)(e) and (c): the controller''s statutory duty to follow up pupils'' learning (Education Act); Art. 9(2)(g) for the special-needs flag.',
 'While the pupil attends a school of the controller; leavers at most 12 months, then erased (results anonymised).',
 't.tenant_id = $1::uuid AND t.id = $2::uuid', NULL),
('group_memberships', 'Which groups a pupil belongs to (from the school administrative system).',
 'GDPR Art. 6(1)(e): follow-up of pupils by their teachers.', 'While the pupil is in the group; removed at erasure.',
 't.tenant_id = $1::uuid AND t.pupil_id = $2::uuid', NULL),
('webhook_sources', 'School administrative systems and test publishers that send data.', 'Not personal data.',
 'While the source is registered.', NULL, NULL),
('webhook_secrets', 'Signing secrets and public keys of webhook sources.', 'Not personal data (security of processing, Art. 32).',
 'Until rotated out (expires_at) or the source is removed.', NULL, NULL),
('webhook_deliveries', 'Processed webhook ids and their outcome (idempotency of deliveries).', 'Not personal data.',
 'As long as re-deliveries are answered.', NULL, NULL),
('assessments', 'Tests and screenings (kartlegginger) whose results are held; for a pupil, those they took; for staff, those they registered.',
 'GDPR Art. 6(1)(e): follow-up of pupils'' learning.', 'While results of the assessment are held.',
 't.tenant_id = $1::uuid AND t.id IN (SELECT r.assessment_id FROM results r WHERE r.tenant_id = $1::uuid AND r.pupil_id = $2::uuid)',
 't.tenant_id = $1::uuid AND t.created_by = $2::uuid'),
('results', 'Pupils'' results: scores, status, items and answers, subtest scores, from publishers or registered manually by staff.',
 'GDPR Art. 6(1)(e): the controller''s duty to follow up pupils'' learning (Education Act).',
 'While the pupil attends a school of the controller; at erasure or after leaving, anonymised (anonymised_results).',
 't.tenant_id = $1::uuid AND t.pupil_id = $2::uuid',
 -- Not for staff: the results a teacher recorded are the pupils' data (Art. 15(4)); the audit log
 -- holds the teacher's registrations as their own actions.
 NULL),
('access_log', 'Tamper-evident log of every access to pupil data: who, when, from where, which pupils.',
 'GDPR Art. 6(1)(c) with Art. 5(2) and 32; the customer''s logging requirement (seed 004 3.4.3.3.10).',
 'At least 6 months, then pruned (access_log_prune).',
 't.tenant_id = $1::uuid AND t.pupil_ids @> ARRAY[$2::uuid]', 't.tenant_id = $1::uuid AND t.actor_user_id = $2::uuid'),
('access_log_heads', 'The heads of the access log''s hash chains.', 'Not personal data.', 'As long as the access log.', NULL, NULL),
('access_log_checkpoints', 'Checkpoints of the access log''s hash chains (prunes, anchors).', 'Not personal data.',
 'As long as the access log.', NULL, NULL),
('webhook_source_schools', 'Which schools a school administrative system may sync.', 'Not personal data.',
 'While the binding exists.', NULL, NULL),
('assessment_subtests', 'Subtests and concern thresholds of assessments.', 'Not personal data.',
 'As long as the assessment.', NULL, NULL),
('subject_requests', 'Data-subject requests (GDPR Art. 15-21): what was asked, how the requester was verified, the outcome.',
 'GDPR Art. 6(1)(c): Art. 12-21 and the duty to prove compliance (Art. 5(2)).',
 'Kept as proof that the request was served; after erasure the subject is named only by an unlinked id.',
 't.tenant_id = $1::uuid AND t.subject_kind = ''pupil'' AND t.subject_id = $2::uuid',
 't.tenant_id = $1::uuid AND t.subject_kind = ''user'' AND t.subject_id = $2::uuid'),
('subject_exports', 'Encrypted access and portability exports awaiting download by the privacy officer; a copy of data listed elsewhere in this inventory, so not itself exported.',
 'GDPR Art. 6(1)(c): Art. 15 and 20.', '7 days after the export was made, then deleted.', NULL, NULL),
('pupil_corrections', 'Rectified fields that a school administrative system supplies, kept until the source sends the corrected value.',
 'GDPR Art. 6(1)(c): Art. 16 (rectification).', 'Until the source sends the corrected value; removed at erasure.',
 't.tenant_id = $1::uuid AND t.pupil_id = $2::uuid', NULL),
('erased_pupils', 'Keyed hashes of erased pupils'' identifiers, so that a roster does not re-create them; they find no one.',
 'GDPR Art. 6(1)(c): Art. 17 (erasure must hold).', 'As long as sources may still send the erased pupil.', NULL, NULL),
('anonymised_results', 'Results of erased pupils without any link to the pupil, for statistics.',
 'Not personal data (anonymised).', 'Indefinitely; small cells generalised by the retention component.', NULL, NULL),
('subject_keys', 'Per-subject keys that encrypt rectifications'' before and after values in the audit log (destroyed at erasure).',
 'GDPR Art. 6(1)(c): Art. 16, 17 and 32.', 'Until the subject is erased.',
 't.tenant_id = $1::uuid AND t.subject_id = $2::uuid', 't.tenant_id = $1::uuid AND t.subject_id = $2::uuid'),
('data_inventory_tables', 'This record of processing: tables, purposes, legal bases, retention, subject filters.',
 'Not personal data (GDPR Art. 30).', 'Maintained by the migrations.', NULL, NULL),
('data_inventory_columns', 'This record of processing: the data category of every column.',
 'Not personal data (GDPR Art. 30).', 'Maintained by the migrations.', NULL, NULL),
('_sqlx_migrations', 'The migrations applied to the database.', 'Not personal data.', 'Maintained by the migrations.', NULL, NULL);

INSERT INTO data_inventory_columns (table_name, column_name, category) VALUES
('tenants', 'id', 'none'), ('tenants', 'slug', 'none'), ('tenants', 'name', 'none'), ('tenants', 'created_at', 'none'),

('schools', 'id', 'none'), ('schools', 'tenant_id', 'none'), ('schools', 'external_id', 'none'),
('schools', 'name', 'none'), ('schools', 'created_at', 'none'),

('groups', 'id', 'none'), ('groups', 'tenant_id', 'none'), ('groups', 'school_id', 'none'),
('groups', 'external_id', 'none'), ('groups', 'name', 'none'), ('groups', 'year_level', 'none'),
('groups', 'created_at', 'none'),

('users', 'id', 'pseudonymous'), ('users', 'tenant_id', 'none'), ('users', 'username', 'identifier'),
('users', 'display_name', 'identifier'), ('users', 'email', 'identifier'), ('users', 'feide_username', 'identifier'),
('users', 'password_hash', 'credential'), ('users', 'language', 'personal'), ('users', 'active', 'personal'),
('users', 'failed_logins', 'personal'), ('users', 'locked_until', 'personal'), ('users', 'last_login_at', 'personal'),
('users', 'created_at', 'personal'), ('users', 'updated_at', 'personal'), ('users', 'deleted_at', 'personal'),

('role_grants', 'id', 'none'), ('role_grants', 'tenant_id', 'none'), ('role_grants', 'user_id', 'pseudonymous'),
('role_grants', 'role', 'personal'), ('role_grants', 'school_id', 'personal'), ('role_grants', 'group_id', 'personal'),
('role_grants', 'created_at', 'personal'),

('sessions', 'id', 'personal'), ('sessions', 'tenant_id', 'none'), ('sessions', 'user_id', 'pseudonymous'),
('sessions', 'secret_hash', 'credential'), ('sessions', 'created_at', 'personal'), ('sessions', 'last_seen_at', 'personal'),
('sessions', 'idle_expires_at', 'personal'), ('sessions', 'expires_at', 'personal'), ('sessions', 'revoked_at', 'personal'),

('audit_log', 'id', 'none'), ('audit_log', 'tenant_id', 'none'), ('audit_log', 'at', 'personal'),
('audit_log', 'actor_user_id', 'pseudonymous'), ('audit_log', 'actor', 'none'), ('audit_log', 'action', 'personal'),
('audit_log', 'target_kind', 'none'), ('audit_log', 'target_id', 'pseudonymous'), ('audit_log', 'client_ip', 'personal'),
('audit_log', 'request_id', 'none'), ('audit_log', 'details', 'personal'),

('pupils', 'id', 'pseudonymous'), ('pupils', 'tenant_id', 'none'), ('pupils', 'school_id', 'personal'),
('pupils', 'identity_enc', 'identifier'), ('pupils', 'identity_index', 'identifier'),
('pupils', 'feide_username', 'identifier'), ('pupils', 'given_name', 'identifier'), ('pupils', 'family_name', 'identifier'),
('pupils', 'year_level', 'personal'), ('pupils', 'gender', 'personal'), ('pupils', 'special_needs', 'special'),
('pupils', 'restricted', 'personal'), ('pupils', 'left_at', 'personal'), ('pupils', 'created_at', 'personal'),
('pupils', 'updated_at', 'personal'),

('group_memberships', 'tenant_id', 'none'), ('group_memberships', 'group_id', 'personal'),
('group_memberships', 'pupil_id', 'pseudonymous'),

('webhook_sources', 'id', 'none'), ('webhook_sources', 'tenant_id', 'none'), ('webhook_sources', 'kind', 'none'),
('webhook_sources', 'name', 'none'), ('webhook_sources', 'active', 'none'), ('webhook_sources', 'created_at', 'none'),
('webhook_sources', 'disabled_at', 'none'),

('webhook_secrets', 'id', 'none'), ('webhook_secrets', 'tenant_id', 'none'), ('webhook_secrets', 'source_id', 'none'),
('webhook_secrets', 'secret_enc', 'credential'), ('webhook_secrets', 'public_key', 'none'),
('webhook_secrets', 'created_at', 'none'), ('webhook_secrets', 'expires_at', 'none'),

('webhook_deliveries', 'source_id', 'none'), ('webhook_deliveries', 'webhook_id', 'none'),
('webhook_deliveries', 'tenant_id', 'none'), ('webhook_deliveries', 'received_at', 'none'),
('webhook_deliveries', 'status', 'none'), ('webhook_deliveries', 'response', 'none'), ('webhook_deliveries', 'kind', 'none'),

('assessments', 'id', 'none'), ('assessments', 'tenant_id', 'none'), ('assessments', 'source_id', 'none'),
('assessments', 'external_id', 'none'), ('assessments', 'title', 'none'), ('assessments', 'subject', 'none'),
('assessments', 'year_level', 'none'), ('assessments', 'max_score', 'none'), ('assessments', 'administered_on', 'none'),
('assessments', 'created_at', 'none'), ('assessments', 'updated_at', 'none'), ('assessments', 'family', 'none'),
('assessments', 'threshold', 'none'), ('assessments', 'created_by', 'pseudonymous'),

('results', 'id', 'none'), ('results', 'tenant_id', 'none'), ('results', 'pupil_id', 'pseudonymous'),
('results', 'assessment_id', 'personal'), ('results', 'source_id', 'personal'), ('results', 'external_id', 'personal'),
('results', 'recorded_by', 'pseudonymous'), ('results', 'score', 'personal'), ('results', 'status', 'personal'),
('results', 'completed_at', 'personal'), ('results', 'items', 'personal'), ('results', 'created_at', 'personal'),
('results', 'updated_at', 'personal'), ('results', 'subtest_scores', 'personal'),

('access_log', 'tenant_id', 'none'), ('access_log', 'seq', 'none'), ('access_log', 'at', 'personal'),
('access_log', 'actor_user_id', 'pseudonymous'), ('access_log', 'action', 'personal'),
('access_log', 'pupil_ids', 'pseudonymous'), ('access_log', 'client_ip', 'personal'), ('access_log', 'request_id', 'none'),
('access_log', 'prev_hash', 'none'), ('access_log', 'hash', 'none'), ('access_log', 'lane', 'none'),
('access_log', 'format', 'none'), ('access_log', 'id', 'none'),

('access_log_heads', 'tenant_id', 'none'), ('access_log_heads', 'seq', 'none'), ('access_log_heads', 'hash', 'none'),
('access_log_heads', 'lane', 'none'),

('access_log_checkpoints', 'tenant_id', 'none'), ('access_log_checkpoints', 'id', 'none'),
('access_log_checkpoints', 'kind', 'none'), ('access_log_checkpoints', 'at', 'none'),
('access_log_checkpoints', 'cut_before', 'none'), ('access_log_checkpoints', 'lane_seqs', 'none'),
('access_log_checkpoints', 'lane_hashes', 'none'), ('access_log_checkpoints', 'deleted', 'none'),
('access_log_checkpoints', 'prev_digest', 'none'), ('access_log_checkpoints', 'digest', 'none'),

('webhook_source_schools', 'tenant_id', 'none'), ('webhook_source_schools', 'source_id', 'none'),
('webhook_source_schools', 'source_kind', 'none'), ('webhook_source_schools', 'school_external_id', 'none'),
('webhook_source_schools', 'created_at', 'none'),

('assessment_subtests', 'tenant_id', 'none'), ('assessment_subtests', 'assessment_id', 'none'),
('assessment_subtests', 'key', 'none'), ('assessment_subtests', 'position', 'none'),
('assessment_subtests', 'title', 'none'), ('assessment_subtests', 'max_score', 'none'),
('assessment_subtests', 'threshold', 'none'),

('subject_requests', 'id', 'none'), ('subject_requests', 'tenant_id', 'none'), ('subject_requests', 'kind', 'personal'),
('subject_requests', 'subject_kind', 'personal'), ('subject_requests', 'subject_id', 'pseudonymous'),
('subject_requests', 'status', 'personal'), ('subject_requests', 'received_on', 'personal'),
('subject_requests', 'due_on', 'personal'), ('subject_requests', 'extended_months', 'personal'),
('subject_requests', 'extension_reason', 'personal'), ('subject_requests', 'identity_verification', 'personal'),
('subject_requests', 'corrections', 'personal'), ('subject_requests', 'registered_by', 'pseudonymous'),
('subject_requests', 'rejection_reason', 'personal'), ('subject_requests', 'decision', 'personal'),
('subject_requests', 'decision_reason', 'personal'), ('subject_requests', 'outcome', 'personal'),
('subject_requests', 'created_at', 'personal'), ('subject_requests', 'updated_at', 'personal'),
('subject_requests', 'completed_at', 'personal'),

('subject_exports', 'id', 'none'), ('subject_exports', 'tenant_id', 'none'), ('subject_exports', 'request_id', 'none'),
('subject_exports', 'format', 'none'), ('subject_exports', 'content_enc', 'personal'), ('subject_exports', 'bytes', 'none'),
('subject_exports', 'created_by', 'pseudonymous'), ('subject_exports', 'created_at', 'none'),
('subject_exports', 'expires_at', 'none'),

('pupil_corrections', 'tenant_id', 'none'), ('pupil_corrections', 'pupil_id', 'pseudonymous'),
('pupil_corrections', 'field', 'personal'), ('pupil_corrections', 'source_value', 'identifier'),
('pupil_corrections', 'request_id', 'none'), ('pupil_corrections', 'corrected_at', 'personal'),

('erased_pupils', 'tenant_id', 'none'), ('erased_pupils', 'tombstone', 'pseudonymous'),
('erased_pupils', 'erased_on', 'none'),

('anonymised_results', 'id', 'none'), ('anonymised_results', 'tenant_id', 'none'),
('anonymised_results', 'assessment_id', 'none'), ('anonymised_results', 'school_id', 'none'),
('anonymised_results', 'year_level', 'none'), ('anonymised_results', 'gender', 'none'),
('anonymised_results', 'status', 'none'), ('anonymised_results', 'score', 'none'),
('anonymised_results', 'subtest_scores', 'none'), ('anonymised_results', 'completed_month', 'none'),
('anonymised_results', 'anonymised_on', 'none'),

('subject_keys', 'tenant_id', 'none'), ('subject_keys', 'subject_id', 'pseudonymous'),
('subject_keys', 'key_enc', 'credential'), ('subject_keys', 'created_at', 'personal'),

('data_inventory_tables', 'table_name', 'none'), ('data_inventory_tables', 'purpose', 'none'),
('data_inventory_tables', 'legal_basis', 'none'), ('data_inventory_tables', 'retention', 'none'),
('data_inventory_tables', 'pupil_filter', 'none'), ('data_inventory_tables', 'user_filter', 'none'),

('data_inventory_columns', 'table_name', 'none'), ('data_inventory_columns', 'column_name', 'none'),
('data_inventory_columns', 'category', 'none'),

('_sqlx_migrations', 'version', 'none'), ('_sqlx_migrations', 'description', 'none'),
('_sqlx_migrations', 'installed_on', 'none'), ('_sqlx_migrations', 'success', 'none'),
('_sqlx_migrations', 'checksum', 'none'), ('_sqlx_migrations', 'execution_time', 'none');

-- The audit-log filters of exports: records that name a pupil in their
-- details (searches, manual results), and a staff user's own actions. The
-- other branches use audit_log_target and audit_log_subject_requests; the
-- access log's use access_log_pupils (GIN, `@>`). A staff user's access
-- records are found by a scan of the tenant's log: rare, and an index on
-- the actor would cost every read of pupil data an index update.
CREATE INDEX audit_log_details_pupil ON audit_log (tenant_id, (details->>'pupil_id'));
CREATE INDEX audit_log_actor ON audit_log (tenant_id, actor_user_id) WHERE actor_user_id IS NOT NULL;

-- Least privilege: the application role reads the inventory (exports, the
-- record of processing) and can change none of it: a filter it could
-- rewrite would be SQL it could make the component run.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tavle_app') THEN
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
            ON data_inventory_tables, data_inventory_columns FROM tavle_app;
    END IF;
END $$;
