-- Names in Unicode NFC (functions/core/src/names.rs). One name can arrive as
-- different code points ("é" as U+00E9, or "e" + U+0301 COMBINING ACUTE
-- ACCENT); name search compares the stored columns as they are with a query
-- normalised to NFC, so the stored names must be NFC too. Needs a UTF8
-- database (PostgreSQL 13+ `normalize` / `IS NFC NORMALIZED`).
--
-- Indexes: name search is `strpos(lower(given_name || ' ' || family_name),
-- lower(term))` over the pupils in scope, with no index on the expression;
-- `pupils_school_name` (tenant, school, family_name, given_name, id) serves
-- the listing order and its cursor. The UPDATEs below maintain every index
-- as any UPDATE does (nothing is built CONCURRENTLY, nothing is left
-- invalid), and no index is defined over `normalize()`, so no index depends
-- on the server's Unicode version.

-- Existing rows: only those not yet in NFC are rewritten (a re-encoding of
-- the same name, so `updated_at` is left alone). Pupils whose processing is
-- restricted are included: their names keep their meaning, only the
-- encoding changes.
UPDATE pupils
   SET given_name = normalize(given_name, NFC), family_name = normalize(family_name, NFC)
 WHERE given_name IS NOT NFC NORMALIZED OR family_name IS NOT NFC NORMALIZED;
UPDATE users
   SET display_name = normalize(display_name, NFC)
 WHERE display_name IS NOT NFC NORMALIZED;

-- New rows: the components normalise what they write; these triggers keep
-- every other writer (staff administration, the operator, plain SQL) to NFC
-- as well. They fire only for a name that is not NFC already.
CREATE FUNCTION pupils_names_nfc() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.given_name := normalize(NEW.given_name, NFC);
    NEW.family_name := normalize(NEW.family_name, NFC);
    RETURN NEW;
END $$;
CREATE TRIGGER pupils_names_nfc BEFORE INSERT OR UPDATE OF given_name, family_name ON pupils
    FOR EACH ROW
    WHEN (NEW.given_name IS NOT NFC NORMALIZED OR NEW.family_name IS NOT NFC NORMALIZED)
    EXECUTE FUNCTION pupils_names_nfc();

CREATE FUNCTION users_names_nfc() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.display_name := normalize(NEW.display_name, NFC);
    RETURN NEW;
END $$;
CREATE TRIGGER users_names_nfc BEFORE INSERT OR UPDATE OF display_name ON users
    FOR EACH ROW
    WHEN (NEW.display_name IS NOT NFC NORMALIZED)
    EXECUTE FUNCTION users_names_nfc();
