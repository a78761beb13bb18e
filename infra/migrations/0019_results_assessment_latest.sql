-- Indexes for the follow-up counts and the follow-up list (issue 14,
-- measured in tests/benches/README.md, "Issue 14d").
--
-- results_assessment_latest: a result by assessment and pupil, latest
-- first, with its status and total flag. The counts read each member's
-- latest result of one assessment from it without a sort (the table only
-- for the members who have one), and the follow-up list checks a flagged
-- result for a later one from it alone. Not the flagged subtests: an
-- index entry must stay under 2,704 bytes, and a result flagged on all of
-- 50 subtests with 100-character keys would exceed it and could not be
-- written. It leads with assessment_id, so it serves everything
-- results_assessment served (the thresholds' refresh, the foreign key's
-- checks), and replaces it rather than adding a sixth index to every
-- result's write.
CREATE INDEX results_assessment_latest ON results (assessment_id, pupil_id, updated_at DESC, id DESC)
    INCLUDE (status, total_flagged);
DROP INDEX results_assessment;

-- assessment_subtests_listed: an assessment's subtests in the publisher's
-- order with what the follow-up list shows of them, read without visiting
-- the table for each flagged result.
CREATE INDEX assessment_subtests_listed ON assessment_subtests (assessment_id, position)
    INCLUDE (key, title, threshold);
