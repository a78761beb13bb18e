-- The per-row flags trigger of 0016 without its call to result_flags():
-- PostgreSQL 15 parses and plans a SQL function called that way afresh for
-- every row, which made a 5,000-result post about six times slower
-- (tests/benches/README.md, "Issue 14c"). Static statements in PL/pgSQL
-- keep their plans for the session, and rows that cannot be flagged
-- (absent, exempt, incomplete) skip the lookups. Same result as
-- result_flags(), which the refresh and the tests still use.
CREATE OR REPLACE FUNCTION results_set_flags() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.total_flagged := false;
    NEW.flagged_subtests := '{}'::text[];
    IF NEW.status = 'completed' THEN
        NEW.total_flagged := coalesce(
            NEW.score <= (SELECT a.threshold FROM assessments a WHERE a.id = NEW.assessment_id), false);
        IF NEW.subtest_scores IS NOT NULL THEN
            NEW.flagged_subtests := ARRAY(
                SELECT st.key FROM assessment_subtests st
                WHERE st.assessment_id = NEW.assessment_id AND (NEW.subtest_scores ->> st.key)::float8 <= st.threshold
                ORDER BY st.position);
        END IF;
    END IF;
    RETURN NEW;
END $$;
