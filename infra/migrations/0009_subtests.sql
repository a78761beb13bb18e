-- Subtests (delprøver) and concern thresholds (bekymringsgrenser).
--
-- An assessment may have a threshold on its total and subtests, each with a
-- maximum and an optional threshold: a completed result scoring at or below
-- a threshold needs follow-up. Publishers send them with the assessment in
-- the results post; `family` is the publisher's key of a test series (the
-- same test given across terms or year levels, e.g. `lesing-kartlegging`),
-- scoped to its source, so that a pupil's profile can say whether they
-- moved above or below a threshold since the last administration.
ALTER TABLE assessments
    ADD COLUMN family    text CHECK (family IS NULL OR (length(family) BETWEEN 1 AND 200 AND family = btrim(family))),
    ADD COLUMN threshold float8,
    ADD CONSTRAINT assessments_threshold CHECK (threshold IS NULL OR (threshold >= 0 AND threshold <= max_score));

-- `key` is the publisher's id of the subtest, unique within its assessment;
-- `position` keeps the publisher's order.
CREATE TABLE assessment_subtests (
    tenant_id     uuid NOT NULL,
    assessment_id uuid NOT NULL,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 100 AND key = btrim(key)),
    position      int NOT NULL CHECK (position >= 0),
    title         text NOT NULL CHECK (length(title) BETWEEN 1 AND 300),
    max_score     float8 NOT NULL CHECK (max_score > 0),
    threshold     float8 CHECK (threshold IS NULL OR (threshold >= 0 AND threshold <= max_score)),
    PRIMARY KEY (assessment_id, key),
    FOREIGN KEY (tenant_id, assessment_id) REFERENCES assessments (tenant_id, id) ON DELETE CASCADE
);

-- A result's subtest scores, `{"<subtest key>": score}`: read with the result
-- it belongs to (the overview and the follow-up lists fetch results by pupil
-- and assessment), so a column on the row costs no extra index probe, where
-- a child table would cost one per result. The ingest checks that every key
-- is a subtest of the assessment and every score within its maximum.
ALTER TABLE results
    ADD COLUMN subtest_scores jsonb CHECK (subtest_scores IS NULL OR jsonb_typeof(subtest_scores) = 'object');

-- The previous administration of a test family, for the profile.
CREATE INDEX assessments_family ON assessments (tenant_id, source_id, family, administered_on) WHERE family IS NOT NULL;

-- Assessments registered manually by a tenant admin (`POST /assessments`)
-- have no source and no external id; they carry who registered them.
ALTER TABLE assessments
    ALTER COLUMN source_id DROP NOT NULL,
    ALTER COLUMN external_id DROP NOT NULL,
    ADD COLUMN created_by uuid,
    ADD CONSTRAINT assessments_origin CHECK (
        (source_id IS NOT NULL AND external_id IS NOT NULL) OR (source_id IS NULL AND created_by IS NOT NULL));

-- Least privilege: the application role gets SELECT, INSERT, UPDATE and
-- DELETE on the new table by default privileges (ingest replaces an
-- assessment's subtests when a publisher re-sends it); nothing more.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tavle_app') THEN
        REVOKE TRUNCATE, REFERENCES, TRIGGER ON assessment_subtests FROM tavle_app;
    END IF;
END $$;
