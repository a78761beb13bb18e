-- A webhook id is remembered with the kind of post it carried, so a retry of
-- a roster is never answered with the outcome of a results post (or the
-- other way round): the same id for another kind is a conflict.
ALTER TABLE webhook_deliveries ADD COLUMN kind text;
UPDATE webhook_deliveries SET kind = CASE WHEN response ? 'assessment_id' THEN 'results' ELSE 'roster' END;
ALTER TABLE webhook_deliveries
    ALTER COLUMN kind SET NOT NULL,
    ADD CONSTRAINT webhook_deliveries_kind CHECK (kind IN ('roster', 'results'));
