-- k-anonymity decides each pending row's final place in one change
-- (functions/retention, `anonymity`), whatever level the row is at: a batch
-- takes the pending rows of whole (assessment, year level) groups.
DROP INDEX anonymised_results_pending;
CREATE INDEX anonymised_results_pending ON anonymised_results
    (tenant_id, assessment_id, coalesce(year_level, 0), id) WHERE pending;

-- The assessment of every anonymised result exists, as the foreign key to
-- assessments said, but checked once per statement instead of once per row
-- (the per-row check was a third of every erasure's insert): the rows are
-- inserted a batch at a time, from results that already reference their
-- assessment. KEY SHARE, as the foreign key took, keeps the assessments
-- from being deleted until the insert commits; deleting an assessment that
-- anonymised results refer to is refused; the reference never changes. The
-- checks run as the owner, as a foreign key's do.
ALTER TABLE anonymised_results DROP CONSTRAINT anonymised_results_tenant_id_assessment_id_fkey;

CREATE FUNCTION anonymised_results_check_assessment() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM 1 FROM assessments a
     WHERE (a.tenant_id, a.id) IN (SELECT DISTINCT n.tenant_id, n.assessment_id FROM new_rows n)
       FOR KEY SHARE OF a;
    IF EXISTS (SELECT 1 FROM new_rows n WHERE NOT EXISTS (
                   SELECT 1 FROM assessments a WHERE a.tenant_id = n.tenant_id AND a.id = n.assessment_id)) THEN
        RAISE EXCEPTION 'an anonymised result must belong to an assessment of its tenant'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER anonymised_results_assessment AFTER INSERT ON anonymised_results
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION anonymised_results_check_assessment();

CREATE FUNCTION anonymised_results_keep_assessment() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'the assessment of an anonymised result does not change' USING ERRCODE = 'foreign_key_violation';
END $$;
CREATE TRIGGER anonymised_results_assessment_fixed BEFORE UPDATE OF tenant_id, assessment_id ON anonymised_results
    FOR EACH ROW WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id OR OLD.assessment_id IS DISTINCT FROM NEW.assessment_id)
    EXECUTE FUNCTION anonymised_results_keep_assessment();

CREATE FUNCTION assessments_keep_anonymised_results() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM anonymised_results r WHERE r.tenant_id = OLD.tenant_id AND r.assessment_id = OLD.id) THEN
        RAISE EXCEPTION 'anonymised results still refer to the assessment' USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
-- Assessments are deleted (or re-keyed) rarely: one check per row, as a foreign key's.
CREATE TRIGGER assessments_anonymised_results AFTER DELETE ON assessments
    FOR EACH ROW EXECUTE FUNCTION assessments_keep_anonymised_results();
CREATE TRIGGER assessments_anonymised_results_key AFTER UPDATE OF tenant_id, id ON assessments
    FOR EACH ROW WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id OR OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION assessments_keep_anonymised_results();

-- Leavers are erased by cohort (school, year level, gender, as pupils
-- leave), so that a batch fills its results' k-anonymity cells itself.
DROP INDEX pupils_left;
CREATE INDEX pupils_left ON pupils (tenant_id, left_at, school_id, coalesce(year_level, 0), coalesce(gender, ''), id)
    WHERE left_at IS NOT NULL;
