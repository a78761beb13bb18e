-- Identity-number searches are recorded in the audit log, hit or miss
-- (action `pupil.searched`, details {hit, pupil_id}; never the number or its
-- blind index), in the same statement as the search. The privacy officer
-- pages through them newest first (`GET /pupils/searches`): this index keeps
-- that a short index scan however large the rest of the audit log grows.
CREATE INDEX audit_log_pupil_searches ON audit_log (tenant_id, id) WHERE action = 'pupil.searched';
