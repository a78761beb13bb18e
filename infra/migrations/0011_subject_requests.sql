-- Data-subject rights (component `subject-requests`, GDPR Art. 12-21).
--
-- A privacy officer registers a request that a guardian or a staff member
-- made to the controller (the municipality), and fulfils it here. A
-- request's history is the audit log (target kind `subject_request`):
-- registration, start, extension, rejection, fulfilment, downloads.
--
-- Erasure removes the subject; the request row stays as the proof that it
-- was served (Art. 5(2)), naming the subject only by its random id, which
-- nothing links to a person afterwards. Free-text fields of the requests
-- (verification, reasons) are scrubbed of the subject's names at erasure.

CREATE TABLE subject_requests (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid NOT NULL REFERENCES tenants (id),
    kind                  text NOT NULL CHECK (kind IN ('access', 'rectification', 'erasure', 'restriction',
                                                        'restriction_lifted', 'portability', 'objection')),
    -- A pupil or a staff user; no foreign key, so that the row outlives an
    -- erased subject (the id is then an orphan uuid).
    subject_kind          text NOT NULL CHECK (subject_kind IN ('pupil', 'user')),
    subject_id            uuid NOT NULL,
    status                text NOT NULL DEFAULT 'received'
                          CHECK (status IN ('received', 'in_progress', 'completed', 'rejected')),
    received_on           date NOT NULL,
    -- One calendar month after receipt (Art. 12(3)); once extended, by up
    -- to two further months.
    due_on                date NOT NULL,
    extended_months       int CHECK (extended_months IS NULL OR extended_months BETWEEN 1 AND 2),
    extension_reason      text CHECK (extension_reason IS NULL OR length(extension_reason) BETWEEN 1 AND 2000),
    -- How the controller verified the requester's identity (free text).
    identity_verification text NOT NULL CHECK (length(identity_verification) BETWEEN 1 AND 2000),
    -- Rectification: the corrections asked for, [{field, value}].
    corrections           jsonb CHECK (corrections IS NULL OR jsonb_typeof(corrections) = 'array'),
    registered_by         uuid NOT NULL,
    rejection_reason      text CHECK (rejection_reason IS NULL OR length(rejection_reason) BETWEEN 1 AND 2000),
    -- Objection: the controller's decision and why.
    decision              text CHECK (decision IS NULL OR decision IN ('upheld', 'dismissed')),
    decision_reason       text CHECK (decision_reason IS NULL OR length(decision_reason) BETWEEN 1 AND 2000),
    -- The completion record: what was done, and the recipients (Art. 19):
    -- the sources that supplied the subject's data.
    outcome               jsonb,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    completed_at          timestamptz,
    UNIQUE (tenant_id, id),
    CHECK ((status = 'rejected') = (rejection_reason IS NOT NULL)),
    CHECK ((status IN ('completed', 'rejected')) = (completed_at IS NOT NULL)),
    CHECK ((extended_months IS NULL) = (extension_reason IS NULL)),
    CHECK (kind = 'rectification' OR corrections IS NULL),
    CHECK (kind = 'objection' OR decision IS NULL)
);
CREATE INDEX subject_requests_list ON subject_requests (tenant_id, received_on DESC, id DESC);
CREATE INDEX subject_requests_subject ON subject_requests (tenant_id, subject_id);
CREATE INDEX subject_requests_open ON subject_requests (tenant_id, due_on) WHERE status IN ('received', 'in_progress');

-- Exports of access and portability requests: the JSON document (and for
-- portability the results as CSV), AES-256-GCM under a key the component
-- derives from its own secret, downloadable until `expires_at`, then
-- deleted (by the component when it next runs for the tenant, and by the
-- retention component).
CREATE TABLE subject_exports (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL,
    request_id  uuid NOT NULL,
    format      text NOT NULL CHECK (format IN ('json', 'csv')),
    content_enc bytea NOT NULL,
    bytes       bigint NOT NULL CHECK (bytes >= 0),
    created_by  uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    UNIQUE (request_id, format),
    FOREIGN KEY (tenant_id, request_id) REFERENCES subject_requests (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX subject_exports_expiry ON subject_exports (expires_at);

-- Rectified fields that a school administrative system supplies. A roster
-- that sends the value as it was before the correction (`source_value`)
-- leaves the correction in place, and its answer says so; a roster that
-- sends any other value (the source has corrected its own record) applies
-- it and the correction is dropped.
CREATE TABLE pupil_corrections (
    tenant_id    uuid NOT NULL,
    pupil_id     uuid NOT NULL,
    field        text NOT NULL CHECK (field IN ('given_name', 'family_name', 'year_level', 'gender')),
    source_value text,
    request_id   uuid NOT NULL,
    corrected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pupil_id, field),
    FOREIGN KEY (tenant_id, pupil_id) REFERENCES pupils (tenant_id, id) ON DELETE CASCADE
);

-- Erased pupils, so that a roster that still lists one does not re-create
-- them: a keyed hash (HMAC under the blind-index key with its own label,
-- see BlindIndex::tombstone_of_index) of the blind index or the Feide
-- username. It is not the blind index, which erasure destroys, and finds
-- nothing: it only answers "was erased" for a number a source sends. A
-- roster skips such pupils and reports them (`erased_skipped`).
-- No request id and only the date: nothing leads from a tombstone (which
-- whoever holds the key and an identity number can recompute) to the
-- request, and from there to the pupil's old id in the logs.
CREATE TABLE erased_pupils (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    tombstone  bytea NOT NULL CHECK (octet_length(tombstone) = 32),
    erased_on  date NOT NULL DEFAULT current_date,
    PRIMARY KEY (tenant_id, tombstone)
);

-- Results of erased pupils, kept for statistics without any link to the
-- pupil or to what a source could link back (no result or pupil external
-- ids, no items or answers): assessment, school, year level, gender,
-- status, scores, the month completed. The retention component generalises
-- cells with fewer than five results.
CREATE TABLE anonymised_results (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    assessment_id   uuid NOT NULL,
    school_id       uuid,
    year_level      int,
    gender          text,
    status          text NOT NULL,
    score           float8,
    subtest_scores  jsonb,
    completed_month date,
    -- The date only: the rows of one erasure are not told apart from others by time.
    anonymised_on   date NOT NULL DEFAULT current_date,
    FOREIGN KEY (tenant_id, assessment_id) REFERENCES assessments (tenant_id, id)
);
CREATE INDEX anonymised_results_assessment ON anonymised_results (tenant_id, assessment_id);

-- Per subject, the key that encrypts the before and after values of
-- rectifications in the audit log (which is append-only): erasure deletes
-- the key, and those values can never be read again (crypto-shredding).
-- The key is stored wrapped (AES-256-GCM under the component's key).
CREATE TABLE subject_keys (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    subject_id uuid NOT NULL,
    key_enc    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, subject_id)
);

-- The history of a request is read by target.
CREATE INDEX audit_log_subject_requests ON audit_log (tenant_id, target_id, id) WHERE target_kind = 'subject_request';

-- Least privilege: the application role gets SELECT, INSERT, UPDATE and
-- DELETE on the new tables by default privileges; nothing more. Anonymised
-- results are never updated.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tavle_app') THEN
        REVOKE TRUNCATE, REFERENCES, TRIGGER ON subject_requests, subject_exports, pupil_corrections,
            erased_pupils, anonymised_results, subject_keys FROM tavle_app;
        REVOKE UPDATE ON anonymised_results FROM tavle_app;
    END IF;
END $$;
