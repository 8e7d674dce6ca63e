-- The catalog's identity (docs/team.md, "A blob store belongs to one catalog"): one row,
-- a random id made when the schema was, which the team's blob store names in its marker
-- (`modelreg-catalog.json`), so that a host given the store with another catalog (a new
-- empty database, a catalog restored elsewhere) neither uploads to it nor collects from
-- it. Never edit a released migration: add the next file.
CREATE TABLE catalog_identity (
    only_row   boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO catalog_identity DEFAULT VALUES;
