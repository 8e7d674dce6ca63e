-- The shared catalog of team mode (docs/team.md, "PostgreSQL catalog"). Applied once, in
-- the transaction that records it in schema_migrations, under the migrations' advisory
-- lock (src/catalogdb/migrate.rs). Never edit a released migration: add the next file.

-- One row per model name. `highest` is the highest version number ever given: a version
-- number is allocated by raising it (INSERT .. ON CONFLICT DO UPDATE, which locks the
-- row until the transaction ends), so numbers are dense and never reused.
CREATE TABLE models (
    name       text        PRIMARY KEY,
    highest    integer     NOT NULL CHECK (highest >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every version ever given, removed ones included (state 'removed', their tombstone in
-- `tombstones`). `record` is the daemon's own serde form of registry::Version (the
-- number is the column, as in registry.yaml where it is the key), enough for any host to
-- rebuild its in-memory catalog. `registered_at` is the database's clock at commit: one
-- clock for every host; the record keeps the registering host's own time.
CREATE TABLE versions (
    model         text        NOT NULL REFERENCES models (name),
    number        integer     NOT NULL CHECK (number > 0),
    registered_at timestamptz NOT NULL DEFAULT now(),
    host          text        NOT NULL,
    state         text        NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'removed')),
    record        jsonb       NOT NULL,
    PRIMARY KEY (model, number)
);

-- The stored files of each live version: what the blob store keys by (sha256). A removed
-- version's rows are deleted with it, so a blob no row names may be collected.
CREATE TABLE files (
    model  text    NOT NULL,
    number integer NOT NULL,
    path   text    NOT NULL,
    sha256 text    NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size   bigint  NOT NULL CHECK (size >= 0),
    PRIMARY KEY (model, number, path),
    FOREIGN KEY (model, number) REFERENCES versions (model, number)
);
-- "Does any version name this blob?" (orphan collection, dedup of uploads).
CREATE INDEX files_by_sha256 ON files (sha256);

-- Where each alias points now.
CREATE TABLE aliases (
    model  text    NOT NULL REFERENCES models (name),
    alias  text    NOT NULL,
    number integer NOT NULL,
    PRIMARY KEY (model, alias),
    FOREIGN KEY (model, number) REFERENCES versions (model, number)
);

-- Every move of every alias, oldest first (registry::AliasMove, plus the host and the
-- database's time). from_number NULL: it did not exist; to_number NULL: removed.
CREATE TABLE alias_history (
    id          bigserial   PRIMARY KEY,
    model       text        NOT NULL REFERENCES models (name),
    alias       text        NOT NULL,
    from_number integer,
    to_number   integer,
    at          text        NOT NULL,
    uid         bigint,
    by          text        NOT NULL,
    host        text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alias_history_by_model ON alias_history (model, id);

-- Removed versions: who, why, when. The version row stays (state 'removed') so that its
-- number is never given again and `get` can say when and why.
CREATE TABLE tombstones (
    model       text        NOT NULL,
    number      integer     NOT NULL,
    at          text        NOT NULL,
    reason      text,
    uid         bigint,
    host        text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, number),
    FOREIGN KEY (model, number) REFERENCES versions (model, number)
);

-- The heads of the two logs below, in one row. A change or event seq is taken from here
-- (UPDATE .. RETURNING, which locks the row until commit) as the last step of a write
-- transaction, so seqs are gapless and committed in seq order: a host tailing `changes`
-- after seq N can never see N+2 before N+1 commits. (A bigserial would hand out numbers
-- at insert time, and transactions commit in another order.)
CREATE TABLE log_head (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    change_seq bigint  NOT NULL CHECK (change_seq >= 0),
    event_seq  bigint  NOT NULL CHECK (event_seq >= 0)
);
INSERT INTO log_head (one, change_seq, event_seq) VALUES (true, 0, 0);

-- What changed, one row per write transaction: the log every host tails (after a LISTEN
-- wake-up on channel modelreg_changes, whose payload is the seq) to refresh its catalog.
CREATE TABLE changes (
    seq    bigint      PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    host   text        NOT NULL,
    kind   text        NOT NULL CHECK (kind IN ('version', 'version_changed', 'version_removed', 'alias_set', 'alias_removed')),
    model  text        NOT NULL,
    number integer,
    alias  text
);

-- The event log (the daemon's events, as JSON), numbered like `changes`, each tied to
-- the change that wrote it.
CREATE TABLE events (
    seq        bigint      PRIMARY KEY,
    change_seq bigint      NOT NULL REFERENCES changes (seq),
    at         timestamptz NOT NULL DEFAULT now(),
    event      jsonb       NOT NULL
);
