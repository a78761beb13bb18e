-- The flags of 0016/0017 made harder to get wrong (from a review of 0016):
--
-- * Every write of a result's flags goes through the row trigger, a direct
--   `UPDATE results SET total_flagged = ...` included: the trigger now fires
--   on the flag columns too and sets them from the thresholds.
-- * One trigger function refreshes the results of the assessments whose
--   thresholds a statement changed, for the assessments and their subtests
--   alike. It compares whole rows of a subtests update, so a changed key or
--   a subtest moved to another assessment refreshes both assessments (0016
--   compared threshold and position under the same key only). It replaces
--   results_refresh_flags(), which the application role could call, and
--   the three trigger functions around it. Its search_path is fixed.
-- * The functions that run per row name their tables with their schema
--   instead of a fixed search_path, which would cost a configuration change
--   per call; result_flags() names its parameters with the function's name,
--   so that a column of the same name cannot take their place.
-- * TRUNCATE of assessment_subtests would bypass the refresh: refused (only
--   the owner may truncate; DELETE refreshes).
CREATE OR REPLACE FUNCTION result_flags(assessment uuid, status text, score float8, subtest_scores jsonb,
                                        OUT total_flagged boolean, OUT flagged_subtests text[])
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(result_flags.status = 'completed'
                    AND result_flags.score <= (SELECT a.threshold FROM public.assessments a
                                               WHERE a.id = result_flags.assessment),
                    false),
           CASE WHEN result_flags.status = 'completed' AND result_flags.subtest_scores IS NOT NULL THEN
               ARRAY(SELECT st.key FROM public.assessment_subtests st
                     WHERE st.assessment_id = result_flags.assessment
                       AND (result_flags.subtest_scores ->> st.key)::float8 <= st.threshold
                     ORDER BY st.position)
           ELSE '{}'::text[] END
$$;

-- 0017's body, with its tables named with their schema.
CREATE OR REPLACE FUNCTION results_set_flags() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.total_flagged := false;
    NEW.flagged_subtests := '{}'::text[];
    IF NEW.status = 'completed' THEN
        NEW.total_flagged := coalesce(
            NEW.score <= (SELECT a.threshold FROM public.assessments a WHERE a.id = NEW.assessment_id), false);
        IF NEW.subtest_scores IS NOT NULL THEN
            NEW.flagged_subtests := ARRAY(
                SELECT st.key FROM public.assessment_subtests st
                WHERE st.assessment_id = NEW.assessment_id AND (NEW.subtest_scores ->> st.key)::float8 <= st.threshold
                ORDER BY st.position);
        END IF;
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER results_set_flags ON results;
CREATE TRIGGER results_set_flags BEFORE INSERT OR UPDATE OF assessment_id, score, status, subtest_scores,
                                                           total_flagged, flagged_subtests ON results
    FOR EACH ROW EXECUTE FUNCTION results_set_flags();

-- Per statement, over the assessments whose thresholds it changed: a
-- publisher's re-send upserts the assessment and every subtest, usually
-- unchanged, and must not rescan the assessment's results then. Only the
-- rows whose flags change are written (and the row trigger above sets
-- them).
CREATE FUNCTION results_refresh_flags_after_threshold_change() RETURNS trigger LANGUAGE plpgsql
    SET search_path = public, pg_temp AS $$
DECLARE
    changed uuid[];
BEGIN
    IF TG_TABLE_NAME = 'assessments' THEN
        changed := ARRAY(SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id
                         WHERE o.threshold IS DISTINCT FROM n.threshold);
    ELSIF TG_OP = 'INSERT' THEN
        changed := ARRAY(SELECT DISTINCT n.assessment_id FROM new_rows n);
    ELSIF TG_OP = 'DELETE' THEN
        changed := ARRAY(SELECT DISTINCT o.assessment_id FROM old_rows o);
    ELSE
        changed := ARRAY(
            SELECT DISTINCT d.assessment_id FROM (
                (SELECT n.assessment_id, n.key, n.threshold, n.position FROM new_rows n
                 EXCEPT SELECT o.assessment_id, o.key, o.threshold, o.position FROM old_rows o)
                UNION ALL
                (SELECT o.assessment_id, o.key, o.threshold, o.position FROM old_rows o
                 EXCEPT SELECT n.assessment_id, n.key, n.threshold, n.position FROM new_rows n)) d);
    END IF;
    IF cardinality(changed) > 0 THEN
        WITH f AS (
            SELECT r.id, x.total_flagged, x.flagged_subtests
            FROM results r CROSS JOIN LATERAL result_flags(r.assessment_id, r.status, r.score, r.subtest_scores) x
            WHERE r.assessment_id = ANY(changed))
        UPDATE results r SET total_flagged = f.total_flagged, flagged_subtests = f.flagged_subtests
        FROM f
        WHERE r.id = f.id
          AND (r.total_flagged, r.flagged_subtests) IS DISTINCT FROM (f.total_flagged, f.flagged_subtests);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER assessments_refresh_flags ON assessments;
DROP TRIGGER assessment_subtests_inserted ON assessment_subtests;
DROP TRIGGER assessment_subtests_deleted ON assessment_subtests;
DROP TRIGGER assessment_subtests_updated ON assessment_subtests;
DROP FUNCTION assessments_refresh_flags();
DROP FUNCTION assessment_subtests_added_or_removed();
DROP FUNCTION assessment_subtests_updated();
DROP FUNCTION results_refresh_flags(uuid[]);

-- Transition tables rule out a column list (UPDATE OF threshold): the
-- function compares the thresholds itself.
CREATE TRIGGER assessments_refresh_flags AFTER UPDATE ON assessments
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION results_refresh_flags_after_threshold_change();
CREATE TRIGGER assessment_subtests_inserted AFTER INSERT ON assessment_subtests
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION results_refresh_flags_after_threshold_change();
CREATE TRIGGER assessment_subtests_deleted AFTER DELETE ON assessment_subtests
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION results_refresh_flags_after_threshold_change();
CREATE TRIGGER assessment_subtests_updated AFTER UPDATE ON assessment_subtests
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION results_refresh_flags_after_threshold_change();

CREATE FUNCTION assessment_subtests_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'assessment_subtests is not truncated: DELETE its rows, so that the results'' flags follow';
END $$;
CREATE TRIGGER assessment_subtests_no_truncate BEFORE TRUNCATE ON assessment_subtests
    FOR EACH STATEMENT EXECUTE FUNCTION assessment_subtests_no_truncate();

-- The record of processing names the flags with the results they come from.
UPDATE data_inventory_tables
SET purpose = 'Pupils'' results: scores, status, items and answers, subtest scores, and the concern flags derived '
              'from them and the assessment''s thresholds (which scores are at or below a threshold), from '
              'publishers or registered manually by staff.'
WHERE table_name = 'results';
