-- The pupils the class overview and the follow-up lists count and list:
-- current (not left) and not restricted. The follow-up lists and counts
-- reach each member of a group by id and read only their tenant, school
-- and year level; with those included, PostgreSQL answers from this index
-- alone (an index-only scan, 7.5 MB for 100,000 pupils), with no heap visit
-- per pupil: for a school leader's counts, 1,000 visits of the 24 MB pupils
-- table fewer per request. Measured in tests/benches/README.md ("Issue 14b").
--
-- Only an index: no table, grant or data changes here.
CREATE INDEX pupils_current ON pupils (id) INCLUDE (tenant_id, school_id, year_level)
    WHERE NOT restricted AND left_at IS NULL;
