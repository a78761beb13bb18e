-- A result's concern flags, kept on the result when it or a threshold is
-- written, instead of computed from the thresholds by every read.
--
-- A completed result is flagged on its total when its score is at or below
-- the assessment's threshold (`total_flagged`), and on each subtest whose
-- score is at or below that subtest's threshold (`flagged_subtests`, keys
-- in the publisher's order); absent, exempt and incomplete results are
-- never flagged. The class overview, the profile and the follow-up counts
-- read the two columns with the result. The follow-up list reaches a
-- pupil's flagged results through the partial index `results_flagged`
-- alone, without reading the pupil's other results: measured in
-- tests/benches/README.md ("Issue 14c").
--
-- Triggers keep the columns right for every writer: a result's own are set
-- when it is inserted or its scores or status change; all results of an
-- assessment are refreshed when its total's threshold changes or a subtest
-- is added, removed, re-ordered or given another threshold. The readers
-- never see a stale flag, because the refresh runs in the transaction that
-- changes the threshold.
ALTER TABLE results
    ADD COLUMN total_flagged    boolean NOT NULL DEFAULT false,
    ADD COLUMN flagged_subtests text[]  NOT NULL DEFAULT '{}';

-- The flags of a result of `assessment` with this status and these scores,
-- from the thresholds stored now.
CREATE FUNCTION result_flags(assessment uuid, status text, score float8, subtest_scores jsonb,
                             OUT total_flagged boolean, OUT flagged_subtests text[])
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(status = 'completed' AND score <= (SELECT a.threshold FROM assessments a WHERE a.id = assessment),
                    false),
           CASE WHEN status = 'completed' AND subtest_scores IS NOT NULL THEN
               ARRAY(SELECT st.key FROM assessment_subtests st
                     WHERE st.assessment_id = assessment AND (subtest_scores ->> st.key)::float8 <= st.threshold
                     ORDER BY st.position)
           ELSE '{}'::text[] END
$$;

CREATE FUNCTION results_set_flags() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT f.total_flagged, f.flagged_subtests INTO NEW.total_flagged, NEW.flagged_subtests
    FROM result_flags(NEW.assessment_id, NEW.status, NEW.score, NEW.subtest_scores) f;
    RETURN NEW;
END $$;
CREATE TRIGGER results_set_flags BEFORE INSERT OR UPDATE OF assessment_id, score, status, subtest_scores ON results
    FOR EACH ROW EXECUTE FUNCTION results_set_flags();

-- Recomputes the flags of every result of the assessments `ids`, writing
-- only the rows whose flags change.
CREATE FUNCTION results_refresh_flags(ids uuid[]) RETURNS void LANGUAGE sql AS $$
    WITH f AS (
        SELECT r.id, x.total_flagged, x.flagged_subtests
        FROM results r CROSS JOIN LATERAL result_flags(r.assessment_id, r.status, r.score, r.subtest_scores) x
        WHERE r.assessment_id = ANY(ids))
    UPDATE results r SET total_flagged = f.total_flagged, flagged_subtests = f.flagged_subtests
    FROM f
    WHERE r.id = f.id AND (r.total_flagged, r.flagged_subtests) IS DISTINCT FROM (f.total_flagged, f.flagged_subtests)
$$;

CREATE FUNCTION assessments_refresh_flags() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM results_refresh_flags(ARRAY[NEW.id]);
    RETURN NULL;
END $$;
CREATE TRIGGER assessments_refresh_flags AFTER UPDATE OF threshold ON assessments
    FOR EACH ROW WHEN (OLD.threshold IS DISTINCT FROM NEW.threshold)
    EXECUTE FUNCTION assessments_refresh_flags();

-- Per statement, over the assessments whose subtests it changed: a
-- publisher's re-send upserts every subtest, usually unchanged, and must
-- not rescan the assessment's results then.
CREATE FUNCTION assessment_subtests_added_or_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM results_refresh_flags(ARRAY(SELECT DISTINCT c.assessment_id FROM changed c));
    RETURN NULL;
END $$;
CREATE FUNCTION assessment_subtests_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM results_refresh_flags(ARRAY(
        SELECT DISTINCT n.assessment_id FROM new_rows n JOIN old_rows o ON o.assessment_id = n.assessment_id AND o.key = n.key
        WHERE (o.threshold, o.position) IS DISTINCT FROM (n.threshold, n.position)));
    RETURN NULL;
END $$;
CREATE TRIGGER assessment_subtests_inserted AFTER INSERT ON assessment_subtests
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION assessment_subtests_added_or_removed();
CREATE TRIGGER assessment_subtests_deleted AFTER DELETE ON assessment_subtests
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION assessment_subtests_added_or_removed();
CREATE TRIGGER assessment_subtests_updated AFTER UPDATE ON assessment_subtests
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION assessment_subtests_updated();

-- Results stored before this migration.
SELECT results_refresh_flags(ARRAY(SELECT a.id FROM assessments a));

-- A pupil's flagged results, for the follow-up list (a few of a pupil's
-- hundred or so results); the predicate is the readers' word for word.
CREATE INDEX results_flagged ON results (pupil_id, assessment_id)
    WHERE total_flagged OR flagged_subtests <> '{}'::text[];

-- The flags are derived from the scores: personal data as the scores are,
-- exported with the result and erased with it.
INSERT INTO data_inventory_columns (table_name, column_name, category) VALUES
('results', 'total_flagged', 'personal'), ('results', 'flagged_subtests', 'personal');
